"""`sockdoctor trace`: every TCP state change as it happens, with its owner."""

from __future__ import annotations

import signal
import time
from typing import Any

import click

from .common import CONTEXT, FILTER_HELP, build_query, filter_options

EPILOG = FILTER_HELP + """
\b
A state filter matches a change into or out of that state: `state close-wait`
shows connections falling into CLOSE-WAIT and leaving it. --pid/--process
keep the events whose owner is known to be that process.

\b
Each event is joined to its socket's namespace, cookie, inode and owner
through the latest sample and sock_diag; when that is not possible the event
says so (owner_note). An event may wait up to --join-delay for its owner
(accept() often follows a moment later). Destroy events come when the kernel
frees a socket (after the last close()), with its last tcp_info. Events the
kernel could not keep are reported as lost, never dropped silently.
See docs/watch.md.

\b
Exit code: 0 (also after Ctrl-C), 2 bad arguments, 3 unknown namespace,
4 not permitted (needs root), 5 the kernel has no tracefs or tracepoint.

\b
Examples:
  sockdoctor trace state close-wait            who lets connections fall into CLOSE-WAIT
  sockdoctor trace --netns web --port 8080 --ndjson | jq .
  sockdoctor trace --duration 30s --count 1000
  sockdoctor trace --every 5s
  sockdoctor trace --summary --duration 1m state close-wait
"""


@click.command("trace", context_settings=CONTEXT, epilog=EPILOG)
@filter_options
@click.option("--ndjson", is_flag=True, help="One JSON object per event (docs/watch.md).")
@click.option("--duration", metavar="T", help="Stop after T (10s, 5m).")
@click.option("--count", type=click.IntRange(1), help="Stop after N events.")
@click.option("--refresh", default="10s", show_default=True, metavar="T",
              help="How often the sampler re-reads every socket and owner.")
@click.option("--join-delay", default="1s", show_default=True, metavar="T",
              help="How long an event may wait for its owner to be known.")
@click.option("--no-destroy", is_flag=True, help="Do not report destroyed sockets.")
@click.option("--buffer-kb", type=click.IntRange(64, 1 << 20), default=2048, show_default=True,
              help="Ring buffer per CPU, in KiB (raise it if events are lost).")
@click.option("-H", "--no-header", is_flag=True, help="Do not print the header line.")
@click.option("--summary", "summarize", is_flag=True,
              help="Count transitions (process x port x from -> to) and print them at the end.")
@click.option("--every", metavar="T", help="With or without --summary: print the counts every T.")
def trace_command(ndjson: bool, duration: str | None, count: int | None, refresh: str,
                  join_delay: str, no_destroy: bool, buffer_kb: int, no_header: bool,
                  summarize: bool, every: str | None, **kw: Any) -> None:
    """Show every TCP state change as it happens, with its process — no BPF needed."""
    from ..errors import UsageError
    from ..query import parse_duration

    if kw.get("older_than"):
        raise UsageError("--older-than does not apply to trace: state changes have no age")
    query = build_query(kw)
    stop_at = time.monotonic() + parse_duration(duration) / 1000 if duration else None
    every_s = parse_duration(every) / 1000 if every else None
    if every_s is not None and every_s <= 0:
        raise UsageError("--every needs a time above zero, e.g. --every 5s")
    from ..watch import tune_gc
    from ..watch.trace import open_tracer

    tune_gc()  # it runs until stopped: cycles must be collected (main() turned the GC off)
    _stop_on_signals()
    tracer = open_tracer(query, refresh_s=parse_duration(refresh) / 1000,
                         buffer_kb=buffer_kb, destroy=not no_destroy)
    from .traceout import Events, Summaries

    out = Summaries(tracer, ndjson, every_s) if summarize or every_s else Events(ndjson)
    try:
        _announce(tracer)
        if not ndjson and not no_header:
            out.header()
        _loop(tracer, out, stop_at, count, parse_duration(join_delay) / 1000)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM is how a trace is meant to end:
        _drain(tracer, out, count)  # what still waited for its turn is printed, not lost
    finally:
        tracer.close()
        out.end()
    _summary(tracer)


def _loop(tracer: Any, out: Any, stop_at: float | None, count: int | None,
          join_delay: float) -> None:
    tracer.join_delay_s = join_delay
    while True:
        done = stop_at is not None and time.monotonic() >= stop_at
        records = tracer.flush() if done else tracer.poll(0.1)
        if count is not None:
            records = records[:count - tracer.stats.printed]
        tracer.stats.printed += len(records)
        out.records(records)
        if done or (count is not None and tracer.stats.printed >= count):
            return


def _drain(tracer: Any, out: Any, count: int | None) -> None:
    try:
        records = tracer.flush()
        if count is not None:
            records = records[:max(0, count - tracer.stats.printed)]
        tracer.stats.printed += len(records)
        out.records(records)
    except KeyboardInterrupt:
        pass  # a second Ctrl-C: stop now


def _announce(tracer: Any) -> None:
    namespaces = len(tracer.ns.diag)
    click.echo(f"sockdoctor: tracing TCP state changes in {namespaces} network namespace"
               f"{'s' if namespaces != 1 else ''} (Ctrl-C stops)", err=True)


def _summary(tracer: Any) -> None:
    s = tracer.stats
    owned = (f"; owner known for {100 * s.close_wait_owned / s.close_wait:.1f}% of "
             f"{s.close_wait} CLOSE-WAIT entries" if s.close_wait else "")
    lost = f"{s.lost} lost" + (f", destroy listener overflowed {s.destroy_overflows} times"
                               if s.destroy_overflows else "")
    unplaced = tracer.filter.unplaced
    left_out = (f"; {unplaced} events left out because their namespace could not be told "
                "(--netns)" if unplaced else "")
    click.echo(f"sockdoctor: {s.changes} state changes, {s.destroyed} destroyed sockets, "
               f"{lost}{owned}{left_out}", err=True)


def _stop_on_signals() -> None:
    """SIGTERM and SIGHUP end a trace like Ctrl-C: the tracing instance is removed."""
    def interrupt(_sig: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, interrupt)
