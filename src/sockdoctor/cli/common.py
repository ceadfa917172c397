"""Shared pieces of the command line: filter options, progress, output, errors."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

import click

from ..errors import EXIT_INTERRUPTED, EXIT_PERMISSION, SockdoctorError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}

FILTER_HELP = """
\b
FILTER is an ss filter expression, e.g.
  state close-wait
  state established '( dport = :443 or dport = :80 )'
  exclude listening src 10.0.0.0/8 and sport gt :1024
"""


def progress(enabled: bool) -> Callable[[str], None] | None:
    if not enabled or not sys.stderr.isatty():
        return None

    def say(message: str) -> None:
        sys.stderr.write(f"\r\033[K{message}...")
        sys.stderr.flush()
    return say


def clear_progress(enabled: bool) -> None:
    if enabled and sys.stderr.isatty():
        sys.stderr.write("\r\033[K")


def warn(lines: list[str]) -> None:
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
    from ..query import Query

    return Query.build(
        kw.pop("filter_words"), states=kw.pop("states"), ports=kw.pop("ports"),
        pids=kw.pop("pids"), process=kw.pop("process"), older_than=kw.pop("older_than"),
        netns=kw.pop("netns"), family=family, filter_file=kw.pop("filter_file"),
    )


def write_lines(out: Any, lines: Any, chunk: int = 4096) -> None:
    """Write lines in large blocks: one write per line is slow for 100k lines."""
    batch: list[str] = []
    for line in lines:
        batch.append(line)
        if len(batch) >= chunk:
            out.write("\n".join(batch) + "\n")
            batch.clear()
    if batch:
        out.write("\n".join(batch) + "\n")


def user_errors(fn: Callable[[], Any]) -> Callable[[], int]:
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


def need_root(what: str) -> None:
    """Commands that build network namespaces stop here, in one sentence, without root."""
    import os

    from ..errors import PermissionDeniedError

    if os.geteuid() != 0:
        raise PermissionDeniedError(f"{what} needs root: it creates and removes network "
                                    "namespaces (try sudo)")
