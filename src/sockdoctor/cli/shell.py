"""`sockdoctor completion SHELL` and `sockdoctor man`: what a shell and `man` need.

Completion is click's own (its `_SOCKDOCTOR_COMPLETE` protocol): commands and
options, and through `shell_complete=` on the parameters the values too:
states, namespaces, lab scenarios and labs (cli/complete.py).

The man page is made from the same help text `--help` prints (description,
options, examples, exit codes) by a small generator: click-man renders no
epilog (our examples and exit codes) and writes text lines that start with
`.` or hold a backslash unescaped, which roff then misreads.
"""

from __future__ import annotations

from typing import Any

import click

from . import COMPLETE_VAR
from .common import CONTEXT

__all__ = ["COMPLETE_VAR", "completion_command", "man_command", "man_page"]
SHELLS = ("bash", "zsh", "fish")
EXIT_STATUS = """\
0    success (doctor: healthy; kill: every chosen socket is gone)
1    doctor: warnings; kill: some sockets survived or were left alone
2    bad filter or arguments; doctor: critical findings
3    unknown pid, process, namespace, scenario, lab or file
4    not permitted (needs root, CAP_NET_ADMIN, CAP_NET_RAW or ptrace rights)
5    the running kernel lacks the needed feature
6    corrupt or foreign snapshot file
7    output file refused or not writable
130  interrupted"""
MAN_WIDTH = 80  # the help text is laid out once, at this width, like a terminal's


@click.command("completion", context_settings=CONTEXT, epilog="""
\b
Examples:
  # bash, for every user
  sockdoctor completion bash > /etc/bash_completion.d/sockdoctor
  # zsh: a file named _sockdoctor in a directory of your $fpath
  sockdoctor completion zsh > "${fpath[1]}/_sockdoctor"
  # fish
  sockdoctor completion fish > ~/.config/fish/completions/sockdoctor.fish
  # bash, this shell only
  eval "$(sockdoctor completion bash)"
""")
@click.argument("shell", type=click.Choice(SHELLS), metavar="SHELL")
def completion_command(shell: str) -> None:
    """Print the shell completion script for SHELL: commands, options, states, namespaces,
    lab scenarios."""
    from click.shell_completion import get_completion_class

    from . import cli

    cls = get_completion_class(shell)
    assert cls is not None  # every name in SHELLS is one of click's
    click.echo(cls(cli, {}, "sockdoctor", COMPLETE_VAR).source())


@click.command("man", context_settings=CONTEXT, epilog="""
\b
Examples:
  sockdoctor man | man -l -
  # what `pip install` puts in share/man/man1 (man sockdoctor)
  sockdoctor man > sockdoctor.1
""")
def man_command() -> None:
    """Print sockdoctor's man page (roff), made from every command's --help."""
    from . import cli

    click.echo(man_page(cli), nl=False)


def man_page(root: click.Group) -> str:
    """One page, sockdoctor(1): the overview, then a section per command."""
    from .. import __version__

    lines = [f'.TH SOCKDOCTOR 1 "" "sockdoctor {__version__}" "sockdoctor manual"',
             ".SH NAME", r"sockdoctor \- " + _roff(_first_line(root)),
             ".SH SYNOPSIS", r"\fBsockdoctor\fR \fICOMMAND\fR [\fIOPTIONS\fR] [\fIFILTER\fR]",
             ".SH DESCRIPTION", *_block(_help(root, ("sockdoctor",))), ".SH COMMANDS"]
    for path, command in _commands(root, ("sockdoctor",)):
        lines += [f".SS {_roff(' '.join(path))}", *_block(_help(command, path))]
    lines += [".SH EXIT STATUS", *_block(EXIT_STATUS),
              ".SH SEE ALSO", r"\fBss\fR(8), \fBip-netns\fR(8);",
              "the documents in the project's docs/ directory."]
    return "\n".join(lines) + "\n"


def _commands(group: click.Group, path: tuple[str, ...]) -> list[tuple[tuple[str, ...], Any]]:
    out = []
    for name in group.list_commands(click.Context(group)):
        command = group.get_command(click.Context(group), name)
        if command is None or command.hidden:
            continue
        out.append(((*path, name), command))
        if isinstance(command, click.Group):
            out += _commands(command, (*path, name))
    return out


def _help(command: click.Command, path: tuple[str, ...]) -> str:
    settings = {**command.context_settings, "terminal_width": MAN_WIDTH,
                "max_content_width": MAN_WIDTH}  # as --help has them (-h too)
    ctx = click.Context(command, info_name=" ".join(path), **settings)
    return command.get_help(ctx)


def _first_line(command: click.Command) -> str:
    return (command.help or "").strip().splitlines()[0].rstrip(".")


def _block(text: str) -> list[str]:
    """Help text kept as laid out (no filling), each line safe for roff."""
    return [".nf", *(_roff(line) for line in text.splitlines()), ".fi"]


def _roff(line: str) -> str:
    """A text line roff prints as it is: backslashes doubled, '-' as \\-, no leading . or '."""
    line = line.replace("\\", "\\e").replace("-", "\\-")
    return "\\&" + line if line.startswith((".", "'")) else line
