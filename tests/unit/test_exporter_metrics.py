"""The exporter's metric families, computed from synthetic samples (no root, no I/O)."""

from __future__ import annotations

import socket

import pytest

from sockdoctor.doctor import diagnose
from sockdoctor.doctor.config import DoctorConfig
from sockdoctor.model import Netns, Owner, Process, Snapshot, Socket, TcpState
from sockdoctor.watch.metrics import STATE_NAMES, Family, Health, Options, build, fold
from sockdoctor.watch.sampler import Sample

NOW = 1_800_000_000.0
NS = 4026530000
POD = "0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b"
CGROUP = (f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod"
          f"{POD.replace('-', '_')}.slice/cri-containerd-{'ab' * 32}.scope")


def sk(state: int, lport: int, pport: int, *, owner: int = 0, inode: int = 1, cookie: int = 0,
       age_ms: int | None = None, netns: int = NS, recv_q: int = 0, send_q: int = 0,
       peer: str = "10.0.0.2") -> Socket:
    s = Socket(netns, socket.AF_INET, state, "10.0.0.1", lport, peer, pport, inode,
               cookie or (lport << 16 | pport), 0, recv_q, send_q, age_ms=age_ms)
    if owner:
        s.owners = [Owner(owner, 3 + (cookie % 1000))]
    return s


def proc(pid: int, comm: str, *, fds: int = 10, limit: int = 1024, cgroup: str = "",
         container: str = "") -> Process:
    return Process(pid=pid, comm=comm, fd_count=fds, fd_limit=limit, cgroup=cgroup,
                   container=container, netns=NS)


def sample(sockets: list[Socket], processes: dict[int, Process] | None = None, *,
           namespaces: list[Netns] | None = None, first_seen: dict[int, float] | None = None,
           doctor: bool = False) -> Sample:
    namespaces = namespaces or [Netns(inode=NS, name="web", kind="named", sysctls={
        "net.ipv4.ip_local_port_range": "32768 60999"})]
    snap = Snapshot(created=NOW, hostname="h", kernel="6.1", sockets=sockets,
                    namespaces=namespaces, processes=processes or {}, owners_scanned=True,
                    age_scanned=True)
    out = Sample(seq=2, started=NOW, snapshot=snap, first_seen=first_seen or {},
                 duration_s=0.5, cpu_s=0.25)
    if doctor:
        out.report = diagnose(snap, config=DoctorConfig(stuck_age_ms=1000))
    return out


def metrics(s: Sample, **opts: object) -> dict[str, Family]:
    return {f.name: f for f in build(s, Health(samples=2, last_success=NOW),
                                     Options(**opts))}  # type: ignore[arg-type]


def rows(family: Family) -> dict[tuple[tuple[str, str], ...], float]:
    return {tuple(zip(family.labels, labels, strict=True)): v for labels, v in family.samples}


def labelled(family: Family, **want: str) -> list[float]:
    return [v for labels, v in rows(family).items() if set(want.items()) <= set(labels)]


def test_states_use_node_exporters_names_and_every_state_has_a_series() -> None:
    got = metrics(sample([sk(TcpState.ESTABLISHED, 80, 40000), sk(TcpState.LISTEN, 80, 0),
                          sk(TcpState.TIME_WAIT, 80, 40001, inode=0)]))
    states = {dict(k)["state"]: v for k, v in rows(got["sockdoctor_tcp_sockets"]).items()}
    assert set(states) == set(STATE_NAMES.values()) == {
        "established", "syn_sent", "syn_recv", "fin_wait1", "fin_wait2", "time_wait", "close",
        "close_wait", "last_ack", "listen", "closing"}
    assert (states["established"], states["listen"], states["time_wait"]) == (1, 1, 1)
    assert sum(states.values()) == 3


def test_close_wait_sides_owners_and_ages() -> None:
    socks = [sk(TcpState.LISTEN, 8080, 0, owner=10, inode=5),
             # server side: our port 8080 is listening
             sk(TcpState.CLOSE_WAIT, 8080, 41000, owner=10, age_ms=5000),
             sk(TcpState.CLOSE_WAIT, 8080, 41001, owner=10, age_ms=1000, cookie=77),
             # client side: ephemeral local port, no listener: the remote port counts
             sk(TcpState.CLOSE_WAIT, 45000, 3306, owner=11, age_ms=2000),
             # a port outside the ephemeral range without listener: a server port
             sk(TcpState.CLOSE_WAIT, 2000, 50000, owner=11),
             # never accepted (inode 0) on a listening port; unowned with an inode
             sk(TcpState.CLOSE_WAIT, 8080, 41002, inode=0),
             sk(TcpState.CLOSE_WAIT, 8080, 41003, inode=9)]
    procs = {10: proc(10, "web"), 11: proc(11, "pool")}
    got = metrics(sample(socks, procs, first_seen={77: NOW - 60.0}))
    counts = got["sockdoctor_close_wait_sockets"]
    assert {(d["process"], d["side"], d["port"]): v for d, v in
            ((dict(k), v) for k, v in rows(counts).items())} == {
        ("web", "server", "8080"): 2, ("pool", "client", "3306"): 1,
        ("pool", "server", "2000"): 1, ("accept-queue", "server", "8080"): 1,
        ("unknown", "server", "8080"): 1}
    oldest = got["sockdoctor_close_wait_oldest_seconds"]
    # the sampler saw cookie 77 a minute ago: longer than tcp_info's 5 s
    assert labelled(oldest, process="web") == [60.0]
    assert labelled(oldest, process="pool", side="client") == [2.0]
    assert labelled(counts, netns="web") and all(dict(k)["netns"] == "web" for k in rows(counts))


def test_container_and_pod_labels_come_from_the_cgroup_and_pid_is_opt_in() -> None:
    socks = [sk(TcpState.CLOSE_WAIT, 8080, 41000, owner=10),
             sk(TcpState.LISTEN, 8080, 0, owner=10, inode=5)]
    procs = {10: proc(10, "web", cgroup=CGROUP, container="ab" * 6)}
    got = metrics(sample(socks, procs))
    (labels,) = rows(got["sockdoctor_close_wait_sockets"])
    assert dict(labels)["container"] == "abababababab" and dict(labels)["pod_uid"] == POD
    assert "pid" not in dict(labels)
    with_pid = metrics(sample(socks, procs), pid=True)
    (labels,) = rows(with_pid["sockdoctor_close_wait_sockets"])
    assert dict(labels)["pid"] == "10"
    (fds,) = rows(with_pid["sockdoctor_process_open_fds"])
    assert dict(fds)["pid"] == "10"


@pytest.mark.parametrize("n", [1, 49, 50, 51, 150])
def test_folding_keeps_the_biggest_and_the_sum_exact(n: int) -> None:
    socks, procs = [], {}
    for i in range(n):
        procs[100 + i] = proc(100 + i, f"leak-{i:03d}")
        for j in range(1 + i % 4):
            socks.append(sk(TcpState.CLOSE_WAIT, 8080, 40000 + 10 * i + j, owner=100 + i,
                            age_ms=1000 * i))
    got = metrics(sample(socks, procs), max_series=50)
    counts = got["sockdoctor_close_wait_sockets"]
    assert len(counts.samples) == min(n, 51)
    assert sum(v for _, v in counts.samples) == len(socks)
    dropped = rows(got["sockdoctor_series_dropped"])
    assert dropped[(("metric", "sockdoctor_close_wait_sockets"),)] == max(0, n - 50)
    if n > 50:
        (other,) = labelled(counts, process="other")
        # the folded ones share namespace, side and port: those labels stay
        (key,) = [k for k in rows(counts) if dict(k)["process"] == "other"]
        assert dict(key)["port"] == "8080" and dict(key)["side"] == "server"
        assert labelled(got["sockdoctor_close_wait_oldest_seconds"], process="other") == [
            max(i for i in range(n) if f"leak-{i:03d}" not in
                {dict(k)["process"] for k in rows(counts)})]
        assert other == len(socks) - sum(v for k, v in rows(counts).items()
                                         if dict(k)["process"] != "other")


def test_fold_reads_other_where_the_folded_rows_differ() -> None:
    table = {("a", "p1", "80"): [5.0], ("a", "p2", "81"): [3.0], ("b", "p3", "81"): [1.0],
             ("b", "p4", "81"): [1.0]}
    kept, folded = fold(table, 2, lambda v: (v[0],), lambda x, y: [x[0] + y[0]], force=1)
    assert folded == 2
    assert kept == {("a", "p1", "80"): [5.0], ("a", "p2", "81"): [3.0],
                    ("b", "other", "81"): [2.0]}
    kept, _ = fold(table, 1, lambda v: (v[0],), lambda x, y: [x[0] + y[0]], force=1)
    assert kept[("other", "other", "81")] == [5.0]


def test_namespaces_fold_whole_and_listeners_rank_by_fullness() -> None:
    namespaces = [Netns(inode=NS + i, name=f"ns{i}", kind="named") for i in range(5)]
    socks = [sk(TcpState.ESTABLISHED, 80, 40000 + j, netns=NS + i, owner=0)
             for i in range(5) for j in range(i + 1)]
    socks += [sk(TcpState.LISTEN, 9000 + i, 0, netns=NS + 4, recv_q=i, send_q=10, inode=50 + i)
              for i in range(4)]
    got = metrics(sample(socks, namespaces=namespaces), max_series=2)
    states = rows(got["sockdoctor_tcp_sockets"])
    assert {dict(k)["netns"] for k in states} == {"ns4", "ns3", "other"}
    assert sum(states.values()) == len(socks)
    assert len(states) == 3 * len(STATE_NAMES)
    queue = rows(got["sockdoctor_listen_queue_length"])
    assert {dict(k)["port"] for k in queue} == {"9003", "9002", "other"}
    assert sum(queue.values()) == 0 + 1 + 2 + 3
    limit = rows(got["sockdoctor_listen_queue_limit"])
    assert sum(limit.values()) == 40


def test_ephemeral_ports_count_distinct_local_ports_in_the_range() -> None:
    socks = [sk(TcpState.ESTABLISHED, 40000, 443), sk(TcpState.ESTABLISHED, 40000, 80,
                                                       peer="10.0.0.3"),
             sk(TcpState.TIME_WAIT, 40001, 443, inode=0), sk(TcpState.ESTABLISHED, 22, 50000),
             sk(TcpState.LISTEN, 45000, 0), sk(TcpState.ESTABLISHED, 45000, 50001)]
    ns = Netns(inode=NS, name="web", kind="named",
               sysctls={"net.ipv4.ip_local_port_range": "40000 40099"})
    got = metrics(sample(socks, namespaces=[ns]))
    assert rows(got["sockdoctor_ephemeral_ports_used_ratio"]) == {(("netns", "web"),): 0.02}


def test_findings_and_health() -> None:
    socks = [sk(TcpState.LISTEN, 8080, 0, owner=10, inode=5)] + [
        sk(TcpState.CLOSE_WAIT, 8080, 41000 + i, owner=10, age_ms=20_000) for i in range(4)]
    got = metrics(sample(socks, {10: proc(10, "web")}, doctor=True))
    found = rows(got["sockdoctor_finding_sockets"])
    never = [v for k, v in found.items() if dict(k)["rule"] == "never-closed"]
    assert never == [4.0]
    key = next(k for k in found if dict(k)["rule"] == "never-closed")
    assert dict(key)["process"] == "web" and dict(key)["port"] == "8080"
    assert "severity" not in dict(key)
    assert rows(got["sockdoctor_finding_severity"])[key] == 2.0  # warning
    assert rows(got["sockdoctor_up"]) == {(): 1.0}
    assert rows(got["sockdoctor_scan_duration_seconds"]) == {(): 0.5}
    assert rows(got["sockdoctor_doctor_last_run_timestamp_seconds"]) == {(): NOW}


def test_a_finding_that_turns_critical_keeps_its_series() -> None:
    """The leak grows past critical_stuck: same labels, the severity value goes 2 -> 3."""
    def leak(n: int) -> dict[str, Family]:
        socks = [sk(TcpState.LISTEN, 8080, 0, owner=10, inode=5)] + [
            sk(TcpState.CLOSE_WAIT, 8080, 41000 + i, owner=10, age_ms=20_000) for i in range(n)]
        return metrics(sample(socks, {10: proc(10, "web")}, doctor=True))

    early, late = leak(4), leak(120)
    for name in ("sockdoctor_finding_sockets", "sockdoctor_findings",
                 "sockdoctor_finding_severity"):
        assert set(rows(early[name])) == set(rows(late[name])), name
    key = next(k for k in rows(early["sockdoctor_finding_severity"])
               if dict(k)["rule"] == "never-closed")
    assert rows(early["sockdoctor_finding_severity"])[key] == 2.0
    assert rows(late["sockdoctor_finding_severity"])[key] == 3.0
    assert rows(late["sockdoctor_finding_sockets"])[key] == 120.0


def test_a_failed_sample_serves_health_only() -> None:
    failed = Sample(seq=3, started=NOW, error="boom")
    got = metrics(failed)
    assert rows(got["sockdoctor_up"]) == {(): 0.0}
    assert "sockdoctor_close_wait_sockets" not in got and "sockdoctor_tcp_sockets" not in got
    assert got["sockdoctor_scan_errors_total"].kind == "counter"
