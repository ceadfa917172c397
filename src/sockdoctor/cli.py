"""Command line: parse arguments, call the library, render, exit code.

Kept thin and cheap to import: every heavy module is imported inside the
command that needs it, so `sockdoctor --help` starts instantly.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

import click

from .errors import EXIT_INTERRUPTED, EXIT_PERMISSION, SockdoctorError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}

FILTER_HELP = """
\b
FILTER is an ss filter expression, e.g.
  state close-wait
  state established '( dport = :443 or dport = :80 )'
  exclude listening src 10.0.0.0/8 and sport gt :1024
"""


def _progress(enabled: bool) -> Callable[[str], None] | None:
    if not enabled or not sys.stderr.isatty():
        return None

    def say(message: str) -> None:
        sys.stderr.write(f"\r\033[K{message}...")
        sys.stderr.flush()
    return say


def _clear_progress(enabled: bool) -> None:
    if enabled and sys.stderr.isatty():
        sys.stderr.write("\r\033[K")


def _warn(lines: list[str]) -> None:
    for line in lines:
        click.echo(f"sockdoctor: note: {line}", err=True)


def filter_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The filter arguments every socket-selecting command shares."""
    options = [
        click.argument("filter_words", nargs=-1, metavar="[FILTER]..."),
        click.option("-F", "--filter-file", metavar="FILE",
                     help="Read the filter expression from FILE (as ss -F)."),
        click.option("--state", "states", multiple=True, metavar="STATE",
                     help="Only this state (repeatable): close-wait, time-wait, established, "
                          "or a group: connected, synchronized, bucket, big, all."),
        click.option("--port", "ports", multiple=True, type=click.IntRange(1, 65535),
                     metavar="N", help="Local or peer port N (repeatable)."),
        click.option("--pid", "pids", multiple=True, type=int, metavar="PID",
                     help="Only sockets held by this process (repeatable)."),
        click.option("--process", default="", metavar="NAME",
                     help="Only sockets held by processes with this name (comm)."),
        click.option("--older-than", metavar="AGE",
                     help="Only sockets whose peer has been silent at least AGE "
                          "(30s, 10m, 2h): see docs/age.md."),
        click.option("--netns", default="all", show_default=True, metavar="NS",
                     help="Network namespace: all, host, self, a name from `ip netns`, "
                          "container:ID, a PID inside it, or its inode."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def build_query(kw: dict[str, Any], family: int = 0) -> Any:
    from .query import Query

    return Query.build(
        kw.pop("filter_words"), states=kw.pop("states"), ports=kw.pop("ports"),
        pids=kw.pop("pids"), process=kw.pop("process"), older_than=kw.pop("older_than"),
        netns=kw.pop("netns"), family=family, filter_file=kw.pop("filter_file"),
    )


@click.group(context_settings=CONTEXT)
@click.version_option(package_name="sockdoctor")
def cli() -> None:
    """Find, explain and remove stuck TCP connections (CLOSE_WAIT leaks and friends).

    \b
    Start here:
      sockdoctor ls --summary          who holds which sockets, on one screen
      sockdoctor doctor                what is wrong, why, and how to fix it
      sockdoctor kill state close-wait --port 8080      plan; add --yes to act
      sockdoctor demo                  see it all on a reproduced leak

    Every command that selects sockets takes an ss filter expression and the
    flags --state, --port, --pid, --process, --older-than and --netns.
    Run as root to see every process and network namespace.
    """


@cli.command("ls", context_settings=CONTEXT, epilog=FILTER_HELP)
@filter_options
@click.option("-p", "--processes", is_flag=True,
              help="Show the process and fd holding each socket.")
@click.option("-i", "--info", is_flag=True, help="Show tcp_info (rtt, cwnd, bytes, ...).")
@click.option("-m", "--memory", is_flag=True, help="Show socket memory (skmem).")
@click.option("-e", "--extended", is_flag=True, help="Show uid, inode, cookie, shutdown.")
@click.option("-o", "--options", "timers", is_flag=True, help="Show timers.")
@click.option("-4", "ipv4", is_flag=True, help="IPv4 only.")
@click.option("-6", "ipv6", is_flag=True, help="IPv6 only.")
@click.option("-t", "-a", "-n", "compat", is_flag=True, hidden=True,
              help="Accepted for ss compatibility (always TCP, all states, numeric).")
@click.option("-H", "--no-header", is_flag=True, help="Do not print the header line.")
@click.option("--json", "output", flag_value="json", help="One JSON document (docs/json.md).")
@click.option("--ndjson", "output", flag_value="ndjson", help="One JSON object per socket.")
@click.option("--summary", "output", flag_value="summary",
              help="Counts by state x process x service.")
@click.option("--from", "from_file", metavar="FILE",
              help="Read a snapshot written by `sockdoctor snapshot` instead of the host.")
def ls_command(processes: bool, info: bool, memory: bool, extended: bool, timers: bool,
               ipv4: bool, ipv6: bool, compat: bool, no_header: bool, output: str | None,
               from_file: str | None, **kw: Any) -> None:
    """List TCP sockets in every network namespace, like `ss -tan`, with owners and age."""
    import socket as _socket

    family = _socket.AF_INET if ipv4 and not ipv6 else _socket.AF_INET6 if ipv6 and not ipv4 else 0
    query = build_query(kw, family)
    want_owners = processes or output == "summary"
    if from_file:
        from .snapshot_io import load

        snapshot = query.apply(load(from_file))
    else:
        from .inventory import scan

        show = output is None or output == "summary"
        snapshot = scan(query, owners=want_owners, info=info, mem=memory,
                        age=show, progress=_progress(show))
        _clear_progress(show)
    _warn(snapshot.warnings)
    out = sys.stdout
    if output == "json":
        from .render.jsonout import write_json

        write_json(snapshot, out.buffer)
    elif output == "ndjson":
        from .render.jsonout import write_ndjson

        write_ndjson(snapshot, out.buffer)
    elif output == "summary":
        from .render.summary import render

        _write_lines(out, render(snapshot))
    else:
        from .render.table import Columns
        from .render.table import render as render_table

        cols = Columns(processes=processes and snapshot.owners_scanned, info=info, mem=memory,
                       extended=extended, timers=timers, header=not no_header,
                       netns=len(snapshot.namespaces) > 1,
                       age=any(sk.age_ms is not None for sk in snapshot.sockets))
        _write_lines(out, render_table(snapshot, cols))


@cli.command("snapshot", context_settings=CONTEXT, epilog=FILTER_HELP)
@filter_options
@click.option("-o", "--output", "path", required=True, metavar="FILE",
              help="Where to write the snapshot (JSON; gzip if FILE ends in .gz).")
def snapshot_command(path: str, **kw: Any) -> None:
    """Save complete evidence (sockets, owners, namespaces, sysctls, counters) to a file.

    Read it back anywhere with `sockdoctor ls --from FILE` or `sockdoctor doctor --from FILE`.
    """
    from .inventory import scan
    from .snapshot_io import save

    query = build_query(kw)
    snap = scan(query, owners=True, info=True, mem=True, evidence=True,
                progress=_progress(True))
    _clear_progress(True)
    _warn(snap.warnings)
    save(snap, path)
    click.echo(f"wrote {len(snap.sockets)} sockets, {len(snap.processes)} processes, "
               f"{len(snap.namespaces)} namespaces to {path}", err=True)


def _write_lines(out: Any, lines: Any, chunk: int = 4096) -> None:
    """Write lines in large blocks: one write per line is slow for 100k lines."""
    batch: list[str] = []
    for line in lines:
        batch.append(line)
        if len(batch) >= chunk:
            out.write("\n".join(batch) + "\n")
            batch.clear()
    if batch:
        out.write("\n".join(batch) + "\n")


def _user_errors(fn: Callable[[], Any]) -> Callable[[], int]:
    @functools.wraps(fn)
    def wrapper() -> int:
        try:
            fn()
        except SockdoctorError as exc:
            click.echo(f"sockdoctor: {exc}", err=True)
            return exc.exit_code
        except click.ClickException as exc:
            exc.show()
            return exc.exit_code
        except click.exceptions.Abort:
            click.echo("", err=True)
            return EXIT_INTERRUPTED
        except KeyboardInterrupt:
            click.echo("\nsockdoctor: interrupted", err=True)
            return EXIT_INTERRUPTED
        except PermissionError as exc:
            click.echo(f"sockdoctor: permission denied: {exc.strerror or exc}"
                       f"{' (' + exc.filename + ')' if exc.filename else ''}; run as root",
                       err=True)
            return EXIT_PERMISSION
        except BrokenPipeError:
            _silence_stdout()
            return 0
        return 0
    return wrapper


def _silence_stdout() -> None:
    """After the reader of a pipe went away (`| head`), exit without a traceback."""
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


@_user_errors
def _run() -> None:
    rc = cli.main(standalone_mode=False)
    if isinstance(rc, int) and rc:
        sys.exit(rc)


def main() -> None:
    sys.exit(_run())
