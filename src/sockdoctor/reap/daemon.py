"""The reaper as a daemon: a library call, the CLI only parses (`sockdoctor reap`).

    from sockdoctor.reap.daemon import ReapSettings, run
    run("reap.toml", ReapSettings(apply=False, once=True))   # one dry-run cycle

Each cycle: one sample, a plan per rule, applied within the rule's limits,
verified and audited (reaper.py). SIGTERM/SIGINT finish the cycle under way;
SIGHUP reloads the policy, and a bad file keeps the old one in force and says
why. A line (or a JSON object) per cycle goes to stdout: it is the log.
"""

from __future__ import annotations

import signal
import sys
import threading
from dataclasses import dataclass
from typing import Any

from ..errors import SockdoctorError
from ..jsontext import untrusted
from ..query import Query
from ..signals import handling
from ..stdout import reader_may_leave
from . import policy as reap_policy
from .reaper import Reaper


@dataclass(frozen=True)
class ReapSettings:
    """What `sockdoctor reap`'s options say, as one value."""

    apply: bool = False  # act; else a dry run
    once: bool = False  # one cycle, then return
    audit_log: str | None = None  # default: the policy's, else remedy.DEFAULT_PATH
    narrow: Query | None = None  # a filter every rule must also match
    netns: str = "all"
    as_json: bool = False  # one JSON object per cycle instead of a line
    listen: tuple[str, ...] = ()  # serve the reaper's metrics there
    telemetry_path: str = "/metrics"
    web_config: str | None = None
    textfile_dir: str | None = None
    scope: str = ""  # how the CLI words the namespaces in scope, for the first line


def run(policy_path: str, settings: ReapSettings = ReapSettings(),
        stop: threading.Event | None = None) -> Reaper:
    """Reap by the policy until `stop` (or SIGTERM/SIGINT), or one cycle with `once`."""
    policy = reap_policy.load(policy_path)
    reaper, sampler = _start(policy, settings)
    say = Output(settings.as_json, Metrics(reaper, settings.textfile_dir, settings.listen))
    say.metrics.serve(settings.listen, settings.telemetry_path, settings.web_config)
    scope = f", {settings.scope}" if settings.scope else ""
    say.note(f"{len(policy.rules)} rule(s) from {policy.path}, every {policy.interval_s:g}s, "
             + ("acting (--apply)" if settings.apply else "dry run (add --apply to act)")
             + scope + say.metrics.where())
    try:
        if settings.once:
            say.cycle(reaper.cycle(sampler.sample_safely()))
        else:
            _daemon(policy_path, reaper, sampler, say, stop)
    finally:
        say.metrics.close()
    return reaper


def _start(policy: Any, settings: ReapSettings) -> tuple[Reaper, Any]:
    from ..remedy import DEFAULT_PATH, host_facts
    from ..remedy.audit import AuditLog
    from ..watch import Sampler

    path = settings.audit_log or policy.audit_log or DEFAULT_PATH
    if settings.apply:
        AuditLog(path).close()  # an unwritable log stops us before the first cycle
    reaper = Reaper(policy, apply=settings.apply, host=host_facts(), audit_log=path,
                    narrow=settings.narrow)
    sampler = Sampler(query=None, netns=settings.netns, interval=policy.interval_s,
                      doctor=False, full_walk_every=10)
    return reaper, sampler


def _daemon(path: str, reaper: Reaper, sampler: Any, say: Output,
            stop: threading.Event | None) -> None:
    """Cycle until stopped (the cycle in progress finishes); SIGHUP reloads."""
    from ..watch import tune_gc

    tune_gc()  # a daemon: cycles must be collected (main() turned the GC off)
    stop, reload = stop or threading.Event(), threading.Event()

    def on_sample(sample: Any) -> None:
        if reload.is_set():
            reload.clear()
            _reload(path, reaper, sampler, say)
        say.cycle(reaper.cycle(sample))

    with handling({signal.SIGTERM: stop.set, signal.SIGINT: stop.set,
                   signal.SIGHUP: reload.set}):
        sampler.run(stop, on_sample)
    say.stopped(reaper)


def _reload(path: str, reaper: Reaper, sampler: Any, say: Output) -> None:
    try:
        fresh = reap_policy.load(path)
    except SockdoctorError as exc:
        say.note(f"reload failed, the policy in force stays: {exc}")
    except Exception as exc:  # a daemon keeps running, always
        say.note(f"reload failed, the policy in force stays: {path}: "
                 f"{type(exc).__name__}: {exc}")
    else:
        reaper.reload(fresh)
        sampler.interval = fresh.interval_s
        say.note(f"policy reloaded: {len(fresh.rules)} rule(s), every {fresh.interval_s:g}s")


class Metrics:
    """The reaper's metrics through the web server and textfile writer of the exporter."""

    def __init__(self, reaper: Any, textfile_dir: str | None, listen: tuple[str, ...]) -> None:
        self.server = self.textfile = None
        if textfile_dir is None and not listen:
            return  # no prometheus_client to import
        from ..reap.metrics import TEXTFILE_NAME, ReapCollector, registries
        from ..watch import exporter as ex

        self.collector = ReapCollector(reaper)
        self.served, self.textfile_registry = registries(self.collector)
        if textfile_dir is not None:
            ex.check_textfile_dir(textfile_dir)
            self.textfile = f"{textfile_dir.rstrip('/')}/{TEXTFILE_NAME}"

    def serve(self, listen: tuple[str, ...], path: str, web_config: str | None) -> None:
        """Bound now (a taken port ends the command before its first cycle), served at once."""
        if not listen:
            return
        from prometheus_client import make_wsgi_app

        from ..web import serve
        from ..web.server import stderr_say
        from ..web.wsgi import only

        self.server = serve(list(listen), only(path, make_wsgi_app(self.served)), web_config,
                            stderr_say("reap"))
        self.server.start()
        self.urls = self.server.urls(path)

    def where(self) -> str:
        return "".join([f"; metrics on {', '.join(self.urls)}" if self.server else "",
                        f"; metrics in {self.textfile}" if self.textfile else ""])

    def update(self, cycle: Any) -> None:
        if self.server is None and self.textfile is None:
            return
        self.collector.last_cycle = cycle.started
        if self.textfile:
            from ..watch.exporter import write_textfile

            write_textfile(self.textfile, self.textfile_registry)

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()


class Output:
    """A line (or a JSON object) per cycle, flushed at once: it is a log."""

    def __init__(self, as_json: bool, metrics: Metrics) -> None:
        self.as_json = as_json
        self.metrics = metrics

    def cycle(self, cycle: Any) -> None:
        self.metrics.update(cycle)
        if self.as_json:
            self._json(cycle.to_json())
        else:
            self._line(cycle.line())

    def note(self, text: str) -> None:
        if self.as_json:
            self._json({"event": "note", "note": text})
        else:  # a reload's error may quote namespace names: any bytes
            self._line(f"reap: {text}")

    def stopped(self, reaper: Any) -> None:
        if self.as_json:
            totals = [{"rule": r, "method": m, "outcome": o, "count": n}
                      for (r, m, o), n in sorted(reaper.totals.items())]
            self._json({"event": "stopped", "cycles": reaper.cycles, "totals": totals})
        else:
            self._line(reaper.summary())

    def _json(self, obj: dict) -> None:
        from ..jsontext import encode  # names that are not UTF-8, exact

        with reader_may_leave():  # bytes: UTF-8 JSON under any locale
            sys.stdout.flush()
            sys.stdout.buffer.write(encode(obj) + b"\n")
            sys.stdout.buffer.flush()

    @staticmethod
    def _line(text: str) -> None:
        """A line of text: escaped whole (rule and namespace names may hold any bytes)."""
        Output._write(untrusted(text))

    @staticmethod
    def _write(text: str) -> None:
        with reader_may_leave():
            sys.stdout.write(text + "\n")
