"""Shared pieces of the adversarial suite: a server holding many CLOSE-WAIT, kill runs,
audit logs read strictly.

Everything lives in the namespace of the test's own lab (conftest's `solo`);
the server program runs there and keeps what it accepted open, so every
connection its clients closed is a CLOSE-WAIT it owns.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from conftest import Script
from sockdoctor import inventory
from sockdoctor.lab.netlab import Lab
from sockdoctor.model import TcpState

# Holds n CLOSE-WAIT on one port (its clients connect and close at once).
HOLDER = """
import resource
hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
ls = socket.socket()
ls.bind(("127.0.0.1", 0))
ls.listen(4096)
port = ls.getsockname()[1]
held, peers = [], []
emit({"port": port})
while True:
    n = int(wait())
    for _ in range(n):
        c = socket.create_connection(("127.0.0.1", port))
        held.append(ls.accept()[0])
        peers.append(c)
    for c in peers:
        c.close()
    peers.clear()
    emit({"held": len(held)})
"""


class Holder:
    """The server program; `leak(n)` makes n more CLOSE-WAIT."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.script = Script(lab, lab.server, HOLDER)
        self.port: int = self.script.read()["port"]  # type: ignore[index]

    @property
    def pid(self) -> int:
        return self.script.pid

    def leak(self, n: int) -> set[int]:
        before = self.close_waits()
        self.script.send(str(n))
        self.script.read(60)
        deadline = time.monotonic() + 20
        while len(self.close_waits() - before) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        made = self.close_waits() - before
        assert len(made) == n, f"made {len(made)} CLOSE-WAIT of {n}"
        return made

    def close_waits(self) -> set[int]:
        """Cookies of this server's CLOSE-WAIT sockets now."""
        snap = inventory.scan(netns=self.lab.server.netns, owners=False)
        return {sk.cookie for sk in snap.sockets
                if sk.state == TcpState.CLOSE_WAIT and sk.local_port == self.port}


def kill_argv(lab: Lab, port: int, audit: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "sockdoctor", "kill", "--netns", lab.server.netns,
            "--port", str(port), "--yes", "--max", "100000", "--audit-log", str(audit),
            *extra]


def run(argv: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def audit_lines(path: Path, event: str | None = None) -> list[dict[str, Any]]:
    """Every line of the log, each a whole JSON object (a partial line fails the test)."""
    if not path.exists():
        return []
    data = path.read_bytes()
    assert not data or data.endswith(b"\n"), f"the log ends in a partial line: {data[-80:]!r}"
    lines = [json.loads(line) for line in data.splitlines()]
    return [line for line in lines if event is None or line["event"] == event]


def done_cookies(path: Path) -> list[int]:
    """Cookies of the sockets the log says this run ended itself."""
    return [line["cookie"] for line in audit_lines(path, "act") if line["action"] == "done"]
