"""top's refreshes grouped in the kernel give top's groups of the sock_diag path.

In a namespace of the test's own, one program ("sdt-grpsrv") holds a
listener with 120 ESTABLISHED connections (both ends) and 5 over IPv6, a CLOSE-WAIT leak
with data waiting, TIME-WAIT sockets; another ("sdt-grpcli") holds 40
connections to the first's listener. Two samplers watch it, one grouping in
the kernel (Sampler.group_in_kernel) and one through sock_diag; TopModels
fed by them show the same groups (count, Recv-Q, process, service, change
since the last sample; the oldest age within the time between the two
samplers' samples), on the grouped samples and after new connections from a third
process the kernel has not placed yet. With the engine forced off it falls
back; closed, nothing of it stays loaded.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time

import pytest

from bpfengine import PAIRS, force_engine
from conftest import Remote
from sockdoctor.lab.netlab import Lab
from sockdoctor.model import TcpState
from sockdoctor.watch.sampler import Sample, Sampler
from sockdoctor.watch.top import TopModel

pytestmark = pytest.mark.root

SERVER = PAIRS + """
est = [pair() for _ in range(120)]
leak = [pair() for _ in range(7)]
for c, _ in leak:
    c.sendall(b"x" * 200); c.close()        # server ends: CLOSE-WAIT with 201 unread
for _ in range(3):
    c, a = pair(); a.close(); time.sleep(0.02); c.close()   # server ends: TIME-WAIT
srv6 = socket.socket(socket.AF_INET6); srv6.bind(("::1", 0)); srv6.listen(16)
c6 = [socket.create_connection(("::1", srv6.getsockname()[1])) for _ in range(5)]
a6 = [srv6.accept()[0] for _ in range(5)]       # IPv6, both ends
time.sleep(0.3)
result = port
"""
CLIENT = """
conns = [socket.create_connection(("127.0.0.1", {port})) for _ in range({n})]
conns[0].sendall(b"y" * 50)
time.sleep(0.3)
result = 1
"""
ACCEPT = """
est += [(None, srv.accept()[0]) for _ in range({n})]
result = 1
"""


def rows(model: TopModel) -> dict[tuple, tuple]:
    return {g.key: (g.count, g.recv_q, g.process, g.service, g.delta, g.growth)
            for g in model.groups}


def same_groups(kernel: TopModel, diag: TopModel, between: float) -> None:
    assert rows(kernel) == rows(diag)
    oldest = {g.key: g.oldest_ms for g in diag.groups}
    for g in kernel.groups:
        want = oldest[g.key]
        assert (g.oldest_ms is None) == (want is None), g
        if want is not None:
            assert abs(g.oldest_ms - want) <= (between + 0.1) * 1000, g


def step(pairs: list[tuple[Sampler, TopModel]]) -> tuple[Sample, float]:
    t0 = time.time()
    samples = [s.sample() for s, _ in pairs]
    for (_, model), sample in zip(pairs, samples, strict=True):
        model.update(sample)
    return samples[0], time.time() - t0


def test_grouped_refreshes_give_the_sock_diag_groups(solo: Lab,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    force_engine(monkeypatch)
    server = Remote(solo, solo.server, "sdt-grpsrv")
    port = server(SERVER)
    Remote(solo, solo.server, "sdt-grpcli")(CLIENT.format(port=port, n=40))
    server(ACCEPT.format(n=40))
    ns = solo.server.netns
    pairs = [(Sampler(netns=ns, doctor=False), TopModel()) for _ in range(2)]
    pairs[0][0].group_in_kernel(lambda: True)
    try:
        # ages since first seen differ by when each sampler took its first sample
        first, lag = step(pairs)
        assert first.tallies is None  # the first lists every socket (and places them)
        grouped, between = step(pairs)
        assert grouped.tallies is not None
        (found,) = grouped.tallies.values()
        assert found.grouped >= 2 * 120 + 2 * 40 + 2 * 5  # placed ESTABLISHED: counted, not listed
        assert found.sockets == len(pairs[1][1].sample.snapshot.sockets)
        assert not any(sk.state == TcpState.ESTABLISHED for sk in grouped.snapshot.sockets)
        same_groups(pairs[0][1], pairs[1][1], lag + between)
        # a third process the kernel has not placed: listed this time, counted the next
        Remote(solo, solo.server, "sdt-grpnew")(CLIENT.format(port=port, n=9))
        server(ACCEPT.format(n=9))
        fresh, between = step(pairs)
        assert sum(sk.state == TcpState.ESTABLISHED for sk in fresh.snapshot.sockets) >= 9
        same_groups(pairs[0][1], pairs[1][1], lag + between)
        again, between = step(pairs)
        assert again.tallies is not None
        assert next(iter(again.tallies.values())).grouped >= 2 * 120 + 2 * 49 + 2 * 5
        same_groups(pairs[0][1], pairs[1][1], lag + between)
    finally:
        for sampler, _ in pairs:
            sampler.close()
    by_process = {(g.process.split("(")[0], g.state_name, g.service): g.count
                  for g in pairs[0][1].groups}
    assert by_process[("sdt-grpsrv", "ESTAB", f":{port}")] == 120 + 40 + 9
    assert by_process[("sdt-grpcli", "ESTAB", f"-> 127.0.0.1:{port}")] == 40
    assert by_process[("sdt-grpsrv", "CLOSE-WAIT", f":{port}")] == 7
    assert sum(n for (proc, state, service), n in by_process.items()
               if proc == "sdt-grpsrv" and state == "ESTAB" and "[::1]" in service) == 5


def test_forced_off_refreshes_through_sock_diag(solo: Lab,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOCKDOCTOR_ENGINE", "c")
    Remote(solo, solo.server, "sdt-grpsrv")(SERVER)
    sampler = Sampler(netns=solo.server.netns, doctor=False).group_in_kernel(lambda: True)
    model = TopModel()
    try:
        for _ in range(3):
            sample = sampler.sample()
            model.update(sample)
        grouping = sampler._grouping
        assert grouping is not None and grouping._obj is None and not grouping.off  # untried
    finally:
        sampler.close()
    assert sample.tallies is None
    assert sum(g.count for g in model.groups if g.state == TcpState.ESTABLISHED) == 2 * 120 + 2 * 5


def test_a_narrowing_filter_refreshes_through_sock_diag(
        solo: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    force_engine(monkeypatch)
    Remote(solo, solo.server, "sdt-grpsrv")(SERVER)
    model = TopModel()
    sampler = Sampler(netns=solo.server.netns, doctor=False)
    sampler.group_in_kernel(lambda: not model.query.narrows)
    try:
        model.update(sampler.sample())
        model.set_filter("state established")
        model.update(sample := sampler.sample())
    finally:
        sampler.close()
    assert sample.tallies is None
    assert {g.state for g in model.groups} == {TcpState.ESTABLISHED}
    assert sum(g.count for g in model.groups) == 2 * 120 + 2 * 5


def ours() -> int:
    """Programs of this part (groups.bpf.c) the kernel holds, as bpftool lists them."""
    progs = json.loads(subprocess.run(["bpftool", "-j", "prog", "show"], check=True,
                                      capture_output=True, text=True).stdout)
    return sum(p.get("name") == "group_pass" for p in progs)


def test_closed_leaves_nothing_loaded(solo: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    force_engine(monkeypatch)
    if shutil.which("bpftool") is None:
        pytest.fail("bpftool is not installed (CI installs it)")
    Remote(solo, solo.server, "sdt-grpsrv")(SERVER)
    for _ in range(20):
        sampler = Sampler(netns=solo.server.netns, doctor=False).group_in_kernel(lambda: True)
        sampler.sample()
        assert sampler.sample().tallies is not None
        assert ours() >= 1  # loaded while the sampler lives
        sampler.close()
    deadline = time.monotonic() + 10  # a closed program is freed after an RCU grace period
    while ours() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ours() == 0


FORKER = """
r, w = os.pipe(); go_r, go_w = os.pipe()
a = os.fork()
if a == 0:                                   # A: connects, then hands its sockets to B
    os.close(go_w)
    conns = [socket.create_connection(("127.0.0.1", {port})) for _ in range(6)]
    os.write(w, b"x"); os.read(go_r, 1)
    if os.fork() == 0:
        os.read(go_r, 1)                     # B holds them until this program ends
    os._exit(0)
os.read(r, 1)
result = a
"""
HAND_OVER = "os.write(go_w, b'g'); os.waitpid(a, 0); time.sleep(0.2); result = 1"


def test_an_owner_that_exits_is_placed_again(solo: Lab, monkeypatch: pytest.MonkeyPatch
                                             ) -> None:
    """Sockets a child inherited from an owner that exited come up again (the owner's
    placed files are dropped) and are grouped under the child, as sock_diag says."""
    force_engine(monkeypatch)
    server = Remote(solo, solo.server, "sdt-grpsrv")
    port = server(SERVER)
    forker = Remote(solo, solo.server, "sdt-grpfork")
    first_owner = forker(FORKER.format(port=port))
    server(ACCEPT.format(n=6))
    pairs = [(Sampler(netns=solo.server.netns, doctor=False), TopModel()) for _ in range(2)]
    pairs[0][0].group_in_kernel(lambda: True)
    try:
        _, lag = step(pairs)
        grouped, between = step(pairs)
        assert grouped.tallies is not None
        same_groups(pairs[0][1], pairs[1][1], lag + between)
        forker(HAND_OVER)
        handed, between = step(pairs)
        assert handed.tallies is not None
        same_groups(pairs[0][1], pairs[1][1], lag + between)
    finally:
        for sampler, _ in pairs:
            sampler.close()
    holders = {g.pids for g in pairs[0][1].groups if g.process.startswith("sdt-grpfork")}
    assert len(holders) == 1 and (first_owner,) not in holders
