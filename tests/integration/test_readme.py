"""The README's first command works as written on a Debian-like machine.

There the system Python is "externally managed" (PEP 668): a plain
`pip install .` is refused. The command must be one line that makes its own
virtual environment; this test runs it word for word on a copy of the
repository with the system python3 and a minimal environment, demo included.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SYSTEM_PYTHON = "/usr/bin/python3"


def readme_command(marker: str) -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    block = re.search(rf"<!-- {marker} -->\n```sh\n(.*?)```", text, re.S)
    assert block is not None, marker
    return block.group(1)


def test_the_first_commands_are_single_lines() -> None:
    main, tests = readme_command("main-command"), readme_command("test-command")
    assert main.count("\n") == 1 and tests.count("\n") == 1
    assert main.startswith("python3 -m venv ") and " demo" in main
    assert "pip install" in main and "--break-system-packages" not in main
    # the test command works where the first one did (an externally managed Python): it
    # uses the first command's .venv, and makes it when it runs alone (CI's fresh clone)
    assert tests.startswith("python3 -m venv .venv && ")
    assert re.fullmatch(r"python3 -m venv \.venv && \.venv/bin/pip install '\.\[test\]' && "
                        r"\.venv/bin/python -m pytest -q\n", tests), tests


def _externally_managed(python: str) -> bool:
    probe = subprocess.run([python, "-c", "import sysconfig, ensurepip; "
                            "print(sysconfig.get_path('stdlib'))"],
                           capture_output=True, text=True)
    return probe.returncode == 0 and os.path.exists(
        os.path.join(probe.stdout.strip(), "EXTERNALLY-MANAGED"))


@pytest.mark.root
@pytest.mark.slow
def test_the_first_command_works_with_an_externally_managed_python(tmp_path: Path) -> None:
    if not os.path.exists(SYSTEM_PYTHON) or not _externally_managed(SYSTEM_PYTHON):
        pytest.skip("no externally managed system python3 with ensurepip here")
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True,
                           check=False).stdout.split(b"\0")
    clone = tmp_path / "clone"
    if any(files):
        for name in filter(None, files):
            src = REPO / name.decode()
            if src.is_file():
                (clone / name.decode()).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, clone / name.decode())
    else:  # not a git checkout: copy the tree
        shutil.copytree(REPO, clone, ignore=shutil.ignore_patterns(
            ".git", ".venv", "__pycache__", "*.egg-info", ".pytest_cache"))
    env = {"HOME": os.environ.get("HOME", "/root"), "PATH": "/usr/bin:/bin:/usr/sbin:/sbin",
           "LANG": "C.UTF-8"}
    done = subprocess.run(["bash", "-c", readme_command("main-command")], cwd=clone, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # the demo exits 0 only when the cure worked and the server still serves
    assert "a new client was served" in done.stdout and "Lab removed." in done.stdout
    assert (clone / ".venv" / "bin" / "sockdoctor").exists()
    # then the test command, word for word, in the same clone; pytest only collects
    # (PYTEST_ADDOPTS): the suite itself is what runs this test
    done = subprocess.run(["bash", "-c", readme_command("test-command")], cwd=clone,
                          env={**env, "PYTEST_ADDOPTS": "--collect-only -q -p no:cacheprovider"},
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # `--collect-only -q` lists each test file with its number of tests
    assert re.search(r"^tests/unit/test_help\.py: \d+$", done.stdout, re.M), done.stdout[-2000:]
