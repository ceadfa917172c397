"""The Prometheus exporter: the latest sample's metrics over HTTP, or in a textfile.

A scrape never scans: the sampler runs on its own interval and each sample's
metric families are built once (watch/metrics.py) and handed to a custom
prometheus_client collector, which a scrape only serialises. The HTTP side
is a small WSGI app: `/metrics` (prometheus_client's handler: content
negotiation, gzip; --web.telemetry-path), `/healthz`, and `/`, a page
linking them, served by sockdoctor.web (bounded, TLS, basic auth).
"""

from __future__ import annotations

import html
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
    make_wsgi_app,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from .. import __version__, safefile
from ..doctor.config import DoctorConfig
from ..errors import PermissionDeniedError, WriteError
from ..jsontext import untrusted
from ..linux.netns import can_enter_others
from ..ports import EXPORTER_LISTEN
from ..query import Query
from ..words import plural
from . import metrics
from .sampler import Sample, Sampler, tune_gc

if TYPE_CHECKING:
    from ..web import WebServer

TEXTFILE_NAME = "sockdoctor.prom"
STALE_INTERVALS = 3  # /healthz fails when no sample succeeded for this many intervals


class SampleCollector:
    """A prometheus_client collector serving the families of the latest sample."""

    def __init__(self, options: metrics.Options) -> None:
        self.options = options
        self.health = metrics.Health(not_root=not can_enter_others(), version=__version__,
                                     build=metrics.build_labels())
        self._families: list[Metric] = []
        self.latest: Sample | None = None

    def update(self, sample: Sample) -> None:
        """Count the sample, build its families once; scrapes then only read them."""
        health = self.health
        health.samples += 1
        health.errors += bool(sample.error)
        health.full_walks += sample.full_walk
        if not sample.error:
            health.last_success = sample.started
        self._families = [_to_prometheus(f) for f in metrics.build(sample, health,
                                                                    self.options)]
        self.latest = sample

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)  # a list swapped whole: a scrape sees one sample

    def describe(self) -> list[Metric]:
        return []


def _to_prometheus(family: metrics.Family) -> Metric:
    kind = CounterMetricFamily if family.kind == "counter" else GaugeMetricFamily
    out = kind(family.name, family.help, labels=list(family.labels))
    for labels, value in family.samples:
        out.add_metric(list(labels), value)
    return out


def registries(collector: SampleCollector, own: bool = True
               ) -> tuple[CollectorRegistry, CollectorRegistry]:
    """(for HTTP: ours plus the process's own metrics, for a textfile: ours only).

    node_exporter has process_* and python_* of its own: a textfile carrying
    them would clash, so the textfile registry holds sockdoctor's families only.
    `own=False` (--web.disable-exporter-metrics): no process_* or python_* at all.
    """
    served = CollectorRegistry(auto_describe=False)
    served.register(collector)
    if own:
        ProcessCollector(registry=served)
        PlatformCollector(registry=served)
        GCCollector(registry=served)
    textfile = CollectorRegistry(auto_describe=False)
    textfile.register(collector)
    return served, textfile


# --- textfile -----------------------------------------------------------------

def check_textfile_dir(path: str) -> str:
    """The directory for --textfile, checked once at start: it must exist and be writable."""
    if not os.path.isdir(path):
        raise WriteError(f"--textfile {path}: no such directory (node_exporter's "
                            "--collector.textfile.directory must exist)")
    if not os.access(path, os.W_OK | os.X_OK):
        raise PermissionDeniedError(f"--textfile {path}: this user may not write there")
    return os.path.join(path, TEXTFILE_NAME)


def write_textfile(path: str, registry: CollectorRegistry) -> None:
    """Replace `path` in one piece (safefile): node_exporter never reads half a file.

    The temporary name starts with a dot and ends in .tmp, so the textfile
    collector ignores it; a symlink or anything but a regular file in the
    way is refused (WriteError), never written through.
    """
    safefile.write(path, generate_latest(registry), "the metrics textfile", mode=0o644)


# --- HTTP ---------------------------------------------------------------------
# The server itself (bounded, with timeouts, TLS and basic auth) is sockdoctor.web.


@dataclass
class Site:
    """The WSGI app: /metrics, /healthz and a short page at /."""

    registry: CollectorRegistry
    collector: SampleCollector
    interval: float
    telemetry_path: str = "/metrics"  # --web.telemetry-path

    def __post_init__(self) -> None:
        self._metrics = make_wsgi_app(self.registry)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]
                 ) -> Iterable[bytes]:
        path = environ.get("PATH_INFO") or "/"
        if path == self.telemetry_path:
            return self._metrics(environ, start_response)
        if path == "/healthz":
            ok, text = self.health()
            return _reply(start_response, "200 OK" if ok else "503 Service Unavailable",
                          "text/plain; charset=utf-8", text + "\n")
        if path == "/":
            return _reply(start_response, "200 OK", "text/html; charset=utf-8", self.page())
        return _reply(start_response, "404 Not Found", "text/plain; charset=utf-8",
                      f"not found: try {self.telemetry_path}\n")

    def health(self) -> tuple[bool, str]:
        """Healthy while samples succeed; not before the first, nor when they stop."""
        sample = self.collector.latest
        if sample is None:
            return False, "starting: no sample yet"
        if sample.error:
            return False, f"the latest sample failed: {sample.error}"
        age = time.time() - self.collector.health.last_success
        if age > STALE_INTERVALS * self.interval + sample.duration_s + 5:
            return False, f"no sample for {age:.0f}s"
        return True, f"ok: sample {sample.seq}, {plural(sample.sockets(), 'socket')}"

    def page(self) -> str:
        text = self.health()[1]
        return (
            "<!doctype html><html><head><meta charset='utf-8'><title>sockdoctor exporter"
            "</title></head><body><h1>sockdoctor exporter</h1>"
            "<p>Stuck TCP connections (CLOSE-WAIT leaks and friends) by namespace, process, "
            "port and age, for Prometheus.</p><ul>"
            f"<li><a href='{html.escape(self.telemetry_path.lstrip('/'))}'>"
            f"{html.escape(self.telemetry_path)}</a></li>"
            f"<li><a href='healthz'>/healthz</a>: {html.escape(text)}</li></ul>"
            f"<p>sockdoctor {html.escape(__version__)}; a sample every {self.interval:g}s. "
            "Explain what you see with <code>sockdoctor doctor</code>.</p></body></html>\n")


def _reply(start_response: Callable[..., Any], status: str, kind: str, body: str
           ) -> list[bytes]:
    data = body.encode()
    start_response(status, [("Content-Type", kind), ("Content-Length", str(len(data)))])
    return [data]


# --- the loop -----------------------------------------------------------------

@dataclass
class Exporter:
    """Sampler + collector + where the metrics go (HTTP server, textfile or both)."""

    sampler: Sampler
    collector: SampleCollector
    textfile: str | None = None  # path of sockdoctor.prom
    server: WebServer | None = None
    # a log line may quote a process or namespace name: escaped, any locale prints it
    say: Callable[[str], None] = lambda line: print(f"sockdoctor exporter: {untrusted(line)}",
                                                    file=sys.stderr, flush=True)
    own_metrics: bool = True  # process_* and python_* over HTTP
    telemetry_path: str = "/metrics"

    def __post_init__(self) -> None:
        self.served, self.textfile_registry = registries(self.collector, self.own_metrics)
        self._warned: list[str] = []

    def serve(self, addresses: list[str], telemetry_path: str = "/metrics",
              web_config: str | None = None) -> None:
        """Check the web config and bind every address now; serving starts with run()."""
        from ..web import serve

        self.telemetry_path = telemetry_path
        site = Site(self.served, self.collector, self.sampler.interval, telemetry_path)
        self.server = serve(addresses, site, web_config, self.say)

    def urls(self) -> list[str]:
        return self.server.urls(self.telemetry_path) if self.server else []

    def on_sample(self, sample: Sample) -> None:
        self.collector.update(sample)
        if sample.error:
            self.say(f"sample {sample.seq} failed: {sample.error}")
        elif sample.warnings != self._warned:  # say it when it changes, not every time
            for line in sample.warnings:
                self.say(f"note: {line}")
        self._warned = sample.warnings
        if self.textfile:
            try:
                write_textfile(self.textfile, self.textfile_registry)
            except WriteError as exc:  # a full disk must not stop the exporter
                self.say(str(exc))

    def run(self, stop: threading.Event, wait_first: bool = False) -> None:
        """Serve (if there is a server) and sample until `stop` is set.

        `wait_first`: a sample was just taken (and given to on_sample): wait
        one interval before the next.
        """
        if self.server is not None:
            self.server.start()
        try:
            if wait_first:
                stop.wait(self.sampler.interval)
            self.sampler.run(stop, self.on_sample)
        finally:
            self.sampler.close()  # the counting program, if the kernel engine loaded it
            if self.server is not None:
                self.server.stop()

    def start(self, stop: threading.Event) -> None:
        """The daemon: one sample now (a user's mistake ends here), then serve until `stop`."""
        first = self.sampler.sample()
        where = ", ".join(self.urls()) if self.server else f"writing {self.textfile}"
        self.on_sample(first)
        self.say(f"{where}, a sample every {self.sampler.interval:g}s (first: "
                 f"{len(first.snapshot.sockets)} sockets in {first.duration_s:.2f}s)")
        del first  # the sampler and the collector keep what they need; this frame must not
        self.run(stop, wait_first=True)
        self.say("stopped")


# --- the library entry point ----------------------------------------------------

@dataclass(frozen=True)
class ExporterSettings:
    """What `sockdoctor exporter`'s options say, as one value (docs/exporter.md, Python)."""

    listen: tuple[str, ...] = (EXPORTER_LISTEN,)  # () with a textfile: no HTTP at all
    telemetry_path: str = "/metrics"
    web_config: str | None = None  # exporter-toolkit's YAML: TLS, basic auth
    interval_s: float = 15.0
    textfile_dir: str | None = None  # also write DIR/sockdoctor.prom after each sample
    max_series: int = 100
    pid_label: bool = False
    collectors_off: frozenset[str] = frozenset()  # "doctor", "listen_queue", ...
    own_metrics: bool = True  # process_* and python_* over HTTP
    doctor_config: DoctorConfig | None = None
    full_walk_every: int = 20
    doctor_every: int = 0  # 0: auto


def build_exporter(query: Query | None = None,
                   settings: ExporterSettings = ExporterSettings()) -> Exporter:
    """Sampler, collector and exporter for `settings`, bound to its addresses (not serving)."""
    query = query or Query()
    textfile = check_textfile_dir(settings.textfile_dir) if settings.textfile_dir else None
    sampler = Sampler(query, netns=query.netns, interval=settings.interval_s,
                      doctor="doctor" not in settings.collectors_off
                      and (settings.doctor_config or DoctorConfig()),
                      full_walk_every=settings.full_walk_every,
                      doctor_every=settings.doctor_every).count_in_kernel()
    collector = SampleCollector(metrics.Options(max_series=settings.max_series,
                                                pid=settings.pid_label,
                                                off=settings.collectors_off))
    exporter = Exporter(sampler, collector, textfile=textfile,
                        own_metrics=settings.own_metrics)
    if settings.listen:  # bound before the first sample: a taken port fails at once
        exporter.serve(list(settings.listen), settings.telemetry_path, settings.web_config)
    return exporter


def serve_exporter(query: Query | None = None,
                   settings: ExporterSettings = ExporterSettings(),
                   stop: threading.Event | None = None) -> None:
    """Run an exporter until `stop` is set, or SIGTERM/SIGINT (in the main thread).

        from sockdoctor.watch import ExporterSettings, serve_exporter
        serve_exporter(settings=ExporterSettings(listen=("127.0.0.1:19808",)))
    """
    from ..signals import stop_on_signals

    exporter = build_exporter(query, settings)
    tune_gc()  # a daemon: cycles must be collected
    with stop_on_signals(signal.SIGTERM, signal.SIGINT, again_interrupts=True) as signalled:
        exporter.start(stop or signalled)
