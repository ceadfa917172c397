"""`sockdoctor top` in a real terminal: tmux runs it, capture-pane reads the screen.

A leak grows in a namespace pair made here: `leaker` (server side) keeps ten
idle connections and every accepted one, and the client in the other
namespace hangs up a new connection every 0.3 s, so the server's CLOSE-WAIT
group grows while its ESTAB group stays at ten. That makes the three sorts
disagree: by count ESTAB leads (until CLOSE-WAIT passes ten), by growth
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

    def __init__(self, command: str) -> None:
        self.name = f"sdtop-{os.getpid()}-{time.monotonic_ns() % 100000}"
        subprocess.run(["tmux", "new-session", "-d", "-s", self.name, "-x", "180", "-y", "45",
                        command], check=True, env={**os.environ, "TERM": "xterm-256color"})

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
        m = re.match(r"\W*(\d+)\s+[+-]?\d+\s+[+-]?\d+\s+(\S+)\s+" + re.escape(comm), line)
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
        assert "sort: count" in first and rows(first, comm)[0] == (10, "ESTAB")
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
