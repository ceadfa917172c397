"""keepalive through the kernel engine: bpf_setsockopt() on exactly the planned sockets.

A program in a namespace of the test's own holds 10 established connections.
The plan names 5 of the server ends; one of those is replaced after
planning by a new connection with the same 4-tuple. Applied with the engine,
the other 4 read back armed (the audit says bpf_setsockopt), the
replacement, the 5 unplanned ends and every client end are untouched, and
the program is never stopped (its state, sampled all along, never t/T).
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import msgspec
import pytest

import sockdoctor
from bpfengine import PAIRS, need_engine
from conftest import Remote
from sockdoctor.lab.netlab import Lab
from sockdoctor.remedy.keepalive import Keepalive, apply_keepalive, plan_keepalive

pytestmark = pytest.mark.root

MAKE = PAIRS + """
import struct
conns = [pair() for _ in range(10)]
def armed(s):
    return [s.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
            s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE)]
result = [port, [c.getsockname()[1] for c, _ in conns]]
"""

REPLACE = """
c, a = conns[I]
a.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)); a.close()
time.sleep(0.2); c.close()
conns[I] = pair(SPORT)
result = 1
"""


def states_while(pid: int, stop: threading.Event, seen: set[str]) -> None:
    while not stop.is_set():
        try:
            with open(f"/proc/{pid}/stat") as f:
                seen.add(f.read().rpartition(")")[2].split()[0])
        except OSError:
            return


@pytest.mark.parametrize("engine", ["bpf", "c"])
def test_keepalive_arms_exactly_the_planned_sockets(solo: Lab, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    engine: str) -> None:
    """The same plan, the same result, with the engine and with it forced off (pidfd)."""
    if engine == "bpf":
        need_engine()
    monkeypatch.setenv("SOCKDOCTOR_ENGINE", engine)
    ns = str(solo.server.inode())
    remote = Remote(solo, solo.server, "bpfkeepalive")
    port, sports = remote(MAKE)  # type: ignore[misc]
    chosen = sorted(sports)[:5]
    snap = sockdoctor.scan(f"sport = :{port}", netns=ns)
    snap = msgspec.structs.replace(snap, sockets=[sk for sk in snap.sockets
                                                 if sk.peer_port in chosen])
    settings = Keepalive(idle_s=7, interval_s=3, count=4)
    plan = plan_keepalive(snap, settings, host=sockdoctor.host_facts())
    assert [i.method for i in plan.items] == ["keepalive"] * 5

    replaced = chosen[0]
    remote(REPLACE.replace("I]", f"{sports.index(replaced)}]").replace("SPORT", str(replaced)))
    stop, seen = threading.Event(), set()
    watcher = threading.Thread(target=states_while, args=(remote.pid, stop, seen))
    watcher.start()
    try:
        report = apply_keepalive(plan, audit_log=str(tmp_path / "audit.jsonl"))
    finally:
        stop.set()
        watcher.join()

    assert seen and not seen & {"t", "T"}, seen
    by_port = {i.socket.peer_port: o for i, o in zip(plan.items, report.outcomes, strict=True)}
    assert {p for p, o in by_port.items() if o.outcome == "armed"} == set(chosen[1:])
    assert all(o.detail.endswith("; set with bpf_setsockopt") == (engine == "bpf")
               and "read back: keepalive on, idle 7s, interval 3s, count 4" in o.detail
               for p, o in by_port.items() if p != replaced)
    assert by_port[replaced].outcome != "armed"
    got = remote("result = {c.getsockname()[1]: [armed(a), armed(c)] for c, a in conns}")
    default = [0, 7200]
    assert got == {str(p): [[1, 7] if p in chosen[1:] else default, default] for p in sports}
    lines = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert sorted(line["outcome"] for line in lines if line["event"] == "keepalive") \
        == sorted(o.outcome for o in report.outcomes)


def test_many_sockets_of_one_process_in_one_pass(solo: Lab, monkeypatch: pytest.MonkeyPatch
                                                 ) -> None:
    """2,000 sockets: all armed by the engine, none by the pidfd path (not even tried)."""
    need_engine()
    monkeypatch.setenv("SOCKDOCTOR_ENGINE", "bpf")
    remote = Remote(solo, solo.server, "bpfmany")
    remote("import resource; resource.setrlimit(resource.RLIMIT_NOFILE, (8192, 8192))")
    port, _ = remote(MAKE.replace("range(10)", "range(1000)"))  # type: ignore[misc]
    snap = sockdoctor.scan(f"sport = :{port} or dport = :{port}",
                           netns=str(solo.server.inode()))
    plan = plan_keepalive(snap, Keepalive(idle_s=60, interval_s=5, count=3),
                          host=sockdoctor.host_facts(), max_count=5000)
    monkeypatch.setattr(sockdoctor.linux.host, "open_process",
                        lambda pid: pytest.fail("the pidfd path was taken"))
    started = time.monotonic()
    report = apply_keepalive(plan, audit_log=None)
    print(f"armed {len(plan.actions)} in {time.monotonic() - started:.3f} s")
    assert len(plan.actions) == 2000
    assert {o.outcome for o in report.outcomes} == {"armed"}
