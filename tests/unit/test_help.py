"""Every command's --help ends with real examples: lines you can paste and run.

Each example is a command line of its own; what it does is on a `#` comment
line above it (a description glued to the command would be pasted into the
shell too). Here every example must parse as a command line, and every
sockdoctor invocation in it (pipes, `&&`, `$(...)`, after `ssh HOST`) must
parse as sockdoctor's arguments. tests/integration/test_help_examples.py runs
the read-only ones.
"""

from __future__ import annotations

import re

import click
import pytest

from helpexamples import argv_of, commands, examples, help_text
from sockdoctor.cli import cli


@pytest.mark.parametrize("path", commands(), ids=lambda p: " ".join(p) or "sockdoctor")
def test_help_ends_with_examples_that_parse(path: tuple[str, ...]) -> None:
    found = examples(help_text(path))
    assert len(found) >= 2
    for line in found:
        # a description glued on ("...  listeners and their owners") is not a command
        assert not re.search(r"\S {3,}\S", line), f"description on the command line: {line}"
        invocations = argv_of(line)
        assert invocations, line
        for argv in invocations:
            command = cli
            words = list(argv)
            while isinstance(command, click.Group) and words and words[0] in command.commands:
                command = command.commands[words.pop(0)]
            assert not isinstance(command, click.Group), line
            command.make_context(command.name, words)  # raises on a bad option or value


def test_descriptions_are_comment_lines_above_their_command() -> None:
    text = help_text(("ls",))
    tail = text.rsplit("Examples:", 1)[1].splitlines()
    lines = [line.strip() for line in tail if line.strip()]
    at = lines.index("# listeners and their owners")
    assert lines[at + 1] == "sockdoctor ls -tlnp"


def test_argv_of_finds_every_invocation() -> None:
    assert argv_of('eval "$(sockdoctor completion bash)"') == [["completion", "bash"]]
    assert argv_of("sockdoctor snapshot -o - | gzip > snap.json.gz") == [
        ["snapshot", "-o", "-"]]
    assert argv_of("ssh web1 sockdoctor snapshot -o - | sockdoctor doctor --from -") == [
        ["snapshot", "-o", "-"], ["doctor", "--from", "-"]]
    assert argv_of("sockdoctor snapshot -o s.json && sockdoctor doctor --from s.json") == [
        ["snapshot", "-o", "s.json"], ["doctor", "--from", "s.json"]]
