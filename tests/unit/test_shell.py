"""Shell completion (click's protocol, as bash, zsh and fish call it) and the man page."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from click.testing import CliRunner

from sockdoctor.cli import cli
from sockdoctor.cli.shell import COMPLETE_VAR, man_page

ROOT = Path(__file__).resolve().parents[2]


def complete(shell: str, words: str, cword: int | None = None) -> list[str]:
    """What the shell's completion function gets back for the command line `words`."""
    env = {**os.environ, COMPLETE_VAR: f"{shell}_complete", "COMP_WORDS": words,
           "COMP_CWORD": str(len(words.split()) - (0 if words.endswith(" ") else 1))
           if cword is None else str(cword)}
    if shell == "fish":
        env["COMP_CWORD"] = "" if words.endswith(" ") else words.split()[-1]
    done = subprocess.run([sys.executable, "-m", "sockdoctor"], env=env, capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 0 and not done.stderr, done.stderr
    lines = [line for line in done.stdout.splitlines() if line]
    if shell == "zsh":  # type, value, help: three lines each
        return [lines[i + 1] for i in range(0, len(lines), 3)]
    # bash: type,value; fish: type,value<TAB>help
    return [line.split(",", 1)[1].split("\t")[0] for line in lines]


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_of_commands_states_and_scenarios(shell: str) -> None:
    assert {"ls", "lab"} <= set(complete(shell, "sockdoctor l"))
    assert complete(shell, "sockdoctor ls --state close-") == ["close-wait"]
    assert complete(shell, "sockdoctor kill --state fin") == ["fin-wait-1", "fin-wait-2"]
    assert "forgot-close" in complete(shell, "sockdoctor lab run for")
    assert {"all", "host", "self"} <= set(complete(shell, "sockdoctor ls -N "))
    assert "--older-than" in complete(shell, "sockdoctor doctor --ol")
    assert complete(shell, "sockdoctor sl --j") == []  # a mistyped command: nothing, quietly


def test_completion_scripts_name_the_protocol() -> None:
    for shell in ("bash", "zsh", "fish"):
        done = CliRunner().invoke(cli, ["completion", shell])
        assert done.exit_code == 0 and COMPLETE_VAR in done.output, done.output
    bash = CliRunner().invoke(cli, ["completion", "bash"]).output
    assert "complete -o nosort -F _sockdoctor_completion sockdoctor" in bash
    # the script works in bash itself: sourcing it registers the function
    done = subprocess.run(["bash", "-c", f"{bash}\ncomplete -p sockdoctor"],
                          capture_output=True, text=True, timeout=30)
    assert "_sockdoctor_completion" in done.stdout, done.stderr


def test_man_page_is_the_help_text_and_is_shipped() -> None:
    page = man_page(cli)
    assert page.startswith(".TH SOCKDOCTOR 1")
    for section in (".SH NAME", ".SH SYNOPSIS", ".SH COMMANDS", ".SH EXIT STATUS"):
        assert section in page
    assert r"sockdoctor ls \-tlnp" in page and ".SS sockdoctor lab run" in page
    # no text line that roff would take for a request
    assert not [line for line in page.splitlines()
                if line.startswith((".", "'")) and line.split()[0] not in
                (".TH", ".SH", ".SS", ".nf", ".fi")]
    shipped = ROOT / "man" / "sockdoctor.1"
    assert shipped.read_text() == page, "run: sockdoctor man > man/sockdoctor.1"
    done = CliRunner().invoke(cli, ["man"])
    assert done.exit_code == 0 and done.output == page


def _editable() -> bool:
    direct = metadata.distribution("sockdoctor").read_text("direct_url.json") or "{}"
    return bool(json.loads(direct).get("dir_info", {}).get("editable"))


@pytest.mark.skipif(_editable(), reason="an editable install (pip install -e) installs no "
                                        "data files; the README's `pip install .` does")
def test_pip_install_puts_the_man_page_in_share_man() -> None:
    page = Path(sys.prefix) / "share" / "man" / "man1" / "sockdoctor.1"
    assert page.is_file() and page.read_text() == man_page(cli)
