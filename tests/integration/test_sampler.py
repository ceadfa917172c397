"""The sampler on real sockets: owners kept right between samples, cheaply.

Each test runs programs in a lab namespace it made (a server and a client
joined by a veth pair) and samples only that namespace. The owner cache is
checked against what a fresh full scan says after every kind of change a
process can make to its descriptors: new sockets, closed ones, a descriptor
number reused for another socket or first for a file, fork, exit.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from exporting import keeping_server
from leaky import wait_until

from conftest import Remote
from sockdoctor import inventory
from sockdoctor.doctor import config_for
from sockdoctor.lab.netlab import SERVER_V4, Lab
from sockdoctor.model import Snapshot, TcpState
from sockdoctor.watch import Sample, Sampler
from sockdoctor.watch.sampler import DOCTOR_MAX_GAP

pytestmark = pytest.mark.root
PORT = 7311


@dataclass
class Scene:
    lab: Lab
    server: Remote  # listens on PORT, keeps every accepted connection (the leak)
    client: Remote

    @property
    def ns(self) -> str:
        return self.lab.server.netns

    def connect(self, n: int) -> list[int]:
        """n connections the server accepts and keeps; returns the server's fds."""
        self.client(f"cs = globals().get('cs', []) + "
                    f"[socket.create_connection(('{SERVER_V4}', {PORT})) for _ in range({n})]")
        return self.server(f"""
            new = [lst.accept()[0] for _ in range({n})]
            conns.extend(new)
            result = [c.fileno() for c in new]
        """)

    def hang_up(self) -> None:
        """The client closes every connection: the server's side sits in CLOSE_WAIT."""
        self.client("for c in cs: c.close()\ncs = []")
        held = self.server("result = len(conns)")
        assert wait_until(lambda: count(self, TcpState.CLOSE_WAIT) == held)


@pytest.fixture
def scene(lab: Lab) -> Iterator[Scene]:
    server = keeping_server(lab, PORT)
    yield Scene(lab, server, Remote(lab, lab.client, "sdt-client"))


def count(scene: Scene, state: int) -> int:
    snap = inventory.scan(netns=scene.ns, owners=False)
    return sum(sk.state == state for sk in snap.sockets)


def owners(snap: Snapshot) -> dict[int, set[tuple[int, int]]]:
    """cookie -> {(pid, fd)} of every owned socket."""
    return {sk.cookie: {(o.pid, o.fd) for o in sk.owners} for sk in snap.sockets if sk.owners}


def assert_same_owners_as_a_full_scan(sample: Sample, ns: str) -> None:
    fresh = inventory.scan(netns=ns, owners=True)
    assert sample.snapshot is not None
    mine = owners(sample.snapshot)
    theirs = owners(fresh)
    common = mine.keys() & theirs.keys()  # a socket may come or go between the two scans
    assert common
    assert {c: mine[c] for c in common} == {c: theirs[c] for c in common}
    assert mine.keys() - theirs.keys() <= {sk.cookie for sk in sample.snapshot.sockets
                                           if sk.cookie not in {s.cookie for s in fresh.sockets}}


def test_the_first_sample_walks_everything_and_the_next_ones_read_almost_nothing(
        scene: Scene) -> None:
    fds = scene.connect(4)
    scene.hang_up()
    sampler = Sampler(netns=scene.ns, interval=1,
                      doctor=config_for("1s", None))
    first = sampler.sample()
    assert first.seq == 1 and first.full_walk and not first.error
    assert first.new == len(first.snapshot.sockets) and first.gone == 0
    leaked = [sk for sk in first.snapshot.sockets if sk.state == TcpState.CLOSE_WAIT]
    assert sorted(o.fd for sk in leaked for o in sk.owners) == sorted(fds)
    assert {o.pid for sk in leaked for o in sk.owners} == {scene.server.pid}
    assert first.snapshot.processes[scene.server.pid].comm == "sdt-leaker"
    time.sleep(1.1)
    second = sampler.sample()
    assert second.seq == 2 and not second.full_walk
    assert second.new == 0 and second.gone == 0
    assert second.readlinks == 0  # nothing changed: listings only
    assert second.previous is first.snapshot
    assert_same_owners_as_a_full_scan(second, scene.ns)
    # the sampler has seen them for over a second: their age is at least that
    for sk in second.snapshot.sockets:
        if sk.state == TcpState.CLOSE_WAIT:
            assert second.first_seen[sk.cookie] == first.started
            assert second.age_ms(sk) >= 1000
    assert second.doctor_ran and second.report is not None
    assert any(f.rule == "never-closed" and f.ports == [PORT] for f in second.report.findings)


def test_new_closed_and_reused_descriptors_keep_owners_right_without_a_full_walk(
        scene: Scene) -> None:
    scene.connect(3)
    sampler = Sampler(netns=scene.ns, full_walk_every=1000)
    sampler.sample()
    scene.connect(2)  # new sockets at new descriptor numbers
    sample = sampler.sample()
    assert not sample.full_walk and sample.new == 2 and sample.readlinks == 2
    assert_same_owners_as_a_full_scan(sample, scene.ns)
    # close one connection and open another one: it gets the same descriptor number
    closed = scene.server("c = conns.pop(0); result = c.fileno(); c.close()")
    assert wait_until(lambda: count(scene, TcpState.FIN_WAIT1) + count(scene, TcpState.FIN_WAIT2)
                    + count(scene, TcpState.TIME_WAIT) >= 1)
    assert scene.connect(1) == [closed]
    sample = sampler.sample()
    assert not sample.full_walk
    assert_same_owners_as_a_full_scan(sample, scene.ns)
    # a descriptor number that held a file is reused for a socket
    fd_file = scene.server("f = open('/proc/self/status'); result = f.fileno()")
    sampler.sample()
    scene.server("f.close()")
    again = scene.connect(1)
    assert again == [fd_file]
    sample = sampler.sample()
    assert not sample.full_walk
    assert_same_owners_as_a_full_scan(sample, scene.ns)
    held = {(o.pid, o.fd) for sk in sample.snapshot.sockets for o in sk.owners}
    assert (scene.server.pid, fd_file) in held


def test_fork_and_exit_are_followed(scene: Scene) -> None:
    scene.connect(2)
    sampler = Sampler(netns=scene.ns, full_walk_every=1000)
    sampler.sample()
    child = scene.server("""
        pid = os.fork()
        if pid == 0:
            time.sleep(60)
            os._exit(0)
        result = pid
    """)
    sample = sampler.sample()
    assert_same_owners_as_a_full_scan(sample, scene.ns)
    shared = [sk for sk in sample.snapshot.sockets if sk.state == TcpState.ESTABLISHED]
    assert shared and all({o.pid for o in sk.owners} == {scene.server.pid, child}
                          for sk in shared)
    scene.server(f"os.kill({child}, 9); os.waitpid({child}, 0)")
    sample = sampler.sample()
    assert all({o.pid for o in sk.owners} == {scene.server.pid} for sk in sample.snapshot.sockets
               if sk.state == TcpState.ESTABLISHED)
    assert child not in sample.snapshot.processes


def test_gone_sockets_are_counted_and_a_full_walk_comes_every_n_samples(scene: Scene) -> None:
    scene.connect(3)
    sampler = Sampler(netns=scene.ns, full_walk_every=3, doctor=False)
    walks = [sampler.sample().full_walk for _ in range(2)]
    # an abortive close (RST): the sockets are gone at once
    scene.server("""
        import struct
        for c in conns:
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            c.close()
        conns.clear()
    """)
    assert wait_until(lambda: count(scene, TcpState.ESTABLISHED) == 0)
    third = sampler.sample()
    walks.append(third.full_walk)
    walks += [sampler.sample().full_walk for _ in range(3)]
    assert walks == [True, False, False, True, False, False]
    assert third.gone == 3
    assert third.report is None and not third.doctor_ran


def test_a_filter_selects_what_the_sample_shows_but_the_doctor_sees_the_listeners(
        scene: Scene) -> None:
    scene.connect(3)
    scene.hang_up()
    sampler = Sampler("state close-wait", netns=scene.ns,
                      doctor=config_for("1s", None))
    sampler.sample()
    time.sleep(1.1)
    sample = sampler.sample()
    assert {sk.state for sk in sample.snapshot.sockets} == {TcpState.CLOSE_WAIT}
    assert len(sample.snapshot.sockets) == 3
    assert sample.previous is not None and len(sample.previous.sockets) == 3
    finding = next(f for f in sample.report.findings if f.rule == "never-closed")
    assert finding.ports == [PORT]  # server side: the listener was kept as context


def test_run_keeps_sampling_through_a_failure_until_stopped(scene: Scene) -> None:
    sampler = Sampler(netns=scene.ns, interval=0.2, doctor=False)
    seen: list[Sample] = []
    stop = threading.Event()

    def on_sample(sample: Sample) -> None:
        seen.append(sample)
        if len(seen) == 2:
            scene.lab.down()  # the namespace disappears under the sampler
        if len(seen) == 4:
            stop.set()

    worker = threading.Thread(target=sampler.run, args=(stop, on_sample))
    worker.start()
    worker.join(30)
    assert not worker.is_alive()
    assert [s.seq for s in seen] == [1, 2, 3, 4]
    assert not seen[0].error and seen[0].snapshot is not None
    assert seen[2].error and seen[2].snapshot is None
    assert "netns" in seen[2].error or "namespace" in seen[2].error
    assert sampler.latest is seen[3]
    assert seen[1].started - seen[0].started == pytest.approx(0.2, abs=0.15)


def test_a_noted_state_change_makes_the_age_exact(scene: Scene) -> None:
    scene.connect(1)
    sampler = Sampler(netns=scene.ns, doctor=False)
    sampler.sample()
    scene.hang_up()
    sk = next(s for s in inventory.scan(netns=scene.ns, owners=False).sockets
              if s.state == TcpState.CLOSE_WAIT)
    when = time.time() - 42.0
    sampler.note_state_change(0, (sk.family, sk.local_addr, sk.local_port, sk.peer_addr,
                                  sk.peer_port), TcpState.CLOSE_WAIT, when)
    sample = sampler.sample()
    mine = next(s for s in sample.snapshot.sockets if s.cookie == sk.cookie)
    assert sample.first_seen[sk.cookie] == when
    assert 42_000 <= sample.age_ms(mine) < 50_000


def test_the_doctor_runs_every_n_samples_or_as_its_cost_allows(scene: Scene) -> None:
    scene.connect(2)
    every_2nd = Sampler(netns=scene.ns, doctor_every=2)
    ran = [every_2nd.sample().doctor_ran for _ in range(5)]
    assert ran == [True, False, True, False, True]
    # auto, with an interval so short that any doctor run is over its share of a CPU:
    # the longest gap; the report is carried over in between
    auto = Sampler(netns=scene.ns, doctor_every=0, interval=0.0001)
    samples = [auto.sample() for _ in range(DOCTOR_MAX_GAP + 1)]
    assert [s.doctor_ran for s in samples] == [True] + [False] * (DOCTOR_MAX_GAP - 1) + [True]
    assert samples[1].report is samples[0].report and samples[-1].report is not None
    # a long interval leaves room for it every time
    roomy = Sampler(netns=scene.ns, doctor_every=0, interval=3600)
    assert all(roomy.sample().doctor_ran for _ in range(3))
