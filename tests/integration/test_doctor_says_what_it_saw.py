"""The doctor on real processes: young leaks, prefork workers, dead descriptors by cause.

- A prefork server (a listener and five forked workers, each accepting one
  connection it never reads) leaks one CLOSE-WAIT per worker: at first the
  doctor notes them and says when they will count; once stuck they are one
  warning with the per-worker split, listed before the FIN-WAIT-2 they cause
  on the client, and its relief command ends all five.
- A client keeps connections a server reset (some with the error unread,
  some read) and connections it shut down without closing: the dead
  descriptors are found with their peer service and the right cause.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import msgspec
import pytest
from leaky import wait_until

from conftest import Remote, Script, allow_stuck_sockets_in
from sockdoctor.doctor import config_for, diagnose
from sockdoctor.inventory import ScanOptions, scan
from sockdoctor.lab.netlab import SERVER_V4, Lab
from sockdoctor.model import Snapshot, TcpState

pytestmark = pytest.mark.root

PREFORK_PORT, RESET_PORT = 7600, 7700
PREFORK = f"""
lst = socket.socket()
lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
lst.bind(("{SERVER_V4}", {PREFORK_PORT}))
lst.listen(16)
workers = []
for _ in range(5):
    pid = os.fork()
    if pid == 0:
        conn, _ = lst.accept()  # one connection each: never read, never closed
        time.sleep(3600)
        os._exit(0)
    workers.append(pid)
emit({{"workers": workers}})
wait()
"""
RESETTER = f"""
import struct
lst = socket.socket()
lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
lst.bind(("{SERVER_V4}", {RESET_PORT}))
lst.listen(16)
emit({{"ready": True}})
for _ in range(8):
    conn, _ = lst.accept()
    how = conn.recv(10)
    if how == b"reset":  # an abortive close, as servers closing idle connections do
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()
emit({{"done": 8}})
wait()
"""


def sockdoctor(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sockdoctor", *args], capture_output=True,
                          text=True, timeout=60)


def both_ends(lab: Lab) -> Snapshot:
    """One snapshot of the server and the client namespace, as `--netns all` would see them."""
    srv, cli = (scan(None, ScanOptions(age=True), netns=h.netns, evidence=True)
                for h in (lab.server, lab.client))
    return msgspec.structs.replace(srv, sockets=srv.sockets + cli.sockets,
                                   namespaces=srv.namespaces + cli.namespaces,
                                   processes={**srv.processes, **cli.processes},
                                   dead_fds=srv.dead_fds + cli.dead_fds)


def holders(lab: Lab) -> set[int]:
    """The processes holding accepted connections on the prefork port."""
    snap = scan(netns=lab.server.netns, owners=True)
    return {o.pid for sk in snap.sockets if sk.local_port == PREFORK_PORT
            and sk.state != TcpState.LISTEN for o in sk.owners}


@pytest.fixture(scope="module")
def prefork(request: pytest.FixtureRequest
            ) -> Iterator[tuple[Lab, list[int], list[socket.socket]]]:
    with Lab("prefork") as lab:
        allow_stuck_sockets_in(request, lab)  # stuck and dead on purpose, in the lab
        server = Script(lab, lab.server, PREFORK)
        workers = server.read()["workers"]  # type: ignore[index]
        peers = [lab.client.run(lambda: socket.create_connection((SERVER_V4, PREFORK_PORT)))
                 for _ in range(5)]
        assert wait_until(lambda: holders(lab) == set(workers)), holders(lab)
        for peer in peers:
            peer.shutdown(socket.SHUT_WR)  # FIN: the workers' side goes to CLOSE-WAIT
        time.sleep(1.2)  # old enough for a note (a tenth of 10 s), younger than 10 s
        try:
            yield lab, workers, peers
        finally:
            for peer in peers:
                peer.close()


def test_young_close_wait_is_a_note_saying_when_it_counts(prefork) -> None:
    lab, workers, _ = prefork
    done = sockdoctor("doctor", "--netns", lab.server.netns)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "healthy: nothing stuck yet (see below)" in done.stdout
    assert "seen, not (yet) a problem:" in done.stdout
    report = json.loads(sockdoctor("doctor", "--netns", lab.server.netns, "--json").stdout)
    [note] = report["notes"]
    assert note.startswith("5 CLOSE-WAIT sockets of ")
    assert f"(5 processes: pid {', '.join(map(str, sorted(workers)[:4]))}, ...)" in note
    assert f"on :{PREFORK_PORT}" in note and "they count as stuck at 10s" in note


def test_five_workers_are_one_warning_listed_before_the_fin_wait_2_they_cause(prefork) -> None:
    lab, workers, _ = prefork
    done = sockdoctor("doctor", "--netns", lab.server.netns, "--stuck-after", "1s", "--json")
    assert done.returncode == 1, done.stderr
    report = json.loads(done.stdout)
    [f] = [f for f in report["findings"] if f["rule"] == "never-closed"]
    assert f["severity"] == "warning" and f["sockets"] == 5
    assert sorted(p["pid"] for p in f["processes"]) == sorted(workers)
    assert sorted(map(int, f["evidence"]["per_process"])) == sorted(workers)
    assert all(f"--pid {pid}" in f["relief"] for pid in workers)
    # both ends in one snapshot: the cause comes first and its relief serves both
    full = diagnose(both_ends(lab), config=config_for("1s"))
    rules = [x.rule for x in full.findings]
    assert rules.index("never-closed") < rules.index("fin-wait-2-pileup")
    fw2 = full.findings[rules.index("fin-wait-2-pileup")]
    assert sorted(fw2.evidence["peer_pids"]) == sorted(workers)  # type: ignore[arg-type]
    assert fw2.relief == f["relief"]


def test_the_relief_command_ends_all_five(prefork, tmp_path) -> None:
    lab, _, _ = prefork
    report = json.loads(sockdoctor("doctor", "--netns", lab.server.netns, "--stuck-after",
                                   "1s", "--json").stdout)
    [f] = [f for f in report["findings"] if f["rule"] == "never-closed"]
    done = sockdoctor(*f["relief_argv"][1:], "--yes", "--audit-log",
                      str(tmp_path / "audit.jsonl"))
    assert "Traceback" not in done.stderr
    left = [sk for sk in scan(netns=lab.server.netns, owners=False).sockets
            if sk.state == TcpState.CLOSE_WAIT and sk.local_port == PREFORK_PORT]
    assert left == [], done.stdout + done.stderr


@pytest.fixture(scope="module")
def dead(request: pytest.FixtureRequest) -> Iterator[tuple[Lab, Remote]]:
    with Lab("deadfd") as lab:
        allow_stuck_sockets_in(request, lab)
        server = Script(lab, lab.server, RESETTER)
        assert server.read() == {"ready": True}
        client = Remote(lab, lab.client, "sdt-pool")
        client(f"""
            kept = []
            for how in [b"reset"] * 6 + [b"bye"] * 2:
                s = socket.create_connection(("{SERVER_V4}", {RESET_PORT}))
                s.sendall(how)
                kept.append(s)
        """)
        assert server.read() == {"done": 8}
        client("""
            time.sleep(0.3)
            for s in kept[4:6]:  # the program reads the reset, and still keeps the fd
                try:
                    s.recv(10)
                except ConnectionResetError:
                    pass
            for s in kept[6:]:  # read the EOF, shutdown() without close()
                s.recv(10)
                s.shutdown(socket.SHUT_RDWR)
            time.sleep(0.3)
        """)
        yield lab, client


def test_reset_dead_descriptors_are_named_with_their_peer_service(dead) -> None:
    lab, client = dead
    snap = scan(netns=lab.client.netns, owners=True, evidence=True)
    mine = [d for d in snap.dead_fds if d.pid == client.pid]
    assert len(mine) == 8
    assert all(d.peer_addr == SERVER_V4 and d.peer_port == RESET_PORT for d in mine)
    assert sum(1 for d in mine if d.error_pending) == 4  # the unread resets
    done = sockdoctor("doctor", "--netns", lab.client.netns, "--json")
    report = json.loads(done.stdout)
    found = {f["evidence"]["cause"]: f for f in report["findings"]
             if f["rule"] == "dead-socket-fds"}
    reset = found["reset"]
    assert reset["sockets"] == 6 and reset["severity"] == "warning"
    assert reset["evidence"]["service"] == f"{SERVER_V4}:{RESET_PORT}"
    assert reset["evidence"]["error_unread"] == 4
    assert reset["peers"] == [f"{SERVER_V4}:{RESET_PORT}"] and reset["ports"] == [RESET_PORT]
    assert "that the peer reset" in reset["title"] and "pre-ping" in reset["fix"]
    shut = found["shutdown"]
    assert shut["sockets"] == 2 and "shutdown()" in shut["explanation"]
