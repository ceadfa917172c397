"""Descriptors freed honestly (docs/reliability.md, "Descriptors freed honestly").

Before the fix, `kill --method close` on the CLOSE-WAIT of a stopped event-loop
server left placeholders the loop never released (its epoll registration
went with the old socket): its descriptors grew with every round, the doctor
reported the placeholders as dead-socket-fds, and `kill --dead-fds` said
"3 of 3 gone", exit 0, on every run while nothing changed.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
from pathlib import Path

import pytest
from hostile import run

from conftest import Script
from sockdoctor import inventory
from sockdoctor.lab.netlab import Lab
from sockdoctor.model import TcpState

pytestmark = pytest.mark.root

# An event loop (like redis): every client in one epoll set; on EOF or an error it
# unregisters and closes the client. `forget` makes it unregister without closing.
LOOP = """
import threading
ls = socket.create_server(("127.0.0.1", 0))
ls.setblocking(False)
ep = select.epoll()
ep.register(ls.fileno(), select.EPOLLIN)
conns, forget = {}, [False]

def loop():
    while True:
        for fd, _ in ep.poll():
            if fd == ls.fileno():
                c, _ = ls.accept()
                conns[c.fileno()] = c
                ep.register(c.fileno(), select.EPOLLIN)
                continue
            try:
                data = conns[fd].recv(100)
            except OSError:
                data = b""
            if not data:
                ep.unregister(fd)
                if not forget[0]:
                    conns.pop(fd).close()

threading.Thread(target=loop, daemon=True).start()
emit({"port": ls.getsockname()[1]})
while True:
    cmd = wait().strip()
    if cmd == "forget":
        forget[0] = True
    emit({"clients": len(conns), "fds": len(os.listdir("/proc/self/fd"))})
"""


class EventLoop:
    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.script = Script(lab, lab.server, LOOP)
        self.port: int = self.script.read()["port"]  # type: ignore[index]

    def ask(self, cmd: str = "count") -> dict:
        self.script.send(cmd)
        return self.script.read()  # type: ignore[return-value]

    def clients(self, n: int) -> list[socket.socket]:
        made = [self.lab.server.run(lambda: socket.create_connection(("127.0.0.1", self.port)))
                for _ in range(n)]
        assert wait_for(lambda: self.ask()["clients"] == n)
        return made

    def dead_fds(self) -> list:
        snap = inventory.scan(netns=self.lab.server.netns, evidence=True)
        return [d for d in snap.dead_fds if d.pid == self.script.pid]

    def close_waits(self) -> int:
        snap = inventory.scan(netns=self.lab.server.netns, owners=False)
        return sum(1 for sk in snap.sockets if sk.state == TcpState.CLOSE_WAIT
                   and sk.local_port == self.port)


def wait_for(check, limit: float = 10.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + limit
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def stopped(pid: int) -> bool:
    """Every thread of the process is in the stopped state."""
    tasks = Path(f"/proc/{pid}/task")
    states = [(t / "stat").read_text().rsplit(")", 1)[1].split()[0] for t in tasks.iterdir()]
    return all(state == "T" for state in states)


def kill(lab: Lab, tmp_path: Path, *args: str) -> tuple[int, dict]:
    done = run([sys.executable, "-m", "sockdoctor", "kill", "--netns", lab.server.netns,
                *args, "--yes", "--json", "--audit-log", str(tmp_path / "audit.jsonl")])
    return done.returncode, json.loads(done.stdout) if done.stdout.strip() else {}


def close_round(loop: EventLoop, tmp_path: Path, n: int) -> None:
    """n clients; the server stops; they leave; close their CLOSE-WAIT; it resumes."""
    clients = loop.clients(n)
    os.kill(loop.script.pid, signal.SIGSTOP)
    assert wait_for(lambda: stopped(loop.script.pid))  # before a client leaves
    try:
        for c in clients:
            c.close()
        assert wait_for(lambda: loop.close_waits() == n), loop.close_waits()
        rc, report = kill(loop.lab, tmp_path, "--port", str(loop.port), "--method", "close")
        assert rc == 0 and [o["outcome"] for o in report["outcomes"]] == ["closed"] * n
    finally:
        os.kill(loop.script.pid, signal.SIGCONT)


def test_an_event_loop_releases_the_placeholders_and_nothing_is_reported(
        solo: Lab, tmp_path: Path) -> None:
    loop = EventLoop(solo)
    baseline = loop.ask()["fds"]
    for _ in range(3):
        close_round(loop, tmp_path, 3)
        assert wait_for(lambda: loop.ask() == {"clients": 0, "fds": baseline}), loop.ask()
    assert loop.dead_fds() == []
    _rc, report = kill(solo, tmp_path, "--dead-fds", "--pid", str(loop.script.pid))
    assert report["plan"]["items"] == [] and "3 of 3" not in json.dumps(report)


def test_a_forgotten_placeholder_is_recognisable_and_never_counted_as_freed(
        solo: Lab, tmp_path: Path) -> None:
    loop = EventLoop(solo)
    loop.ask("forget")  # the loop now forgets what it unregisters: real ghosts
    close_round(loop, tmp_path, 3)
    time.sleep(0.5)
    held = loop.ask()
    assert held["clients"] == 3  # the program still holds the numbers: said in the plan
    names = Path(f"/proc/{loop.script.pid}/net/unix").read_text()
    assert names.count(f"@sockdoctor-closed:{loop.script.pid}:") == 3
    assert loop.dead_fds() == []  # not a leak of TCP sockets
    for _ in range(2):
        _rc, report = kill(solo, tmp_path, "--dead-fds", "--pid", str(loop.script.pid))
        assert report["plan"]["items"] == []
        assert not [o for o in report.get("outcomes", []) if o["outcome"] == "closed"]
    assert loop.ask() == held  # nothing changed, and nothing claimed it did
