"""Shared pieces of the command line: filter options, progress, output, errors."""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Callable, Iterator
from typing import Any

import click

from ..errors import EXIT_INTERRUPTED, EXIT_PERMISSION, FilterSyntaxError, SockdoctorError
from ..stdout import silence_stdout
from .complete import complete_netns, complete_state

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


@contextlib.contextmanager
def progress_shown(enabled: bool = True) -> Iterator[Callable[[str], None] | None]:
    """progress() for the length of a block; the line is cleared after it, whatever happens."""
    try:
        yield progress(enabled)
    finally:
        clear_progress(enabled)


def warn(lines: list[str]) -> None:
    for line in lines:
        click.echo(f"sockdoctor: note: {_escaped(line)}", err=True)


class Once(click.Option):
    """An option that takes one value: repeated with another value is a usage error.

    click would silently keep the last one (`--netns a --netns b` scans only b).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.single_default = kwargs.pop("default", None)
        if kwargs.pop("show_default", False):
            kwargs["help"] = f"{kwargs.get('help', '')}  [default: {self.single_default}]"
        super().__init__(*args, multiple=True, **kwargs)

    def process_value(self, ctx: click.Context, value: Any) -> Any:
        values = list(dict.fromkeys(super().process_value(ctx, value) or ()))
        if len(values) > 1:
            shown = " and ".join(repr(v) for v in values[:3])
            raise click.UsageError(f"{self.opts[-1]} was given {len(values)} different values "
                                   f"({shown}): give it once", ctx)
        return values[0] if values else self.single_default


class PidType(click.ParamType):
    """A process id: a number above 0 (`--pid -5` is a typo, not a process)."""

    name = "PID"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None
                ) -> int:
        try:
            pid = int(value)
        except (TypeError, ValueError):
            self.fail(f"'{value}' is not a process id (a number above 0)", param, ctx)
        if pid <= 0:
            self.fail(f"{pid} is not a process id (a number above 0)", param, ctx)
        return pid


class PortType(click.ParamType):
    """A TCP port: a number 1-65535 or a service name (http, postgresql), as filters take."""

    name = "PORT"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None
                ) -> int:
        if isinstance(value, int):
            return value
        text = str(value).strip().removeprefix(":")
        if text.isdigit():
            port = int(text)
            if 1 <= port <= 65535:
                return port
            self.fail(f"{port} is not a port (1-65535)", param, ctx)
        import socket

        try:
            return socket.getservbyname(text, "tcp")
        except (OSError, ValueError):
            self.fail(f"'{value}' is not a port number (1-65535) or a TCP service name "
                      "(/etc/services)", param, ctx)


class DurationType(click.ParamType):
    """Every duration option's type: 500ms, 30s, 10m, 2h, 1d (a bare number: seconds).

    Checked when the command line is read, with the one message of
    query.parse_duration; the value stays text for the code that takes it.
    """

    name = "DURATION"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None
                ) -> str:
        from ..query import parse_duration

        option = param.opts[-1] if param is not None and param.opts else ""
        parse_duration(str(value), option)  # a UsageError: one sentence, exit 2
        return str(value)


DURATION = DurationType()
PORT = PortType()

# ss's protocol flags: sockdoctor lists TCP only (see other_protocols()).
OTHER_PROTOCOLS = {"-u": "UDP", "-x": "Unix", "-w": "raw", "-d": "DCCP", "-S": "SCTP",
                   "-0": "packet", "-M": "MPTCP"}
_LONG_PROTOCOLS = {"-u": "--udp", "-x": "--unix", "-w": "--raw", "-d": "--dccp",
                   "-S": "--sctp", "-0": "--packet", "-M": "--mptcp"}
_META = "sockdoctor.other_protocols"


def _note_protocol(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value:
        ctx.meta.setdefault(_META, []).append(param.opts[0])


def filter_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The filter arguments every socket-selecting command shares (ls, doctor, kill, snapshot).

    Also ss's -t -a -n (accepted and ignored: always TCP, every state,
    numeric) and its protocol flags -u -x -w ... (TCP only, see other_protocols).
    """
    options = [
        click.argument("filter_words", nargs=-1, metavar="[FILTER]..."),
        click.option("-F", "--filter-file", cls=Once, metavar="FILE",
                     help="Read the filter expression from FILE (as ss -F; - reads stdin)."),
        click.option("--state", "states", multiple=True, metavar="STATE",
                     shell_complete=complete_state,
                     help="Only this state (repeatable): close-wait, time-wait, established, "
                          "or a group: connected, synchronized, bucket, big, all."),
        click.option("--port", "ports", multiple=True, type=PORT, metavar="PORT",
                     help="Local or peer port, a number or a service name such as http "
                          "(repeatable)."),
        click.option("--pid", "pids", multiple=True, type=PidType(), metavar="PID",
                     help="Only sockets held by this process (repeatable)."),
        click.option("--process", cls=Once, default="", metavar="NAME",
                     help="Only sockets held by processes called NAME: the process name "
                          "(comm, as ss -p shows it) or its program's base name, exactly, "
                          "or a glob such as 'python*'."),
        click.option("--older-than", cls=Once, metavar="AGE", type=DURATION,
                     help="Only sockets whose peer has been silent at least AGE "
                          "(30s, 10m, 2h): see docs/age.md."),
        click.option("-N", "--netns", cls=Once, metavar="NS", shell_complete=complete_netns,
                     help="Network namespace: all, host, self, a name from `ip netns`, "
                          "container:ID, a PID inside it, or its inode. Default, as ss: the "
                          "current one inside a network namespace, all on the host."),
        click.option("-t", "--tcp", "ss_tcp", is_flag=True, hidden=True),
        click.option("-a", "--all", "ss_all", is_flag=True, hidden=True),
        click.option("-n", "--numeric", "ss_numeric", is_flag=True, hidden=True),
        *(click.option(short, long, is_flag=True, hidden=True, expose_value=False,
                       callback=_note_protocol) for short, long in _LONG_PROTOCOLS.items()),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def other_protocols(tcp: bool) -> None:
    """ss's -u/-x/-w...: a note beside -t (`-tulpn` still lists TCP), else a usage error."""
    flags = click.get_current_context().meta.get(_META, [])
    if not flags:
        return
    names = ", ".join(f"{f} ({OTHER_PROTOCOLS[f]})" for f in flags)
    if tcp:
        warn([f"sockdoctor shows TCP only: {names} ignored"])
        return
    from ..errors import UsageError

    raise UsageError(f"sockdoctor shows TCP only: {names} is for `ss` (add -t to list the "
                     "TCP sockets)")


def build_query(kw: dict[str, Any], family: int = 0, states: tuple[str, ...] = (),
                live: bool = True) -> Any:
    """The Query of the shared filter options (popped from `kw`); `states` adds ls's -l.

    `live`: the host is scanned (not a --from snapshot), so --netns defaults as
    ss does (linux.netns.default_scope).
    """
    from ..query import Query

    other_protocols(kw.pop("ss_tcp"))
    kw.pop("ss_all")
    kw.pop("ss_numeric")
    return Query.build(
        kw.pop("filter_words"), states=(*kw.pop("states"), *states), ports=kw.pop("ports"),
        pids=kw.pop("pids"), process=kw.pop("process"), older_than=kw.pop("older_than"),
        netns=scope(kw.pop("netns"), live), family=family, filter_file=kw.pop("filter_file"),
    )


def scope(netns: str | None, live: bool) -> str:
    """--netns as given, or its default; `-N all` inside a namespace says it reaches out."""
    if not live:
        return netns or "all"
    from ..linux.netns import default_scope

    default = default_scope()
    if netns is None:
        return default
    if default == "self" and netns.strip() == "all":
        warn(["--netns all: every network namespace, not only the current one (the "
              "default inside a network namespace)"])
    return netns


def scope_words(netns: str) -> str:
    """Where a daemon will act, every namespace named (reap's first line)."""
    from ..linux import netns as netns_mod
    from ..render.fmt import untrusted

    try:
        found, _denied = netns_mod.discover()
        names = [untrusted(ns.name) for ns in netns_mod.select(found, netns)]
    except SockdoctorError:
        return f"--netns {untrusted(netns)}"
    if netns.strip() in ("", "all"):
        more = f", ... {len(names) - 12} more" if len(names) > 12 else ""
        return f"in every network namespace ({len(names)} now: {', '.join(names[:12])}{more})"
    if len(names) == 1:
        return f"in network namespace {names[0]}"
    return f"in {len(names)} network namespaces: {', '.join(names)}"


def exclusive(**given: bool) -> None:
    """At most one of these options (named as typed, '_' for '-'): else a usage error."""
    on = ["--" + name.replace("_", "-") if len(name) > 1 else "-" + name
          for name, value in given.items() if value]
    if len(on) > 1:
        from ..errors import UsageError

        raise UsageError(f"{' and '.join(on)} exclude each other: give one")


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
        except FilterSyntaxError as exc:  # the one error of several lines: filter and caret
            click.echo(f"sockdoctor: {_escaped(str(exc), keep_lines=True)}", err=True)
            return exc.exit_code
        except SockdoctorError as exc:
            click.echo(f"sockdoctor: {_escaped(str(exc))}", err=True)
            return exc.exit_code
        except click.NoSuchOption as exc:
            return _show_click_error(_ss_habit(exc) or exc)
        except click.ClickException as exc:
            return _show_click_error(exc)
        except click.exceptions.Abort:
            click.echo("", err=True)
            return EXIT_INTERRUPTED
        except KeyboardInterrupt:
            click.echo("\nsockdoctor: interrupted", err=True)
            return EXIT_INTERRUPTED
        except PermissionError as exc:
            click.echo(f"sockdoctor: permission denied: {exc.strerror or exc}"
                       f"{' (' + _escaped(exc.filename) + ')' if exc.filename else ''}; run as "
                       "root", err=True)
            return EXIT_PERMISSION
        except BrokenPipeError:
            silence_stdout()
            return 0
        return 0
    return wrapper


def _escaped(text: str, keep_lines: bool = False) -> str:
    """An error or note for the terminal, escaped whole (its names come from anywhere)."""
    from ..render.fmt import untrusted

    if keep_lines:
        return "\n".join(untrusted(line) for line in text.split("\n"))
    return untrusted(text)


# click >= 8.2: a group called without a command "fails" with its help text
_HELP_ERROR = getattr(click.exceptions, "NoArgsIsHelpError", ())


def _show_click_error(exc: click.ClickException) -> int:
    """click's usage errors in the house format: one sentence on one line, exit 2."""
    if isinstance(exc, _HELP_ERROR):  # `sockdoctor`, `sockdoctor lab`: the help as it is
        click.echo(exc.format_message(), err=True)
        return exc.exit_code
    click.echo(f"sockdoctor: {_escaped(click_sentence(exc))}", err=True)
    return exc.exit_code


def click_sentence(exc: click.ClickException) -> str:
    """click's message as one sentence: lower-case start, one line, did-you-mean kept."""
    path = exc.ctx.command_path if isinstance(exc, click.UsageError) and exc.ctx else ""
    if isinstance(exc, click.NoSuchOption):
        import difflib

        close = difflib.get_close_matches(exc.option_name, exc.possibilities or (), n=1,
                                          cutoff=0)  # click's nearest few: the nearest
        where = f" for `{path}`" if path else ""
        hint = f"; did you mean {' or '.join(close)}?" if close else \
            f" (`{path or 'sockdoctor'} --help` lists them)"
        return f"no such option {exc.option_name}{where}{hint}"
    text = " ".join(exc.format_message().split()).rstrip(".")
    return text[:1].lower() + text[1:]


class Group(click.Group):
    """A command group whose unknown command gets the nearest names ("did you mean ls?")."""

    def resolve_command(self, ctx: click.Context, args: list[str]) -> Any:
        name = args[0] if args else ""
        if name and not name.startswith("-") and self.get_command(ctx, name) is None \
                and not ctx.resilient_parsing:  # completion asks quietly
            import difflib

            close = difflib.get_close_matches(name, self.list_commands(ctx), n=2, cutoff=0.6)
            close += [c for c in self.list_commands(ctx)
                      if sorted(c) == sorted(name) and c not in close]  # sl -> ls
            hint = f"; did you mean {' or '.join(close)}?" if close else \
                f" (`{ctx.command_path} --help` lists them)"
            raise click.UsageError(f"no such command '{name}' in `{ctx.command_path}`{hint}",
                                   ctx)
        return super().resolve_command(ctx, args)


# What ss users type that sockdoctor does not take, and what to type instead.
SS_EQUIVALENTS = {
    "-K": "use `sockdoctor kill FILTER` (it plans first; add --yes to act)",
    "--kill": "use `sockdoctor kill FILTER` (it plans first; add --yes to act)",
    "-E": "events are not streamed; `sockdoctor doctor --interval 10s` compares two samples",
    "--events": "events are not streamed; `sockdoctor doctor --interval 10s` compares two "
                "samples",
    "-D": "use `sockdoctor snapshot -o FILE` (read it back with --from FILE)",
    "--dump": "use `sockdoctor snapshot -o FILE` (read it back with --from FILE)",
    "-f": "choose the family with -4 or -6 (sockdoctor shows TCP only)",
    "--family": "choose the family with -4 or -6 (sockdoctor shows TCP only)",
    "-A": "sockdoctor shows TCP only: choose states with --state or a `state` filter",
    "--query": "sockdoctor shows TCP only: choose states with --state or a `state` filter",
    "-Z": "SELinux contexts are not shown; -p shows the owning process",
    "-z": "SELinux contexts are not shown; -p shows the owning process",
    "-b": "BPF socket filters are not shown",
    "-T": "-p shows the process and descriptor holding each socket",
    "--threads": "-p shows the process and descriptor holding each socket",
    "-O": "sockdoctor ls prints one line per socket unless -i or -m add a second one",
    "--oneline": "sockdoctor ls prints one line per socket unless -i or -m add a second one",
    "--cgroup": "-e shows each socket's cgroup id",
    "--tos": "the TOS/class fields are not shown; -i shows tcp_info",
    "-V": "use `sockdoctor --version`",
    "-v": "use `sockdoctor --version`",
}
# ls's ss-style flags, for the other commands: they collect what they need themselves.
LS_ONLY = {"-l", "-s", "-r", "-p", "-i", "-m", "-e", "-o", "-H", "-4", "-6"}


def _ss_habit(exc: click.NoSuchOption) -> click.UsageError | None:
    name = exc.option_name
    command = exc.ctx.command.name if exc.ctx is not None else ""
    if name in SS_EQUIVALENTS:
        return click.UsageError(f"{name} is an ss option: {SS_EQUIVALENTS[name]}", exc.ctx)
    if name in LS_ONLY and command != "ls":
        return click.UsageError(f"{name} is an option of `sockdoctor ls` (as in ss); "
                                f"`sockdoctor {command}` collects what it needs itself", exc.ctx)
    return None


def need_root(what: str) -> None:
    """Commands that build network namespaces stop here, in one sentence, without root."""
    import os

    from ..errors import PermissionDeniedError

    if os.geteuid() != 0:
        raise PermissionDeniedError(f"{what} needs root: it creates and removes network "
                                    "namespaces (try sudo)")
