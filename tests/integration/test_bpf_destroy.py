"""destroy through the kernel engine: bpf_sock_destroy() on exactly the planned sockets.

One program in a namespace of the test's own holds 12 CLOSE-WAIT connections
(its peers half-closed them), 2 established ones and a listener. The plan
names 6 of the CLOSE-WAIT ones; one of those is replaced after planning by a
new connection with the same 4-tuple. Applied, the other 5 are destroyed by
the BPF program (the audit says so, the verification finds them gone), and
everything else, the replacement included, is as it was.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import msgspec
import pytest

import sockdoctor
from bpfengine import PAIRS, need_engine
from conftest import Remote
from sockdoctor.lab.netlab import Lab
from sockdoctor.linux import bpf
from sockdoctor.linux import netns as netns_mod
from sockdoctor.linux.bpf import destroy as bpf_destroy
from sockdoctor.linux.bpf import planned
from sockdoctor.model import Socket, TcpState

pytestmark = pytest.mark.root

MAKE = PAIRS + """
half = [pair() for _ in range(12)]
for c, _ in half: c.shutdown(socket.SHUT_WR)     # their server ends go CLOSE-WAIT
whole = [pair() for _ in range(2)]
result = [port, [c.getsockname()[1] for c, _ in half]]
"""

# The planned connection at index I is reset and made again from the same port.
REPLACE = """
import struct
c, a = half[I]
a.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)); a.close()
time.sleep(0.2); c.close()
half[I] = pair(SPORT); half[I][0].shutdown(socket.SHUT_WR)
result = 1
"""


def wait_close_wait(ns: str, port: int, count: int) -> list[Socket]:
    for _ in range(100):
        snap = sockdoctor.scan(f"state close-wait sport = :{port}", netns=ns)
        if len(snap.sockets) == count:
            return snap.sockets
        time.sleep(0.05)
    raise AssertionError("the connections did not reach CLOSE-WAIT")


def identities(ns: str, port: int) -> set[tuple[int, int, int, int]]:
    """(cookie, local port, peer port, state) of every socket of the test's program."""
    snap = sockdoctor.scan(f"sport = :{port} or dport = :{port}", netns=ns, owners=False)
    return {(sk.cookie, sk.local_port, sk.peer_port, sk.state) for sk in snap.sockets}


@pytest.mark.parametrize(("engine", "via"), [("bpf", "bpf_sock_destroy"),
                                             ("c", "SOCK_DESTROY")])
def test_destroy_ends_exactly_the_planned_sockets(solo: Lab, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  engine: str, via: str) -> None:
    """The same plan, the same result, with the engine and with it forced off."""
    if engine == "bpf":
        need_engine()
    monkeypatch.setenv("SOCKDOCTOR_ENGINE", engine)
    ns = str(solo.server.inode())
    remote = Remote(solo, solo.server, "bpfdestroy")
    port, sports = remote(MAKE)  # type: ignore[misc]
    waiting = wait_close_wait(ns, port, 12)
    chosen = sorted(waiting, key=lambda sk: sk.peer_port)[:6]
    snap = sockdoctor.scan(f"state close-wait sport = :{port}", netns=ns)
    snap = msgspec.structs.replace(snap, sockets=[sk for sk in snap.sockets
                                                 if sk.cookie in {c.cookie for c in chosen}])
    plan = sockdoctor.plan_kill(snap, sockdoctor.KillPolicy(methods=("destroy",)),
                                host=sockdoctor.host_facts())
    assert [i.method for i in plan.items] == ["destroy"] * 6

    replaced = chosen[0]
    remote(REPLACE.replace("I]", f"{sports.index(replaced.peer_port)}]")
           .replace("SPORT", str(replaced.peer_port)))
    wait_close_wait(ns, port, 12)
    before = identities(ns, port)
    audit = tmp_path / "audit.jsonl"
    report = sockdoctor.apply_plan(plan, audit_log=str(audit))

    after = identities(ns, port)
    gone = {sk.cookie for sk in chosen[1:]}
    peers = {sk.peer_port for sk in chosen[1:]}  # their client ends, reset by the destroy
    assert {i for i in before - after if i[0] not in gone} \
        == {i for i in before if i[1] in peers}
    assert {i[0] for i in before - after} >= gone
    assert after == {i for i in before if i[0] not in gone and i[1] not in peers}
    assert replaced.cookie not in {i[0] for i in before}
    assert any(i[2] == replaced.peer_port and i[3] == TcpState.CLOSE_WAIT for i in after)
    by_cookie = {o.label: o for o in report.outcomes}
    assert len(by_cookie) == 6
    assert sorted(o.outcome for o in report.outcomes) == ["already-gone"] + ["closed"] * 5
    acts = [json.loads(line) for line in audit.read_text().splitlines()]
    done = [a for a in acts if a["event"] == "act" and a["action"] == "done"]
    assert sorted(a["cookie"] for a in done) == sorted(gone)
    assert all(a["detail"] == f"destroyed ({via})" for a in done)
    assert len([a for a in acts if a["event"] == "verify"]) == 6
    assert len(after) == 1 + 2 * 14 - 2 * 5  # the listener, the other 9 pairs


def test_a_changed_tuple_is_refused_in_the_kernel(solo: Lab,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Same cookie, another 4-tuple (a stale plan entry): ESTALE, the socket untouched."""
    need_engine()
    monkeypatch.setenv("SOCKDOCTOR_ENGINE", "bpf")
    ns = str(solo.server.inode())
    remote = Remote(solo, solo.server, "bpfstale")
    port, _ = remote(MAKE)  # type: ignore[misc]
    target = wait_close_wait(ns, port, 12)[0]
    wrong = msgspec.structs.replace(target, peer_port=target.peer_port ^ 1)
    ref = netns_mod.NsRef(inode=solo.server.inode(), name=solo.server.netns, kind="named",
                          path=f"/run/netns/{solo.server.netns}")
    codes = netns_mod.run_in(ref, lambda: bpf_destroy.destroy([wrong]))
    assert codes == [(116, TcpState.CLOSE_WAIT)]  # ESTALE, the state it met
    assert (target.cookie, port, target.peer_port, TcpState.CLOSE_WAIT) \
        in identities(ns, port)


def test_a_socket_ended_by_another_hand_is_left_in_the_kernel(
        solo: Lab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Planned ESTABLISHED, then its program sent its FIN (FIN-WAIT-2): the same pass that
    destroys the others refuses it under its lock (EALREADY), with no look beforehand."""
    need_engine()
    monkeypatch.setenv("SOCKDOCTOR_ENGINE", "bpf")
    ns = str(solo.server.inode())
    remote = Remote(solo, solo.server, "bpfmoved")
    port, _ = remote(MAKE)  # type: ignore[misc]
    wait_close_wait(ns, port, 12)
    snap = sockdoctor.scan(f"state established sport = :{port}", netns=ns)
    assert len(snap.sockets) == 2
    plan = sockdoctor.plan_kill(snap, sockdoctor.KillPolicy(
        states=1 << TcpState.ESTABLISHED, methods=("destroy",)), host=sockdoctor.host_facts())
    assert [i.method for i in plan.items] == ["destroy"] * 2
    moved = plan.items[0].socket
    assert moved is not None
    remote(f"[a for c, a in whole if a.getpeername()[1] == {moved.peer_port}][0]"
           ".shutdown(socket.SHUT_WR); time.sleep(0.2); result = 1")
    report = sockdoctor.apply_plan(plan, audit_log=str(tmp_path / "audit.jsonl"))

    assert [o.outcome for o in report.outcomes] == ["already-gone", "closed"]
    assert report.outcomes[0].detail.startswith("already FIN-WAIT-2 when we came")
    left = {(sk.cookie, sk.state) for sk in identities_now(ns, port)}
    assert (moved.cookie, TcpState.FIN_WAIT2) in left  # untouched
    acts = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()
            if '"act"' in line]
    assert [(a["cookie"], a["action"]) for a in acts] == \
        [(moved.cookie, "already-gone"), (plan.items[1].socket.cookie, "done")]  # type: ignore[union-attr]
    assert acts[1]["detail"] == "destroyed (bpf_sock_destroy)"


def identities_now(ns: str, port: int) -> list[Socket]:
    return sockdoctor.scan(f"sport = :{port}", netns=ns, owners=False).sockets


def test_the_destroy_object_is_its_own_probe(solo: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    """A destroy loads destroy.bpf.o only (not the engine's probe program first); a load
    the kernel refuses is remembered, and the caller's SOCK_DESTROY path acts instead."""
    need_engine()
    monkeypatch.setenv("SOCKDOCTOR_ENGINE", "bpf")
    ns = str(solo.server.inode())
    remote = Remote(solo, solo.server, "bpfownprobe")
    port, _ = remote(MAKE)  # type: ignore[misc]
    first, second = wait_close_wait(ns, port, 12)[:2]
    ref = netns_mod.NsRef(inode=solo.server.inode(), name=solo.server.netns, kind="named",
                          path=f"/run/netns/{solo.server.netns}")
    monkeypatch.setattr(bpf, "_probe", lambda: pytest.fail("the probe program was loaded"))
    assert bpf_destroy.usable()
    assert netns_mod.run_in(ref, lambda: bpf_destroy.destroy([first], [0])) == \
        [(0, TcpState.CLOSE_WAIT)]

    def refused(*_a: object, **_k: object) -> None:
        raise bpf.BpfError(1, "loading destroy.bpf.o: Operation not permitted")
    monkeypatch.setattr(planned, "BpfObject", refused)
    monkeypatch.setattr(planned, "_refused", {})
    assert netns_mod.run_in(ref, lambda: bpf_destroy.destroy([second], [0])) == [None]
    assert not bpf_destroy.usable()  # not tried again in this process
    assert (second.cookie, port, second.peer_port, TcpState.CLOSE_WAIT) in identities(ns, port)
