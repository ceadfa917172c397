"""The Prometheus exporter: the latest sample's metrics over HTTP, or in a textfile.

A scrape never scans: the sampler runs on its own interval and each sample's
metric families are built once (watch/metrics.py) and handed to a custom
prometheus_client collector, which a scrape only serialises. The HTTP side
is a small WSGI app: `/metrics` (prometheus_client's handler: content
negotiation, gzip), `/healthz`, and `/`, a page linking them.
"""

from __future__ import annotations

import contextlib
import html
import os
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
    make_wsgi_app,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from .. import __version__
from ..errors import NotFoundError, PermissionDeniedError, UsageError
from ..jsontext import untrusted
from ..linux.netns import can_enter_others
from ..render.fmt import plural
from . import metrics
from .sampler import Sample, Sampler

DEFAULT_PORT = 19808  # docs/exporter.md: why this one
TEXTFILE_NAME = "sockdoctor.prom"
STALE_INTERVALS = 3  # /healthz fails when no sample succeeded for this many intervals


class SampleCollector:
    """A prometheus_client collector serving the families of the latest sample."""

    def __init__(self, options: metrics.Options) -> None:
        self.options = options
        self.health = metrics.Health(not_root=not can_enter_others(), version=__version__)
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


def registries(collector: SampleCollector) -> tuple[CollectorRegistry, CollectorRegistry]:
    """(for HTTP: ours plus the process's own metrics, for a textfile: ours only).

    node_exporter has process_* and python_* of its own: a textfile carrying
    them would clash, so the textfile registry holds sockdoctor's families only.
    """
    served = CollectorRegistry(auto_describe=False)
    served.register(collector)
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
        raise NotFoundError(f"--textfile {path}: no such directory (node_exporter's "
                            "--collector.textfile.directory must exist)")
    if not os.access(path, os.W_OK | os.X_OK):
        raise PermissionDeniedError(f"--textfile {path}: this user may not write there")
    return os.path.join(path, TEXTFILE_NAME)


def write_textfile(path: str, registry: CollectorRegistry) -> None:
    """Replace `path` atomically: node_exporter never reads half a file.

    The temporary name does not end in .prom, so the textfile collector
    ignores it; rename(2) replaces whatever is at `path` without following it.
    """
    data = generate_latest(registry)
    folder = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=f".{TEXTFILE_NAME}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


# --- HTTP ---------------------------------------------------------------------

def parse_listen(text: str) -> tuple[str, int]:
    """ADDR:PORT, [V6ADDR]:PORT, :PORT (every address) or PORT -> (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "", text
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not port.isdigit() or int(port) > 65535:
        raise UsageError(f"--listen {text}: write it as ADDR:PORT, [ADDR]:PORT or :PORT "
                         f"(default :{DEFAULT_PORT})")
    return host, int(port)


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # a scrape every 15 s is not news


def listen(host: str, port: int, app: Callable[..., Iterable[bytes]]) -> WSGIServer:
    """Bind now (so a taken port fails before the first sample), serve later.

    No host: every address, IPv6 and IPv4 on one socket where the host has
    IPv6, IPv4 only where it has not.
    """
    candidates = [(host, _Server6 if ":" in host else _Server)] if host else \
        [("::", _Server6), ("0.0.0.0", _Server)]
    error: OSError | None = None
    for addr, server_class in candidates:
        try:
            return make_server(addr, port, app, server_class=server_class,
                               handler_class=_QuietHandler)
        except OSError as exc:
            error = exc
            if exc.errno not in (97, 99):  # EAFNOSUPPORT, EADDRNOTAVAIL: try IPv4
                break
    assert error is not None
    where = f"{host or '*'}:{port}"
    if isinstance(error, PermissionError):
        raise PermissionDeniedError(f"cannot listen on {where}: ports below 1024 need root "
                                    "(CAP_NET_BIND_SERVICE)") from error
    raise UsageError(f"cannot listen on {where}: {error.strerror or error} "
                     "(choose another with --listen)") from error


def bound_url(server: WSGIServer) -> str:
    host, port = server.server_address[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/metrics"


@dataclass
class Site:
    """The WSGI app: /metrics, /healthz and a short page at /."""

    registry: CollectorRegistry
    collector: SampleCollector
    interval: float

    def __post_init__(self) -> None:
        self._metrics = make_wsgi_app(self.registry)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]
                 ) -> Iterable[bytes]:
        path = environ.get("PATH_INFO") or "/"
        if path == "/metrics":
            return self._metrics(environ, start_response)
        if path == "/healthz":
            ok, text = self.health()
            return _reply(start_response, "200 OK" if ok else "503 Service Unavailable",
                          "text/plain; charset=utf-8", text + "\n")
        if path == "/":
            return _reply(start_response, "200 OK", "text/html; charset=utf-8", self.page())
        return _reply(start_response, "404 Not Found", "text/plain; charset=utf-8",
                      "not found: try /metrics\n")

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
        return True, f"ok: sample {sample.seq}, {plural(len(sample.snapshot.sockets), 'socket')}"

    def page(self) -> str:
        text = self.health()[1]
        return (
            "<!doctype html><html><head><meta charset='utf-8'><title>sockdoctor exporter"
            "</title></head><body><h1>sockdoctor exporter</h1>"
            "<p>Stuck TCP connections (CLOSE-WAIT leaks and friends) by namespace, process, "
            "port and age, for Prometheus.</p><ul>"
            "<li><a href='metrics'>/metrics</a></li>"
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
    server: WSGIServer | None = None
    # a log line may quote a process or namespace name: escaped, any locale prints it
    say: Callable[[str], None] = lambda line: print(f"sockdoctor exporter: {untrusted(line)}",
                                                    file=sys.stderr, flush=True)

    def __post_init__(self) -> None:
        self.served, self.textfile_registry = registries(self.collector)
        self._warned: list[str] = []

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
            except OSError as exc:
                self.say(f"cannot write {self.textfile}: {exc.strerror or exc}")

    def run(self, stop: threading.Event, wait_first: bool = False) -> None:
        """Serve (if there is a server) and sample until `stop` is set.

        `wait_first`: a sample was just taken (and given to on_sample): wait
        one interval before the next.
        """
        thread = None
        if self.server is not None:
            thread = threading.Thread(target=self.server.serve_forever, name="http",
                                      daemon=True)
            thread.start()
        try:
            if wait_first:
                stop.wait(self.sampler.interval)
            self.sampler.run(stop, self.on_sample)
        finally:
            if self.server is not None:
                self.server.shutdown()
                self.server.server_close()
