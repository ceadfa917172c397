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


def test_listener_has_no_age_and_queued_sockets_one_label() -> None:
    from sockdoctor.watch.sampler import Sample  # noqa: F401  (the real age_ms is tested below)

    listener = sk(TcpState.LISTEN, 8000, 0, 7, age=90_000)
    queued = [sk(TcpState.CLOSE_WAIT, 8000, 50000 + i, None, age=5000) for i in range(2)]
    for s in queued:
        s.inode = 0  # never accept()ed: no descriptor
    unowned = sk(TcpState.ESTABLISHED, 8000, 51000, None, age=5000)  # inode 1: not queued
    model = TopModel()
    model.update(sample([listener, *queued, unowned]))
    by_state = {g.state: g for g in model.groups}
    assert by_state[TcpState.LISTEN].oldest_ms is None
    assert by_state[TcpState.CLOSE_WAIT].process == "(accept queue)"
    assert by_state[TcpState.CLOSE_WAIT].oldest_ms == 5000
    assert by_state[TcpState.ESTABLISHED].process == "(no owner)"
    assert "--pid" not in model.relief(by_state[TcpState.CLOSE_WAIT])


def test_narrow_screens_hide_then_shrink_columns_in_the_documented_order() -> None:
    from sockdoctor.render.topframe import COLUMNS, GAP, elide, fit, fitted

    row = ("12", "+1", "+3", "CLOSE-WAIT", "python3(123456)", "-> [fd00::1234:5678]:5432",
           "3m", "0", "sdlab-leaky-12345-abcd-srv")
    assert list(fit(200, [row])) == list(COLUMNS)
    assert list(fit(110, [row])) == [c for c in COLUMNS if c not in ("+START", "RECV-Q")]
    widths = fit(96, [row])  # NETNS shrinks first, and is enough here
    assert "+LAST" in widths and sum(w + GAP for w in widths.values()) <= 96
    assert widths["NETNS"] < len(row[-1]) and widths["SERVICE"] == len(row[5])
    widths = fit(80, [row])  # everything shrinks, then +LAST goes
    assert list(widths) == ["COUNT", "STATE", "PROCESS", "SERVICE", "OLDEST", "NETNS"]
    assert sum(w + GAP for w in widths.values()) <= 80
    cut = fitted([row], widths)[0]
    assert cut[-1] == elide(row[-1], widths["NETNS"]) and "…" in cut[-1]
    assert elide("sdlab-leaky-12345-abcd-srv", 12) == "sdlab…cd-srv"
    assert elide("short", 12) == "short"


def test_findings_pane_is_clipped_to_its_lines() -> None:
    from sockdoctor.render.topframe import finding_lines

    findings = [Finding(rule="never-closed", severity="warning", title=f"leak {i}",
                        relief=f"sockdoctor kill --port {i}") for i in range(5)]
    model = TopModel()
    model.update(FakeSample(sample(leak(1)).snapshot, report=type("R", (), {
        "findings": findings})()))
    assert len(finding_lines(model, limit=5)) == 10
    clipped = finding_lines(model, limit=5, max_lines=4)
    assert len(clipped) == 4
    assert clipped[-1][1].startswith("... 3 more")


def test_one_frame_fits_80_columns() -> None:
    import io

    from sockdoctor.render.topframe import print_frame

    model = TopModel()
    model.update(sample(leak(3)))
    out = io.StringIO()
    print_frame(model, 1.0, out, 80)
    lines = out.getvalue().splitlines()
    assert all(len(line) <= 80 for line in lines), lines
    header = next(line for line in lines if line.startswith("COUNT"))
    assert header.split() == ["COUNT", "+LAST", "+START", "STATE", "PROCESS", "SERVICE",
                              "OLDEST", "RECV-Q", "NETNS"]  # all fit for short names
    listen = next(line for line in lines if "LISTEN" in line)
    assert listen.split()[6] == "-"  # no age for a listener
