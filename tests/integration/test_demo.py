"""`sockdoctor demo`, the README's first command, end to end."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import pytest


def _demo(*args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "sockdoctor", "demo", *args],
                          capture_output=True, text=True, timeout=120)
    return proc, time.monotonic() - started


@pytest.mark.root
def test_demo_reproduces_diagnoses_cures_and_cleans_up() -> None:
    before = set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else set()
    proc, seconds = _demo()
    out = proc.stdout
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert seconds < 30
    steps = re.findall(r"^== (\d)\.", out, re.MULTILINE)
    assert steps == ["0", "1", "2", "3", "4", "5"]
    assert re.search(r"^\s+5\s+CLOSE-WAIT\s+echo-server\(\d+\)\s+:8000", out, re.MULTILINE)
    assert re.search(r"WARNING\s+never-closed\s+echo-server", out)
    assert "relieve now: sockdoctor kill" in out
    assert "Nothing was changed. Run again with --yes" in out
    assert "Result: 5 of 5 gone (5 closed)." in out
    assert "a new client was served" in out
    netns = re.search(r"namespace (sdlab-forgot-close-[\w-]+-srv)", out).group(1)
    after = set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else set()
    # (other runs of the suite may build labs of their own meanwhile: only ours count)
    stem = netns.removesuffix("-srv")
    assert before.isdisjoint({netns, f"{stem}-cli"}) and not after & {netns, f"{stem}-cli"}


def test_unknown_scenario_is_one_sentence_and_exit_3() -> None:
    proc, _ = _demo("--scenario", "no-such-bug")
    assert proc.returncode == 3
    assert proc.stderr.startswith("sockdoctor: no lab scenario called 'no-such-bug'")
    assert "Traceback" not in proc.stderr and proc.stdout == ""
