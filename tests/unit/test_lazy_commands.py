"""The command line imports only the command it runs: start-up is most of a short command."""

from __future__ import annotations

import json
import subprocess
import sys

import click
import pytest

from sockdoctor.cli import COMMANDS, cli

# What each command must not drag in: the other commands and their heavy libraries.
OTHERS = {"sockdoctor.cli.kill", "sockdoctor.cli.exporter", "sockdoctor.cli.keepalive",
          "sockdoctor.cli.doctor", "sockdoctor.cli.lab", "sockdoctor.cli.web",
          "sockdoctor.remedy", "sockdoctor.watch.exporter", "sockdoctor.doctor"}


def loaded_after(*argv: str) -> set[str]:
    """The sockdoctor modules a fresh interpreter holds after `sockdoctor ARGV`."""
    code = ("import json, sys\nfrom sockdoctor.cli import cli\n"
            "try:\n    cli.main(sys.argv[1:], prog_name='sockdoctor', standalone_mode=False)\n"
            "finally:\n    print(json.dumps(sorted(m for m in sys.modules"
            " if m.startswith('sockdoctor'))))")
    done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True,
                          timeout=60, check=True)
    return set(json.loads(done.stdout.splitlines()[-1]))


def test_importing_the_command_line_imports_no_command() -> None:
    loaded = loaded_after("--help")
    assert not {m for m in loaded if m.startswith("sockdoctor.cli.")} - {
        "sockdoctor.cli.common", "sockdoctor.cli.complete"}, loaded


@pytest.mark.parametrize("command", ["ls", "kill", "keepalive"])
def test_a_command_imports_its_own_module_and_no_other(command: str) -> None:
    loaded = loaded_after(command, "--help")
    assert f"sockdoctor.cli.{command}" in loaded
    assert not loaded & (OTHERS - {f"sockdoctor.cli.{command}"}), loaded & OTHERS


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_the_table_lists_each_command_as_its_own_help_would(name: str) -> None:
    command = cli.commands[name]
    assert command.name == name and not command.hidden and not command.short_help
    stand_in = click.Command(name, help=COMMANDS[name][2])
    for limit in (20, 45, 74, 200):  # --help shortens to the terminal's width
        assert stand_in.get_short_help_str(limit) == command.get_short_help_str(limit)


def test_the_top_level_help_lists_every_command_in_order() -> None:
    text = cli.get_help(click.Context(cli, info_name="sockdoctor", terminal_width=100))
    section = text.split("\nCommands:\n")[1].split("\n\n")[0]
    listed = [line.split()[0] for line in section.splitlines()
              if line.startswith("  ") and not line.startswith("   ")]
    assert listed == sorted(COMMANDS) == cli.list_commands(click.Context(cli))
