"""Every command's --help ends with real examples: commands that parse as written."""

from __future__ import annotations

import re
import shlex

import click
import pytest
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


def examples(help_text: str) -> list[str]:
    """The example command lines at the end of a help text."""
    tail = help_text.rsplit("Examples:", 1)
    assert len(tail) == 2, "no Examples: section"
    lines = [line.strip() for line in tail[1].splitlines()
             if line.strip() and not line.strip().startswith("# ")]  # what the next one does
    assert lines and all(line.startswith(("sockdoctor ", "ssh ")) for line in lines), lines
    return lines


def argv_of(example: str) -> list[list[str]]:
    """Each sockdoctor invocation in an example line (pipes, `;`), comment dropped."""
    example = re.split(r"\s{3,}", example)[0]  # the explanation after the command
    lexer = shlex.shlex(example.replace("$(", "").replace(")", ""), posix=True,
                        punctuation_chars="|;&>")  # > FILE: not an argument
    lexer.whitespace_split = True
    out, words = [], []
    for token in [*lexer, "|"]:
        if token.strip("|;&>"):
            words.append(token)
            continue
        if words and words[0] == "ssh":
            words = words[2:]
        if words and words[0] == "sockdoctor":
            out.append(words[1:])
        words = []
    return out


@pytest.mark.parametrize("path", commands(), ids=lambda p: " ".join(p) or "sockdoctor")
def test_help_ends_with_examples_that_parse(path: tuple[str, ...]) -> None:
    done = CliRunner().invoke(cli, [*path, "--help"], terminal_width=100)
    assert done.exit_code == 0, done.output
    found = examples(done.output)
    assert len(found) >= 2
    for line in found:
        invocations = argv_of(line)
        assert invocations, line
        for argv in invocations:
            command = cli
            words = list(argv)
            while isinstance(command, click.Group) and words and words[0] in command.commands:
                command = command.commands[words.pop(0)]
            assert not isinstance(command, click.Group), line
            command.make_context(command.name, words)  # raises on a bad option or value
