"""The exporter's samples counted in the kernel give the metrics of the sock_diag path.

One program in a namespace of the test's own holds a listener with 150
ESTABLISHED connections, a CLOSE-WAIT leak on the server side (its peers
sent data, then closed: the data waits in the receive queue, the peers'
orphans linger in FIN-WAIT-2 as TIME-WAIT sockets), CLOSE-WAIT on the
client side of a service that hung up, TIME-WAIT sockets, and a listener
with connections waiting in its accept queue. Two samplers watch it, one
counting in the kernel (linux/bpf/aggregate.py) and one through sock_diag;
their second samples give the same metric families, ages within the time
between them, and so do their third, after five more leaks the owner cache
had not seen. With the engine forced off, the counting sampler falls back.
"""

from __future__ import annotations

import time

import pytest

from bpfengine import PAIRS, force_engine
from conftest import Remote
from sockdoctor.lab.netlab import Lab
from sockdoctor.linux.bpf import BpfError, aggregate
from sockdoctor.model import TcpState
from sockdoctor.watch import metrics
from sockdoctor.watch.sampler import Sample, Sampler

pytestmark = pytest.mark.root

MAKE = PAIRS + """
est = [pair() for _ in range(150)]
leak = [pair() for _ in range(12)]
for c, _ in leak:
    c.sendall(b"x" * 300); c.close()        # server ends: CLOSE-WAIT with 301 unread
svc = socket.socket(); svc.bind(("127.0.0.1", 0)); svc.listen(16)
hung = []
for _ in range(3):
    c = socket.create_connection(svc.getsockname()); a = svc.accept()[0]
    a.close(); hung.append(c)                 # client ends: CLOSE-WAIT
for _ in range(4):
    c, a = pair(); a.close(); time.sleep(0.02); c.close()   # server ends: TIME-WAIT
queue = socket.socket(); queue.bind(("127.0.0.1", 0)); queue.listen(8)
waiting = [socket.create_connection(queue.getsockname()) for _ in range(3)]
time.sleep(0.3)
result = [port, svc.getsockname()[1], queue.getsockname()[1]]
"""
TIMING = {"sockdoctor_scan_duration_seconds", "sockdoctor_scan_cpu_seconds",
          "sockdoctor_last_scan_timestamp_seconds", "sockdoctor_doctor_last_run_timestamp_seconds"}
AGES = "sockdoctor_close_wait_oldest_seconds"


def families(sample: Sample) -> dict[str, dict[tuple[str, ...], float]]:
    health = metrics.Health(version="test", last_success=1.0)
    return {f.name: dict(f.samples) for f in metrics.build(sample, health, metrics.Options())
            if f.name not in TIMING}


MORE = """
more = [pair() for _ in range(5)]
for c, _ in more:
    c.close()                                 # 5 more server ends in CLOSE-WAIT
time.sleep(0.3)
result = 1
"""


def same_metrics(kernel: Sample, diag: Sample, between: float
                 ) -> dict[str, dict[tuple[str, ...], float]]:
    """Assert both samples give the same families (ages within `between` seconds)."""
    assert kernel.tallies is not None and diag.tallies is None
    assert kernel.sockets() == diag.sockets() == len(diag.snapshot.sockets)
    assert {sk.state for sk in kernel.snapshot.sockets} == {TcpState.CLOSE_WAIT,
                                                             TcpState.LISTEN}
    # each sampler's doctor judged its own first sample, a moment apart (a rule may
    # see a queue differently): the paths are compared on the same findings
    assert kernel.report is not None and not kernel.doctor_ran
    diag.report = kernel.report
    got, want = families(kernel), families(diag)
    ages, want_ages = got.pop(AGES), want.pop(AGES)
    assert got == want
    assert ages.keys() == want_ages.keys() and len(ages) == 2
    for key, age in ages.items():
        assert abs(age - want_ages[key]) <= between + 0.05
    return got


def test_counted_samples_give_the_sock_diag_metrics(solo: Lab, monkeypatch: pytest.MonkeyPatch
                                                    ) -> None:
    force_engine(monkeypatch)
    remote = Remote(solo, solo.server, "sdt-counted")
    port, svc, queue = remote(MAKE)  # type: ignore[misc]
    ns = solo.server.netns
    # the doctor on samples 1 and 5: samples 2 and 3 are counted
    samplers = [Sampler(netns=ns, doctor_every=4) for _ in range(2)]
    samplers[0].count_in_kernel()
    try:
        assert all(s.sample().tallies is None for s in samplers)  # the first walks all
        t0 = time.time()
        got = same_metrics(*(s.sample() for s in samplers), time.time() - t0)
        remote(MORE)  # new leaks the owner cache has not seen
        t0 = time.time()
        again = same_metrics(*(s.sample() for s in samplers), time.time() - t0)
    finally:
        for sampler in samplers:
            sampler.close()
    # and what they agree on is what the test made
    states = got["sockdoctor_tcp_sockets"]
    assert states[(ns, "established")] == 2 * 150 + 2 * 3  # + both ends of the queued ones
    assert states[(ns, "close_wait")] == 12 + 3
    assert states[(ns, "time_wait")] == 4 and states[(ns, "fin_wait2")] == 12 + 3
    assert states[(ns, "listen")] == 3
    leak = got["sockdoctor_close_wait_sockets"]
    assert leak[(ns, "sdt-counted", "server", str(port), "", "")] == 12
    assert leak[(ns, "sdt-counted", "client", str(svc), "", "")] == 3
    assert got["sockdoctor_listen_queue_length"][(ns, "sdt-counted", str(queue), "", "")] == 3
    assert again["sockdoctor_close_wait_sockets"][
        (ns, "sdt-counted", "server", str(port), "", "")] == 12 + 5


def test_forced_off_samples_through_sock_diag(solo: Lab, monkeypatch: pytest.MonkeyPatch
                                              ) -> None:
    monkeypatch.setenv("SOCKDOCTOR_ENGINE", "c")
    remote = Remote(solo, solo.server, "sdt-counted")
    remote(MAKE)
    sampler = Sampler(netns=solo.server.netns, doctor=False).count_in_kernel()
    try:
        sampler.sample()
        sample = sampler.sample()
    finally:
        sampler.close()
    assert sample.tallies is None and sample.snapshot is not None
    assert any(sk.state == TcpState.ESTABLISHED for sk in sample.snapshot.sockets)


def test_a_refused_pass_is_counted_from_sock_diag(solo: Lab, monkeypatch: pytest.MonkeyPatch
                                                  ) -> None:
    """The kernel refusing a pass mid-life: that sample is counted from a sock_diag dump
    (the same tallies), the source is off from then, the next sample is a usual one."""
    force_engine(monkeypatch)
    remote = Remote(solo, solo.server, "sdt-counted")
    remote(MAKE)
    ns = solo.server.netns
    sampler = Sampler(netns=ns, doctor=False).count_in_kernel()
    try:
        sampler.sample()
        counting = sampler._counting
        assert counting is not None
        kernel = sampler.sample().tallies
        assert kernel is not None

        def refuse(netns: int) -> aggregate.Pass:
            raise BpfError(1, "refused for the test")
        monkeypatch.setattr(counting._agg, "run", refuse)
        fallback = sampler.sample()
        assert fallback.tallies is not None and counting.off
        assert {sk.state for sk in fallback.snapshot.sockets} == {TcpState.CLOSE_WAIT,
                                                                   TcpState.LISTEN}
        (inode, got), = fallback.tallies.items()
        want = kernel[inode]
        assert (got.sockets, got.states, got.ports) == (want.sockets, want.states, want.ports)
        assert sampler.sample().tallies is None
    finally:
        sampler.close()


def test_full_walks_keep_their_rhythm_between_counted_samples(
        solo: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every `full_walk_every` samples walk all of /proc through sock_diag, whatever the
    samples between them were; the others are counted and walk nothing."""
    force_engine(monkeypatch)
    remote = Remote(solo, solo.server, "sdt-counted")
    remote(MAKE)
    sampler = Sampler(netns=solo.server.netns, doctor=False, full_walk_every=3)
    sampler.count_in_kernel()
    try:
        samples = [sampler.sample() for _ in range(7)]
    finally:
        sampler.close()
    assert [s.full_walk for s in samples] == [True, False, False, True, False, False, True]
    assert [s.tallies is not None for s in samples] == [False, True, True, False, True, True,
                                                        False]
    assert len({s.sockets() for s in samples}) == 1  # the same sockets, counted or listed
