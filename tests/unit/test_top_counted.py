"""top's model on grouped samples: the kernel's counted groups join the listed ones.

A grouped sample (Sampler.group_in_kernel) lists some sockets and carries
groups counted in the kernel (groups.Counted) in its tallies; TopModel must
show what it would for the same sockets all listed. The kernel side is
tested on live sockets in tests/integration/test_bpf_topgroups.py.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

import pytest

from sockdoctor.linux.bpf import BpfError
from sockdoctor.linux.bpf.groups import TRAILER, TRAILER_MAGIC, Counted, GroupPass, decode
from sockdoctor.model import Netns, Owner, Process, Snapshot, Socket, TcpState
from sockdoctor.watch.top import TopModel

NS = 4026530002


def sk(state: int, lport: int, peer: str, pport: int, pid: int, cookie: int, age: int | None,
       recv_q: int = 0) -> Socket:
    s = Socket(NS, socket.AF_INET, state, "10.0.0.1", lport, peer, pport, cookie, cookie, 0,
               recv_q, 0)
    s.owners = [Owner(pid, 5)]
    s.age_ms = age
    return s


@dataclass
class GroupedSample:
    snapshot: Snapshot
    tallies: dict | None
    first_seen: dict = field(default_factory=dict)
    started: float = 100.0
    report: object = None
    previous: Snapshot | None = None
    error: str = ""


def listed(*extra: Socket) -> list[Socket]:
    return [sk(TcpState.LISTEN, 8000, "0.0.0.0", 0, 7, 1, None), *extra]


def snap(sockets: list[Socket]) -> Snapshot:
    return Snapshot(created=0.0, hostname="h", kernel="k", sockets=sockets,
                    namespaces=[Netns(inode=NS, name="web", kind="named")],
                    processes={7: Process(pid=7, comm="server"), 9: Process(pid=9, comm="cli")},
                    owners_scanned=True)


def rows(model: TopModel) -> dict:
    return {g.key: (g.count, g.recv_q, g.oldest_ms, g.process) for g in model.groups}


def test_counted_groups_merge_with_listed_ones_as_if_all_were_listed() -> None:
    # all listed: two server-side ESTABLISHED of pid 7 on :8000, one client of pid 9
    every = listed(sk(1, 8000, "10.0.0.9", 41000, 7, 2, 500, recv_q=3),
                   sk(1, 8000, "10.0.0.9", 41001, 7, 3, 900, recv_q=4),
                   sk(1, 45000, "10.0.0.5", 5432, 9, 4, 100))
    seen = {2: 90.0, 3: 95.0, 4: 99.0}
    full = TopModel()
    full.update(GroupedSample(snap(every), None, seen))
    # grouped: cookie 3 listed (new, not placed), cookie 2 and the client counted
    counted = GroupPass(NS, 4, 2, [
        Counted((7,), 8000, None, 1, 3, 500, 90.0),
        Counted((9,), 5432, ("10.0.0.5", socket.AF_INET), 1, 0, 100, 99.0)])
    grouped = TopModel()
    grouped.update(GroupedSample(snap(listed(every[2])), {NS: counted}, {3: 95.0}))
    assert rows(grouped) == rows(full)
    server = next(g for g in grouped.groups if g.port == 8000 and g.state == 1)
    assert (server.count, server.counted, len(server.sockets)) == (2, 1, 1)
    assert server.oldest_ms == 10_000  # since 90.0, the counted one's, at 100.0


def test_a_narrowing_filter_leaves_the_counted_groups_out() -> None:
    counted = GroupPass(NS, 2, 1, [Counted((7,), 8000, None, 1, 0, 5, 90.0)])
    model = TopModel()
    model.update(GroupedSample(snap(listed()), {NS: counted}))
    assert sum(g.count for g in model.groups) == 2
    model.set_filter("state listening")
    assert [g.state for g in model.groups] == [TcpState.LISTEN]


def test_decode_checks_the_trailer() -> None:
    tail = TRAILER.pack(TRAILER_MAGIC, 5, 5, 0, *([0] * 1024))
    found, written = decode(tail, NS)
    assert (found.sockets, found.grouped, written) == (5, 5, [])
    for bad in (tail[:-1], b"x" + tail, TRAILER.pack(1, 5, 5, 0, *([0] * 1024))):
        with pytest.raises(BpfError):
            decode(bad, NS)
