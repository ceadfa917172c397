"""`sockdoctor keepalive` on a live program: vanished peers end by themselves, no restart.

A server program (in the lab's server namespace) holds idle connections,
each read by a thread blocked in recv(). The test makes three of the peers
unreachable (an nftables drop it installs in the client namespace: the
packets leave, nothing comes back, as when a host loses power) and keeps a
fourth one live. Armed with idle 2 s, interval 1 s, count 2 through
pidfd_getfd duplicates, the three are reset by the kernel within ~5 s and
the program sees ETIMEDOUT on them; the live one is armed too, answers the
probes and still gets its echo; the program is the same process throughout.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import leaky
import pytest

from conftest import Script
from sockdoctor import inventory
from sockdoctor.lab.netlab import SERVER_V4, Lab
from sockdoctor.model import TcpState

pytestmark = pytest.mark.root
PORT = 7400

SERVER = f"""
import threading
srv = socket.create_server(("{SERVER_V4}", {PORT}))

def serve(c):
    fd = c.fileno()
    try:
        while data := c.recv(100):
            c.sendall(data)
        emit({{"eof": fd}})
    except OSError as e:
        emit({{"error": errno.errorcode[e.errno], "fd": fd}})
    c.close()

emit({{"ready": True}})
while True:
    c, peer = srv.accept()
    emit({{"fd": c.fileno(), "port": peer[1], "inode": os.fstat(c.fileno()).st_ino}})
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""


def ours(lab: Lab) -> dict[int, int]:
    """peer port -> state of the server's connections on PORT."""
    snap = inventory.scan(netns=lab.server.netns, owners=False)
    return {sk.peer_port: sk.state for sk in snap.sockets
            if sk.local_port == PORT and sk.state != TcpState.LISTEN}


def timers(lab: Lab) -> set[int]:
    snap = inventory.scan(netns=lab.server.netns, owners=False)
    return {sk.timer for sk in snap.sockets if sk.local_port == PORT and sk.peer_port}


def keepalive(lab: Lab, audit: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sockdoctor", "keepalive", "--netns", lab.server.netns, "--port",
         str(PORT), "--idle", "2s", "--interval", "1s", "--count", "2", "--audit-log",
         str(audit), *extra], capture_output=True, text=True, timeout=60,
        stdin=subprocess.DEVNULL)


def unreachable(lab: Lab, ports: list[int]) -> None:
    """Drop everything the server sends to these client ports, in the client namespace."""
    table = f"sdka{os.getpid()}"
    script = (f"add table inet {table}\n"
              f"add chain inet {table} input {{ type filter hook input priority 0; }}\n"
              f"add rule inet {table} input ip saddr {SERVER_V4} tcp sport {PORT} "
              f"tcp dport {{ {', '.join(map(str, ports))} }} drop\n")
    subprocess.run(["ip", "netns", "exec", lab.client.netns, "nft", "-f", "-"], input=script,
                   text=True, check=True, timeout=10)


def test_armed_keepalive_ends_vanished_peers_and_spares_the_live_one(
        lab: Lab, tmp_path: Path) -> None:
    if shutil.which("nft") is None:
        pytest.skip("nft (nftables) is not installed")
    server = Script(lab, lab.server, SERVER)
    assert server.read() == {"ready": True}
    pid = server.pid
    peers, accepted = [], []
    for _ in range(4):  # one at a time: read() waits on the pipe, not on its buffer
        peers.append(leaky.connect(lab, PORT))
        accepted.append(server.read())
    dead = [p.getsockname()[1] for p in peers[:3]]
    live = peers[3]
    audit = tmp_path / "audit.jsonl"

    plan = keepalive(lab, audit)  # no --yes: the plan only
    assert plan.returncode == 0, plan.stderr
    assert plan.stdout.startswith("Plan: keepalive (idle 2s, interval 1s, count 2) on 4 of 4 "
                                  f"selected sockets: would be armed in network namespace "
                                  f"{lab.server.netns}.")
    assert "noticed at most 4s after it last spoke" in plan.stdout
    assert timers(lab) == {0} and not audit.exists()  # nothing changed

    unreachable(lab, dead)
    done = keepalive(lab, audit, "--yes", "--json")
    armed_at = time.monotonic()
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert [o["outcome"] for o in report["outcomes"]] == ["armed"] * 4
    assert all("read back: keepalive on, idle 2s, interval 1s, count 2" in o["detail"]
               and "before: keepalive off" in o["detail"] for o in report["outcomes"])

    # the kernel resets the three within ~5 s, the program sees ETIMEDOUT on each
    errors = [server.read(timeout=10)]
    gone_after = time.monotonic() - armed_at
    while len(errors) < len(dead):  # the rest came together: they may sit in the buffer
        line = server.proc.stdout.readline()  # type: ignore[union-attr]
        errors.append(json.loads(line))
    by_fd = {a["fd"]: a["port"] for a in accepted}
    assert sorted(by_fd[e["fd"]] for e in errors) == sorted(dead)
    assert {e["error"] for e in errors} == {"ETIMEDOUT"}
    assert gone_after < 6, gone_after
    assert leaky.wait_until(lambda: not set(dead) & set(ours(lab)))

    # the live one: armed, answering the probes, still served by the same process
    time.sleep(3)
    assert ours(lab) == {live.getsockname()[1]: TcpState.ESTABLISHED}
    live.sendall(b"still there?")
    assert live.recv(100) == b"still there?"
    assert server.proc.poll() is None and server.pid == pid

    lines = [json.loads(line) for line in audit.read_text().splitlines()]
    assert [line["event"] for line in lines] == ["keepalive"] * 4
    assert {line["outcome"] for line in lines} == {"armed"}
    assert lines[0]["settings"] == {"keepalive": 1, "idle_s": 2, "interval_s": 1, "count": 2}
    for peer in peers:
        peer.close()


def test_sockets_nobody_holds_are_left_alone_with_a_reason(lab: Lab, tmp_path: Path) -> None:
    listener = lab.server.run(lambda: socket.create_server((SERVER_V4, PORT)))
    peer = leaky.connect(lab, PORT)  # never accepted: in the queue, no descriptor
    try:
        done = keepalive(lab, tmp_path / "audit.jsonl", "--yes", "--json")
        assert done.returncode == 1
        (item,) = json.loads(done.stdout)["plan"]["items"]
        assert item["method"] == "" and "no process holds it" in item["why"]
    finally:
        peer.close()
        listener.close()
