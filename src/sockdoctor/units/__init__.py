"""The systemd units of the exporter and the reaper, for the installation at hand.

The unit files ship inside the package (so an installed sockdoctor can print
them) with `@SOCKDOCTOR@` where the program goes; deploy/systemd/ holds the
same units printed for the documented install, /opt/sockdoctor.
"""

from __future__ import annotations

import os
import sys
from importlib import resources

__all__ = ["DOCUMENTED", "NAMES", "PLACEHOLDER", "exec_words", "this_program", "unit_text"]

NAMES = ("exporter", "reap")
PLACEHOLDER = "@SOCKDOCTOR@"
DOCUMENTED = "/opt/sockdoctor/bin/sockdoctor"  # docs/exporter.md, "Deploy"


def this_program() -> list[str]:
    """The command that runs this installation: the console script's real path,
    or this interpreter with `-m sockdoctor` when run that way."""
    script = sys.argv[0] if sys.argv else ""
    if os.path.basename(script) == "sockdoctor" and os.access(script, os.X_OK):
        # real path: a symlink in /usr/local/bin may be removed or repointed later
        return [os.path.realpath(script)]
    # not realpath: a venv's python is a symlink whose target has no venv
    return [os.path.abspath(sys.executable), "-m", "sockdoctor"]


def exec_words(program: list[str]) -> str:
    """The program as the start of a systemd ExecStart= line (quoted where needed)."""
    return " ".join(_quote(word) for word in program)


def unit_text(name: str, program: list[str]) -> str:
    """The unit file of `name` (exporter or reap) running `program`."""
    template = resources.files(__package__).joinpath(f"sockdoctor-{name}.service")
    return template.read_text(encoding="utf-8").replace(PLACEHOLDER, exec_words(program))


def _quote(word: str) -> str:
    """systemd's syntax: % and $ are specifiers and variables; blanks need quotes."""
    word = word.replace("%", "%%").replace("$", "$$")
    if any(c in word for c in " \t\"'\\;"):
        return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return word
