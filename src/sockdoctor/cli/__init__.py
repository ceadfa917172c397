"""Command line: parse arguments, call the library, render, exit code.

Kept thin and cheap to import: each command lives in its own module here,
imported only when the command line names it (COMMANDS below), and imports the
heavy parts of the library only when it runs. Start-up is most of a short
command's cost (`kill` of a few sockets, `keepalive`), so `sockdoctor ls` never
imports kill's or the exporter's code, and `sockdoctor --help` imports none.
"""

from __future__ import annotations

import codecs
import gc
import importlib
import sys
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

import click

from ..stdout import reader_may_leave
from .common import CONTEXT, Group, user_errors

if TYPE_CHECKING:
    from click.shell_completion import CompletionItem

COMPLETE_VAR = "_SOCKDOCTOR_COMPLETE"  # click's completion protocol, under one name

# name: (module in cli/, its click command, the first paragraph of its help). The
# top-level --help and completion list commands from here, importing none of them;
# a unit test keeps the text equal to each command's own.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "ls": ("ls", "ls_command", "List TCP sockets in every network namespace, like `ss -tan`, "
           "with owners and age."),
    "doctor": ("doctor", "doctor_command", "Name the causes of stuck sockets: evidence, "
               "explanation, fix, and the relief command."),
    "kill": ("kill", "kill_command", "End stuck connections without restarting their owner: "
             "planned, verified, logged."),
    "reap": ("reap", "reap_command", "Reap stuck connections by a policy, cycle after cycle: "
             "planned, audited, verified."),
    "keepalive": ("keepalive", "keepalive_command", "Arm TCP keepalive on live sockets, so "
                  "vanished peers end by themselves."),
    "lab": ("lab", "lab_command", "Reproduce the classic stuck-socket bugs for real, in "
            "private network namespaces."),
    "snapshot": ("snapshot", "snapshot_command", "Save complete evidence (sockets, owners, "
                 "namespaces, sysctls, counters) to a file."),
    "demo": ("demo", "demo_command", "Run one classic bug end to end in private network "
             "namespaces (needs root)."),
    "exporter": ("exporter", "exporter_command", "Export stuck TCP sockets (CLOSE-WAIT by "
                 "process, port and age) to Prometheus."),
    "trace": ("trace", "trace_command", "Show every TCP state change as it happens, with its "
              "process — no BPF needed."),
    "top": ("top", "top_command", "Watch TCP sockets live: who holds how many in which state, "
            "growing how fast."),
    "unit": ("unit", "unit_command", "Print the hardened systemd unit of `sockdoctor exporter` "
             "or `sockdoctor reap`."),
    "completion": ("shell", "completion_command", "Print the shell completion script for "
                   "SHELL: commands, options, states, namespaces, lab scenarios."),
    "man": ("shell", "man_command", "Print sockdoctor's man page (roff), made from every "
            "command's --help."),
}


class _LazyCommands(Mapping[str, click.Command]):
    """The group's commands by name: a command's module is imported when it is looked up."""

    def __init__(self, table: Mapping[str, tuple[str, str, str]]) -> None:
        self._table = table
        self._loaded: dict[str, click.Command] = {}

    def __getitem__(self, name: str) -> click.Command:
        if name not in self._loaded:
            module, attribute, _short = self._table[name]  # KeyError: no such command
            self._loaded[name] = getattr(importlib.import_module(f".{module}", __name__),
                                         attribute)
        return self._loaded[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._table)

    def __len__(self) -> int:
        return len(self._table)


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


class _Commands(Group):
    """The command group; a reader that leaves early (`ls | head`) ends a listing with 0.

    Commands with a status of their own (doctor, kill) print inside
    reader_may_leave() themselves and keep it.
    """

    def invoke(self, ctx: click.Context) -> object:
        with reader_may_leave():
            return super().invoke(ctx)
        return 0

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # click's own listing (order, width, shortening), of stand-ins made from the table
        _listing().format_commands(ctx, formatter)

    def shell_complete(self, ctx: click.Context, incomplete: str) -> list[CompletionItem]:
        from click.shell_completion import CompletionItem

        listing = _listing()
        names = [n for n in listing.list_commands(ctx) if n.startswith(incomplete)]
        return [CompletionItem(n, help=listing.commands[n].get_short_help_str()) for n in names
                ] + click.Command.shell_complete(self, ctx, incomplete)


def _listing() -> click.Group:
    """The commands as `--help` lists them, without importing any (help: the table's text)."""
    return click.Group(commands=[click.Command(name, help=short)
                                 for name, (_m, _a, short) in COMMANDS.items()])


@click.group(cls=_Commands, commands=_LazyCommands(COMMANDS), context_settings=CONTEXT,
             epilog="""
\b
Examples:
  # who holds which sockets, on one screen
  sockdoctor ls --summary
  # what is wrong, why, and how to fix it
  sockdoctor doctor
  # the plan for CLOSE-WAIT on :8080 (add --yes to act)
  sockdoctor kill state close-wait --port 8080
  # see it all on a reproduced leak (needs root)
  sockdoctor demo
  # the same, watched, for Prometheus (:19808/metrics)
  sockdoctor exporter
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


@user_errors
def _run() -> None:
    # One name and one completion variable, also under `python -m sockdoctor`.
    rc = cli.main(prog_name="sockdoctor", complete_var=COMPLETE_VAR, standalone_mode=False)
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
