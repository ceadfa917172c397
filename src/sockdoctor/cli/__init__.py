"""Command line: parse arguments, call the library, render, exit code.

Kept thin and cheap to import: each command lives in its own module here and
imports the heavy parts of the library only when it runs, so
`sockdoctor --help` starts instantly. A command module only defines a click
command; it is registered below.
"""

from __future__ import annotations

import codecs
import gc
import sys

import click

from .common import CONTEXT, reader_may_leave, user_errors
from .demo import demo_command
from .doctor import doctor_command
from .exporter import exporter_command
from .keepalive import keepalive_command
from .kill import kill_command
from .lab import lab_command
from .ls import ls_command
from .reap import reap_command
from .snapshot import snapshot_command
from .top import top_command
from .trace import trace_command
from .unit import unit_command


def _version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    """--version: the version, whether the C fast path (linux/native.py) and the BPF
    kernel engine (linux/bpf/) are in use."""
    if not value or ctx.resilient_parsing:
        return
    from .. import __version__
    from ..linux import bpf
    from ..linux.native import describe

    click.echo(f"sockdoctor, version {__version__}\n{describe()}\n{bpf.describe()}")
    ctx.exit()


class _Commands(click.Group):
    """The command group; a reader that leaves early (`ls | head`) ends a listing with 0.

    Commands with a status of their own (doctor, kill) print inside
    reader_may_leave() themselves and keep it.
    """

    def invoke(self, ctx: click.Context) -> object:
        with reader_may_leave():
            return super().invoke(ctx)
        return 0


@click.group(cls=_Commands, context_settings=CONTEXT, epilog="""
\b
Examples:
  sockdoctor ls --summary            who holds which sockets, on one screen
  sockdoctor doctor                  what is wrong, why, and how to fix it
  sockdoctor kill state close-wait --port 8080      plan; add --yes to act
  sockdoctor demo                    see it all on a reproduced leak
  sockdoctor exporter                the same, watched, for Prometheus (:19808/metrics)
""")
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=_version,
              help="Show the version and whether the compiled fast path is in use, and exit.")
def cli() -> None:
    """Find, explain and remove stuck TCP connections (CLOSE_WAIT leaks and friends).

    Every command that selects sockets takes an ss filter expression and the
    flags --state, --port, --pid, --process, --older-than and --netns (-N), and
    accepts ss's -t -a -n. Run as root to see every process and network
    namespace. `sockdoctor COMMAND --help` has examples for each command.
    """


cli.add_command(ls_command)
cli.add_command(doctor_command)
cli.add_command(kill_command)
cli.add_command(reap_command)
cli.add_command(keepalive_command)
cli.add_command(lab_command)
cli.add_command(snapshot_command)
cli.add_command(demo_command)
cli.add_command(exporter_command)
cli.add_command(trace_command)
cli.add_command(top_command)
cli.add_command(unit_command)


@user_errors
def _run() -> None:
    rc = cli.main(standalone_mode=False)
    if isinstance(rc, int) and rc:
        sys.exit(rc)


def main() -> None:
    # A command is a short-lived process that builds hundreds of thousands of
    # small objects and no garbage cycles worth collecting: the cyclic garbage
    # collector only re-scans them over and over (a third of --json's time).
    gc.disable()
    _escape_what_the_locale_cannot_encode()
    sys.exit(_run())


def _escape_what_the_locale_cannot_encode() -> None:
    """Under an ASCII locale (LANG=C with Python's UTF-8 coercion off) a process named
    café cannot be printed as it is: it reads caf\\u00e9, not a UnicodeEncodeError
    (\\u, as untrusted() writes characters: \\xNN above 0x7f is a raw byte). JSON
    and metrics are bytes, always UTF-8, and do not pass through here."""
    for stream in (sys.stdout, sys.stderr):
        encoding = getattr(stream, "encoding", None) or "ascii"
        if codecs.lookup(encoding).name != "utf-8" and hasattr(stream, "reconfigure"):
            codecs.register_error("sockdoctor-escape", _escape_unencodable)
            stream.reconfigure(errors="sockdoctor-escape")


def _escape_unencodable(exc: UnicodeError) -> tuple[str, int]:
    if not isinstance(exc, UnicodeEncodeError):
        raise exc
    text = exc.object[exc.start:exc.end]
    return "".join(f"\\u{ord(c):04x}" if ord(c) <= 0xFFFF else f"\\U{ord(c):08x}"
                   for c in text), exc.end
