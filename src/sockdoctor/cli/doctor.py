"""`sockdoctor doctor`: name the causes of stuck sockets, with evidence and the fix."""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import sys
import time
from collections.abc import Callable
from typing import Any

import click

from ..errors import EXIT_INTERRUPTED, SockdoctorError, UsageError
from .common import (
    CONTEXT,
    FILTER_HELP,
    Once,
    build_query,
    clear_progress,
    filter_options,
    progress,
    reader_may_leave,
    warn,
)

EPILOG = FILTER_HELP + """
\b
A FILTER narrows the sockets the doctor judges; the listeners of their
namespaces are kept as context (they tell server from client side and hold
the accept queues), and findings about context alone are not reported.

\b
--stuck-after AGE (default 10s) is how long a socket may sit in CLOSE-WAIT,
in an accept queue or half-closed in FIN-WAIT-2 before it counts as stuck.
The thresholds tied to it keep their proportions: one socket 30 x AGE old
warns on its own, a queued connection is stale after AGE/2 and the listener
dead after 6 x AGE, a held FIN-WAIT-2 is stuck after 6 x AGE, a queue wait
is felt after AGE/10. --idle-after AGE (default 30m) is how long a peer may
be silent on a connection without keepalive (warning from 4 x AGE). Both
accept 500ms, 30s, 10m, 2h, 1d. See docs/doctor.md.

\b
Exit code: 0 healthy (information at most), 1 warnings, 2 critical.
Errors: 2 bad arguments, 3 unknown namespace or file, 4 permission,
5 kernel feature missing, 6 corrupt snapshot file, 130 interrupted.

\b
Examples:
  sockdoctor doctor                          every namespace, one sample
  sockdoctor doctor --interval 10s           two samples: growth and trends
  sockdoctor doctor --netns web state close-wait
  sockdoctor doctor --process 'php-fpm*' --stuck-after 2s
  sockdoctor doctor --stacks                 where the owners' threads are
  sockdoctor doctor --json | jq -r '.findings[] | .relief'
  sockdoctor snapshot -o s.json; sockdoctor doctor --from s.json   (anywhere)
  ssh web1 sockdoctor snapshot -o - | sockdoctor doctor --from -
"""


@click.command("doctor", context_settings=CONTEXT, epilog=EPILOG)
@filter_options
@click.option("--interval", cls=Once, metavar="T",
              help="Take two samples T apart (10s, 1m) and report growth and trends.")
@click.option("--from", "from_file", cls=Once, metavar="FILE",
              help="Diagnose a snapshot written by `sockdoctor snapshot` instead of the host "
                   "(- reads stdin).")
@click.option("--previous", "previous_file", cls=Once, metavar="FILE",
              help="An earlier snapshot of the same host, for trends (with --from or live).")
@click.option("--json", "as_json", is_flag=True,
              help="The report as JSON (schema in docs/doctor.md).")
@click.option("--stuck-after", cls=Once, metavar="AGE",
              help="A socket counts as stuck after AGE in CLOSE-WAIT etc. [default: 10s]")
@click.option("--idle-after", cls=Once, metavar="AGE",
              help="Connections without keepalive count as idle after AGE of silence "
                   "[default: 30m]")
@click.option("--stacks", is_flag=True,
              help="Show where the owners' threads are (py-spy for Python, jcmd for Java, "
                   "the kernel's stacks otherwise): briefly attaches to each.")
@click.option("--no-color", is_flag=True, help="No colours, even on a terminal.")
def doctor_command(interval: str | None, from_file: str | None, previous_file: str | None,
                   as_json: bool, stuck_after: str | None, idle_after: str | None,
                   stacks: bool, no_color: bool, **kw: Any) -> int:
    """Name the causes of stuck sockets: evidence, explanation, fix, and the relief command.

    Reports the most severe findings first. Run as root to see every process
    and network namespace.
    """
    from ..doctor import config_for, diagnose

    query = build_query(kw)
    config = config_for(stuck_after, idle_after)
    interval_s = _interval(interval, from_file, previous_file)
    if stacks and from_file:
        raise UsageError("--stacks looks at the running processes: it cannot be used with "
                         "--from")
    if from_file == previous_file == "-":
        raise UsageError("--from - and --previous - cannot both read stdin")
    if from_file:
        snap, previous = _from_files(from_file, previous_file)
        source = "stdin" if from_file == "-" else from_file
        query.check_processes(snap, source)  # exit 3 naming the file, before diagnosing
        query.namespaces_in(snap, source)
    else:
        from ..inventory import check_selection

        check_selection(query)  # an unknown --pid or --process: exit 3 before sampling
        snap, previous = _live(query.netns, interval_s, previous_file)
        query = dataclasses.replace(query, netns="all")  # the scan chose the namespaces
    warn(snap.warnings)
    if previous is not None and previous.created >= snap.created:
        warn(["the previous snapshot is not older than the current one: trends not shown"])
    report = diagnose(snap, previous, config=config, query=query)
    if stacks:
        _add_stacks(report, snap)
    with reader_may_leave():
        _write(report, as_json, no_color)
    return report.exit_code


def _add_stacks(report: Any, snap: Any) -> None:
    from ..doctor.stacks import add_stacks
    from ..linux.stacks import raw_stacks

    add_stacks(report, snap, raw_stacks)


def _interval(text: str | None, from_file: str | None, previous_file: str | None
              ) -> float | None:
    from ..query import parse_duration

    if text is None:
        return None
    if from_file or previous_file:
        raise UsageError("--interval samples the running host; with saved snapshots "
                         "use --from FILE --previous EARLIER_FILE")
    ms = parse_duration(text, "--interval")
    if ms <= 0:
        raise UsageError("--interval must be longer than 0 (e.g. 10s)")
    return ms / 1000


def _from_files(path: str, previous_path: str | None) -> tuple[Any, Any]:
    from ..snapshot_io import load

    return load(path), load(previous_path) if previous_path else None


def _live(netns: str, interval_s: float | None, previous_path: str | None
          ) -> tuple[Any, Any]:
    from ..doctor.live import sample
    from ..snapshot_io import load

    saved = load(previous_path) if previous_path else None  # a bad file fails at once
    say = progress(True)  # stderr, and only on a terminal: JSON on stdout stays clean
    try:
        snap, previous = sample(netns, interval_s, progress=say, wait=_countdown(say))
    except KeyboardInterrupt:
        raise _Interrupted("interrupted: no report") from None
    finally:
        clear_progress(True)
    return snap, saved if saved is not None else previous


class _Interrupted(SockdoctorError):
    exit_code = EXIT_INTERRUPTED


def _countdown(say: Callable[[str], None] | None) -> Callable[[float], None]:
    """Sleep between the samples, showing the seconds left (Ctrl-C aborts)."""
    def wait(seconds: float) -> None:
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            if say is not None:
                say(f"second sample in {math.ceil(left)}s (Ctrl-C aborts)")
            time.sleep(min(1.0, left))
    return wait


def _write(report: Any, as_json: bool, no_color: bool) -> None:
    from ..doctor import render_text, to_json

    if as_json:
        sys.stdout.buffer.write(to_json(report) + b"\n")
        return
    tty = sys.stdout.isatty()
    color = tty and not no_color and not os.environ.get("NO_COLOR")
    width = min(shutil.get_terminal_size((100, 24)).columns, 100) if tty else 100
    sys.stdout.write(render_text(report, color=color, width=width))
