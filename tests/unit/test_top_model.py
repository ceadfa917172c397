"""top's model on synthetic samples: groups, changes, sorts, filter, relief command."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

import pytest

from sockdoctor.doctor import Finding
from sockdoctor.doctor.finding import ProcessRef
from sockdoctor.errors import UsageError
from sockdoctor.model import Netns, Owner, Process, Snapshot, Socket, TcpState
from sockdoctor.watch.top import TopModel

NS = 4026530001


def sk(state: int, lport: int, pport: int, pid: int | None, age: int | None = None,
       recv_q: int = 0) -> Socket:
    s = Socket(NS, socket.AF_INET, state, "10.0.0.1", lport, "10.0.0.2", pport, 1, 1, 0,
               recv_q, 0)
    s.owners = [Owner(pid, 5)] if pid else []
    s.age_ms = age
    return s


@dataclass
class FakeSample:
    snapshot: Snapshot | None
    report: object = None
    previous: Snapshot | None = None
    error: str = ""
    started: float = 0.0
    duration_s: float = 0.1
    cpu_s: float = 0.1
    first_seen: dict = field(default_factory=dict)

    def age_ms(self, s: Socket) -> int | None:
        return s.age_ms


def sample(sockets: list[Socket], report: object = None) -> FakeSample:
    snap = Snapshot(created=0.0, hostname="h", kernel="k", sockets=sockets,
                    namespaces=[Netns(inode=NS, name="web", kind="named")],
                    processes={7: Process(pid=7, comm="server")}, owners_scanned=True)
    return FakeSample(snap, report)


def leak(n_cw: int, n_estab: int = 10) -> list[Socket]:
    listener = sk(TcpState.LISTEN, 8000, 0, 7)
    estab = [sk(TcpState.ESTABLISHED, 8000, 40000 + i, 7, age=60_000) for i in range(n_estab)]
    cw = [sk(TcpState.CLOSE_WAIT, 8000, 50000 + i, 7, age=1000 * i, recv_q=1)
          for i in range(n_cw)]
    return [listener, *estab, *cw]


def test_groups_count_age_recv_q_and_changes() -> None:
    model = TopModel()
    model.update(sample(leak(3)))
    model.update(sample(leak(5)))
    model.update(sample(leak(8)))
    cw = next(g for g in model.groups if g.state == TcpState.CLOSE_WAIT)
    assert (cw.count, cw.delta, cw.growth) == (8, 3, 5)
    assert (cw.process, cw.service, cw.netns_name) == ("server(7)", ":8000", "web")
    assert (cw.oldest_ms, cw.recv_q) == (7000, 8)
    assert [g.state for g in model.groups] == [TcpState.ESTABLISHED, TcpState.CLOSE_WAIT,
                                               TcpState.LISTEN]


def test_sorts_disagree_as_they_should() -> None:
    model = TopModel()
    model.update(sample(leak(1)))
    model.update(sample(leak(6)))
    model.set_sort("growth")
    assert model.groups[0].state == TcpState.CLOSE_WAIT
    model.set_sort("age")
    assert model.groups[0].state == TcpState.ESTABLISHED
    with pytest.raises(UsageError):
        model.set_sort("size")


def test_the_filter_uses_ss_syntax_and_restarts_the_counts() -> None:
    model = TopModel()
    model.update(sample(leak(2)))
    model.update(sample(leak(4)))
    model.set_filter("state close-wait")
    assert [g.state for g in model.groups] == [TcpState.CLOSE_WAIT]
    assert model.groups[0].growth == 0
    model.update(sample(leak(6)))
    assert model.groups[0].growth == 2
    with pytest.raises(UsageError):
        model.set_filter("state nonsense")
    assert model.filter_text == "state close-wait"  # a bad filter changes nothing


def test_a_failed_sample_keeps_the_last_groups() -> None:
    model = TopModel()
    model.update(sample(leak(2)))
    model.update(FakeSample(None, error="netlink went away"))
    assert model.groups and model.sample.error == "netlink went away"


def test_relief_is_the_doctors_command_or_a_kill_plan() -> None:
    finding = Finding(rule="never-closed", severity="warning", title="t", netns="web",
                      netns_inode=NS, processes=[ProcessRef(pid=7, comm="server")],
                      ports=[8000], relief="sockdoctor kill --netns web --pid 7 --port 8000")
    model = TopModel()
    model.update(sample(leak(2), report=type("R", (), {"findings": [finding]})()))
    cw = next(g for g in model.groups if g.state == TcpState.CLOSE_WAIT)
    assert model.relief(cw) == finding.relief
    model.update(sample([*leak(2), sk(TcpState.FIN_WAIT2, 41000, 9000, 7)]))  # client side
    fw = next(g for g in model.groups if g.state == TcpState.FIN_WAIT2)
    assert model.relief(fw) == "sockdoctor kill --netns web --pid 7 --port 9000 --state fin-wait-2"


def test_the_status_line_counts_in_words() -> None:
    from sockdoctor.render.topframe import status

    for sockets, words in (([], "0 TCP sockets"), (leak(0, 0), "1 TCP socket  |"),
                           (leak(0, 1), "2 TCP sockets")):
        model = TopModel()
        model.update(sample(sockets))
        assert words in status(model, 1.0)
