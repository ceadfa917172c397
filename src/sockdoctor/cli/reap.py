"""`sockdoctor reap`: a policy-driven reaper, a dry run unless --apply."""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any

import click

from .common import CONTEXT, build_query, filter_options, reader_may_leave

REAP_HELP = """
\b
The policy is a TOML file of [[rule]]s (docs/reap.md; an example:
deploy/systemd/reap-policy.toml). Every cycle (the policy's interval): one
sample of the host, a plan per rule, applied within the rule's max_per_cycle
with its ladder of methods (e.g. fin, then destroy), verified and written to
the audit log. A socket a rung did not end gets the next rung next cycle;
one the whole ladder could not end is reported once and left alone. Without
--apply nothing is changed: each line says what would be done.
FILTER and the filter flags narrow every rule; --netns limits the sample.
SIGTERM (or Ctrl-C) finishes the cycle in progress, prints a summary and
exits 0; SIGHUP reloads the policy (a bad file keeps the old one in force).

\b
Examples:
  sockdoctor reap --policy /etc/sockdoctor/reap.toml --once      what it would do now
  sockdoctor reap --policy reap.toml --apply                     run as a daemon
  sockdoctor reap --policy reap.toml --check                     validate and exit
  sockdoctor reap --policy reap.toml --apply --netns web --json  NDJSON per cycle
"""


@click.command("reap", context_settings=CONTEXT, epilog=REAP_HELP)
@filter_options
@click.option("--policy", "policy_path", required=True, metavar="FILE",
              help="The TOML policy file.")
@click.option("--apply", "apply_", is_flag=True, help="Act (default: a dry run).")
@click.option("--once", is_flag=True, help="One cycle, then exit.")
@click.option("--check", is_flag=True, help="Validate the policy, print its rules, exit.")
@click.option("--audit-log", metavar="FILE", default=None,
              help="Append JSON lines for every action here [default: the policy's "
                   "audit_log, else /var/log/sockdoctor/audit.jsonl].")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per cycle (NDJSON).")
@click.option("--listen", metavar="ADDR:PORT",
              help="Serve the reaper's metrics (sockdoctor_reaped_total...) on /metrics.")
@click.option("--textfile", "textfile_dir", metavar="DIR",
              help="Write DIR/sockdoctor_reap.prom after every cycle (node_exporter).")
def reap_command(policy_path: str, apply_: bool, once: bool, check: bool,
                 audit_log: str | None, as_json: bool, listen: str | None,
                 textfile_dir: str | None, **kw: Any) -> None:
    """Reap stuck connections by a policy, cycle after cycle: planned, audited, verified."""
    from ..reap import policy as reap_policy

    policy = reap_policy.load(policy_path)
    if check:
        _describe(policy)
        return
    named = bool(kw["states"] or kw["filter_words"] or kw["ports"] or kw["pids"]
                 or kw["process"] or kw["older_than"] or kw["filter_file"])
    query = build_query(kw)
    reaper, sampler = _start(policy, apply_, audit_log, query if named else None, query.netns)
    say = _Output(as_json, _Metrics(reaper, listen, textfile_dir))
    say.note(f"{len(policy.rules)} rule(s) from {policy.path}, every {policy.interval_s:g}s, "
             + ("acting (--apply)" if apply_ else "dry run (add --apply to act)")
             + say.metrics.where())
    if once:
        say.cycle(reaper.cycle(sampler.sample_safely()))
        return
    _daemon(policy_path, reaper, sampler, say)
    say.metrics.close()


def _start(policy: Any, apply_: bool, audit_log: str | None, narrow: Any, netns: str
           ) -> tuple[Any, Any]:
    from ..reap.reaper import Reaper
    from ..remedy import DEFAULT_PATH, host_facts
    from ..remedy.audit import AuditLog
    from ..watch import Sampler

    path = audit_log or policy.audit_log or DEFAULT_PATH
    if apply_:
        AuditLog(path).close()  # an unwritable log stops us before the first cycle
    reaper = Reaper(policy, apply=apply_, host=host_facts(), audit_log=path, narrow=narrow)
    sampler = Sampler(query=None, netns=netns, interval=policy.interval_s, doctor=False,
                      full_walk_every=10)
    return reaper, sampler


def _daemon(path: str, reaper: Any, sampler: Any, say: _Output) -> None:
    """Cycle until SIGTERM/SIGINT (the cycle in progress finishes); SIGHUP reloads."""
    from ..errors import SockdoctorError
    from ..reap import policy as reap_policy
    from ..watch import tune_gc

    tune_gc()  # a daemon: cycles must be collected (main() turned the GC off)
    stop, reload = threading.Event(), threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set())
                for s in (signal.SIGTERM, signal.SIGINT)}
    previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, lambda *_: reload.set())

    def on_sample(sample: Any) -> None:
        if reload.is_set():
            reload.clear()
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
                say.note(f"policy reloaded: {len(fresh.rules)} rule(s), every "
                         f"{fresh.interval_s:g}s")
        say.cycle(reaper.cycle(sample))

    try:
        sampler.run(stop, on_sample)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    say.stopped(reaper)


class _Metrics:
    """The reaper's metrics through the exporter's HTTP server and textfile writer."""

    def __init__(self, reaper: Any, listen: str | None, textfile_dir: str | None) -> None:
        self.server = self.textfile = None
        if listen is None and textfile_dir is None:
            return
        from ..reap.metrics import TEXTFILE_NAME, ReapCollector, registries
        from ..watch import exporter as ex

        self.collector = ReapCollector(reaper)
        self.served, self.textfile_registry = registries(self.collector)
        if textfile_dir is not None:
            ex.check_textfile_dir(textfile_dir)
            self.textfile = f"{textfile_dir.rstrip('/')}/{TEXTFILE_NAME}"
        if listen is not None:
            from prometheus_client import make_wsgi_app

            self.server = ex.listen(*ex.parse_listen(listen), make_wsgi_app(self.served))
            threading.Thread(target=self.server.serve_forever, name="http",
                             daemon=True).start()
            self.url = ex.bound_url(self.server)

    def where(self) -> str:
        return "".join([f"; metrics on {self.url}" if self.server else "",
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
            self.server.shutdown()
            self.server.server_close()


class _Output:
    """A line (or a JSON object) per cycle, flushed at once: it is a log."""

    def __init__(self, as_json: bool, metrics: _Metrics) -> None:
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
        from ..render.fmt import untrusted

        _Output._write(untrusted(text))

    @staticmethod
    def _write(text: str) -> None:
        with reader_may_leave():
            sys.stdout.write(text + "\n")


def _describe(policy: Any) -> None:
    click.echo(f"{policy.path}: valid; every {policy.interval_s:g}s, "
               f"{len(policy.rules)} rule(s)")
    for rule in policy.rules:
        click.echo(f"  {rule.describe()}")
