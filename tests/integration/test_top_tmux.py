"""`sockdoctor top` in a real terminal: tmux runs it, capture-pane reads the screen.

A leak grows in a namespace pair made here: `leaker` (server side) keeps ten
idle connections and every accepted one, and the client in the other
namespace hangs up a new connection every 0.3 s, so the server's CLOSE-WAIT
group grows while its ESTAB group stays at ten. That makes the three sorts
disagree: by count the larger group leads (ESTAB until CLOSE-WAIT passes ten), by growth
CLOSE-WAIT, by age ESTAB (its sockets are older).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import Script
from sockdoctor.lab.netlab import Lab

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")

SERVER = """
open("/proc/self/comm", "w").write("leaker")
srv = socket.create_server(("0.0.0.0", 7200), backlog=128)
emit({"ready": os.getpid()})
held = []
while True:  # accept and keep every connection: the ones whose client left stay CLOSE-WAIT
    held.append(srv.accept()[0])
"""
CLIENT = """
idle = [socket.create_connection(("10.77.0.1", 7200)) for _ in range(10)]
emit({"ready": True})
time.sleep(1.5)  # the idle ones are clearly the oldest
while True:
    socket.create_connection(("10.77.0.1", 7200)).close()
    time.sleep(0.3)
"""


class Screen:
    """A tmux session running one command; read with capture-pane, type with send-keys."""

    def __init__(self, command: str, width: int = 180, height: int = 45) -> None:
        self.name = f"sdtop-{os.getpid()}-{time.monotonic_ns() % 100000}"
        subprocess.run(["tmux", "new-session", "-d", "-s", self.name, "-x", str(width), "-y",
                        str(height), command], check=True,
                       env={**os.environ, "TERM": "xterm-256color"})

    def text(self) -> str:
        done = subprocess.run(["tmux", "capture-pane", "-p", "-t", self.name],
                              capture_output=True, text=True)
        return done.stdout

    def keys(self, *keys: str) -> None:
        subprocess.run(["tmux", "send-keys", "-t", self.name, *keys], check=True)

    def wait_for(self, check, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            screen = self.text()
            if check(screen):
                return screen
            if time.monotonic() > deadline:
                raise AssertionError(f"screen never matched:\n{screen}")
            time.sleep(0.2)

    def close(self) -> None:
        subprocess.run(["tmux", "kill-session", "-t", self.name], capture_output=True)


def rows(screen: str, comm: str) -> list[tuple[int, str]]:
    """(count, state) of each group row of `comm`, top to bottom."""
    out = []
    for line in screen.splitlines():
        # +LAST and +START (a narrow screen hides +START)
        m = re.match(r"\W*(\d+)(?:\s+[+-]?\d+){1,2}\s+(\S+)\s+" + re.escape(comm), line)
        if m:
            out.append((int(m[1]), m[2]))
    return out


def count_of(screen: str, comm: str, state: str) -> int:
    return next((n for n, s in rows(screen, comm) if s == state), 0)


@pytest.mark.root
def test_top_shows_the_leak_growing_sorts_filters_and_quits(lab: Lab, tmp_path: Path) -> None:
    server = Script(lab, lab.server, SERVER)
    pid = server.read()["ready"]  # type: ignore[index]
    Script(lab, lab.client, CLIENT).read()
    comm = f"leaker({pid})"
    rc = tmp_path / "rc"
    top = " ".join(shlex.quote(a) for a in (sys.executable, "-m", "sockdoctor", "top",
                                            "--netns", lab.server.netns, "--interval", "0.5s"))
    screen = Screen(f"{top}; echo $? > {rc}")
    try:
        first = screen.wait_for(lambda s: count_of(s, comm, "CLOSE-WAIT") >= 2)
        assert count_of(first, comm, "ESTAB") == 10
        # by count, the larger group first (on a slow start CLOSE-WAIT may already lead)
        counts = [n for n, _ in rows(first, comm)]
        assert "sort: count" in first and counts == sorted(counts, reverse=True)
        grown = screen.wait_for(lambda s: count_of(s, comm, "CLOSE-WAIT")
                                >= count_of(first, comm, "CLOSE-WAIT") + 3)
        assert lab.server.netns in grown

        screen.keys("g")  # growth: the growing CLOSE-WAIT group comes first
        by_growth = screen.wait_for(lambda s: "sort: growth" in s)
        assert rows(by_growth, comm)[0][1] == "CLOSE-WAIT"
        screen.keys("a")  # age: the idle ESTAB connections are the oldest
        by_age = screen.wait_for(lambda s: "sort: age" in s)
        assert rows(by_age, comm)[0][1] == "ESTAB"

        screen.keys("/")
        screen.wait_for(lambda s: "filter, as ss" in s)  # the input field is open
        screen.keys("state close-wait", "Enter")
        filtered = screen.wait_for(lambda s: "filter: state close-wait" in s)
        assert [state for _, state in rows(filtered, comm)] == ["CLOSE-WAIT"]
        screen.keys("/")
        screen.wait_for(lambda s: re.search(r"▊\s+state close-wait", s))
        # the old text is selected: typing replaces it; a bad filter is a message, no crash
        screen.keys("state nonsense", "Enter")
        screen.wait_for(lambda s: "bad filter" in s)
        screen.keys("Escape")  # (what follows an Escape too closely reads as Alt+key)
        screen.wait_for(lambda s: "q Quit" in s)  # the footer is back: the field is closed

        screen.keys("r")  # the relief command is printed, not run
        relief = screen.wait_for(lambda s: "relief (not run" in s)
        assert f"--netns {lab.server.netns}" in relief and "--port 7200" in relief
        assert count_of(screen.text(), comm, "CLOSE-WAIT") >= count_of(grown, comm,
                                                                        "CLOSE-WAIT")

        screen.keys("Enter")  # the group's sockets
        inside = screen.wait_for(lambda s: "sockets: CLOSE-WAIT" in s)
        assert "10.77.0.2:" in inside and f"{pid}/fd" in inside
        screen.keys("Escape")
        screen.wait_for(lambda s: "sockets: CLOSE-WAIT" not in s)

        screen.keys("q")
        deadline = time.monotonic() + 20
        while not rc.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert rc.read_text().strip() == "0"
    finally:
        screen.close()


@pytest.mark.root
def test_top_once_prints_one_frame_without_a_terminal(lab: Lab) -> None:
    server = Script(lab, lab.server, SERVER)
    pid = server.read()["ready"]  # type: ignore[index]
    Script(lab, lab.client, CLIENT).read()
    time.sleep(2.5)  # the client waits 1.5 s, then hangs up one connection every 0.3 s
    done = subprocess.run([sys.executable, "-m", "sockdoctor", "top", "--netns",
                           lab.server.netns], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "COUNT" in done.stdout and "findings" in done.stdout
    assert count_of(done.stdout, f"leaker({pid})", "ESTAB") == 10
    assert count_of(done.stdout, f"leaker({pid})", "CLOSE-WAIT") >= 2


def top_in(lab: Lab, tmp_path: Path, width: int = 180, height: int = 45
           ) -> tuple[Screen, str, Path]:
    """top on the leaking lab's server namespace in a tmux screen; (screen, comm, rc file)."""
    server = Script(lab, lab.server, SERVER)
    pid = server.read()["ready"]  # type: ignore[index]
    Script(lab, lab.client, CLIENT).read()
    rc = tmp_path / "rc"
    top = " ".join(shlex.quote(a) for a in (sys.executable, "-m", "sockdoctor", "top",
                                            "--netns", lab.server.netns, "--interval", "0.5s",
                                            "--doctor-every", "1"))
    return Screen(f"{top}; echo $? > {rc}", width, height), f"leaker({pid})", rc


@pytest.mark.root
def test_top_help_screen_lists_every_key(lab: Lab, tmp_path: Path) -> None:
    from sockdoctor.render.topframe import KEYS

    screen, comm, _ = top_in(lab, tmp_path)
    try:
        # Enter and ? are in the footer
        screen.wait_for(lambda s: count_of(s, comm, "ESTAB") == 10 and "? Help" in s
                        and "⏎ Sockets" in s)
        for key in ("?", "h", "F1"):
            screen.keys(key)
            shown = screen.wait_for(lambda s: "sockdoctor top: keys" in s)
            for keys, what in KEYS:
                assert re.search(rf"{re.escape(keys)}\s+{re.escape(what[:40])}", shown), keys
            screen.keys("Escape")
            screen.wait_for(lambda s: "sockdoctor top: keys" not in s and "q Quit" in s)
    finally:
        screen.close()


def columns_of(screen: str) -> list[str]:
    header = next(line for line in screen.splitlines() if " COUNT " in f" {line} ")
    return header.split()


@pytest.mark.root
def test_top_fits_80x24(lab: Lab, tmp_path: Path) -> None:
    """At 80x24 the essential columns all show, the findings leave room for the table."""
    screen, comm, _ = top_in(lab, tmp_path, 80, 24)
    try:
        shown = screen.wait_for(lambda s: count_of(s, comm, "CLOSE-WAIT") >= 2
                                and "findings: the doctor has not run" not in s)
        lines = shown.splitlines()
        assert len(lines) <= 24 and all(len(line) <= 80 for line in lines)
        assert columns_of(shown)[:1] == ["COUNT"]
        for essential in ("STATE", "PROCESS", "SERVICE", "OLDEST", "NETNS"):
            assert essential in columns_of(shown), (essential, shown)
        # the cells are there, not cut off: the server's port and the netns (maybe elided)
        row = next(line for line in lines if comm in line and "ESTAB" in line)
        assert ":7200" in row and re.search(r"\d+(ms|s|m)\s", row + " ")
        ns = lab.server.netns
        assert ns in row or (ns[:5] in row and ns[-4:] in row and "…" in row)
        # the listener has no age
        listen = next(line for line in lines if comm in line and "LISTEN" in line)
        assert re.search(r":7200\s+-\s", listen), listen
        table_rows = [line for line in lines if comm in line]
        assert len(table_rows) >= 3  # LISTEN, ESTAB, CLOSE-WAIT all visible
        screen.keys("d")  # findings hidden: their pane and its border go
        screen.wait_for(lambda s: "findings:" not in s and "CRITICAL" not in s
                        and "WARNING" not in s)
    finally:
        screen.close()
