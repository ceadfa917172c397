"""The examples of every command's --help, as a shell would read them.

Shared by tests/unit/test_help.py (every example parses) and
tests/integration/test_help_examples.py (the read-only ones run).
"""

from __future__ import annotations

import re
import shlex

import click
from click.testing import CliRunner

from sockdoctor.cli import cli


def commands(group: click.Group = cli, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = [path]
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            out.extend(commands(command, (*path, name)))
        else:
            out.append((*path, name))
    return out


def help_text(path: tuple[str, ...]) -> str:
    done = CliRunner().invoke(cli, [*path, "--help"], terminal_width=100)
    assert done.exit_code == 0, done.output
    return done.output


def examples(text: str) -> list[str]:
    """The example command lines at the end of a help text (comment lines dropped)."""
    tail = text.rsplit("Examples:", 1)
    assert len(tail) == 2, "no Examples: section"
    lines = [line.strip() for line in tail[1].splitlines() if line.strip()]
    commands_ = [line for line in lines if not line.startswith("# ")]
    assert commands_ and all(line.startswith(("sockdoctor ", "ssh ", "eval "))
                             for line in commands_), lines
    return commands_


def all_examples() -> list[tuple[tuple[str, ...], str]]:
    return [(path, line) for path in commands() for line in examples(help_text(path))]


_SUBST = re.compile(r"\$\(([^()]*)\)")


def argv_of(example: str) -> list[list[str]]:
    """Each sockdoctor invocation in an example line, as the shell would split it."""
    inner = [argv for sub in _SUBST.findall(example) for argv in argv_of(sub)]
    lexer = shlex.shlex(_SUBST.sub("SUBST", example), posix=True, punctuation_chars="|;&<>")
    lexer.whitespace_split = True
    out, words, redirect = [], [], False
    for token in [*lexer, ";"]:
        if redirect:
            redirect = False
            continue
        if token in (">", ">>", "<"):
            redirect = True
            continue
        if token.strip("|;&"):
            words.append(token)
            continue
        while words and words[0] in ("ssh", "eval"):
            words = words[2:] if words[0] == "ssh" else words[1:]
        if words and words[0] == "sockdoctor":
            out.append(words[1:])
        words = []
    return [*inner, *out]


