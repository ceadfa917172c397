"""fd-pressure and dead-socket-fds on synthetic snapshots."""

from __future__ import annotations

import msgspec

from sockdoctor.doctor import diagnose
from sockdoctor.doctor.rules.deadfds import cause
from sockdoctor.doctor.synth import SnapshotBuilder
from sockdoctor.model import DeadSocketFd, Process, TcpInfo


def of(report, rule):
    return [f for f in report.findings if f.rule == rule]


def proc(fd_count: int, fd_limit: int = 1024) -> SnapshotBuilder:
    b = SnapshotBuilder()
    b.process(42, "api", fd_count=fd_count, fd_limit=fd_limit)
    b.listener(8080, pid=42)
    return b


def test_near_the_descriptor_limit_warns_then_is_critical():
    [f] = of(diagnose(proc(900).build()), "fd-pressure")
    assert f.severity == "warning"
    assert f.evidence["fd_count"] == 900 and f.evidence["fd_limit"] == 1024
    assert "prlimit --pid 42" in f.fix
    assert f.relief == ""
    [f] = of(diagnose(proc(1000).build()), "fd-pressure")
    assert f.severity == "critical"


def test_plenty_of_descriptors_or_tiny_processes_are_fine():
    assert of(diagnose(proc(500).build()), "fd-pressure") == []
    assert of(diagnose(proc(30, fd_limit=32).build()), "fd-pressure") == []
    assert of(diagnose(proc(900, fd_limit=0).build()), "fd-pressure") == []


def test_fd_pressure_relief_targets_the_leaked_sockets():
    b = proc(1000)
    b.sockets(20, "close-wait", "10.0.0.1:8080", "10.0.0.2", pid=42, age_ms=60_000)
    [f] = of(diagnose(b.build()), "fd-pressure")
    assert f.evidence["tcp_sockets"]["CLOSE-WAIT"] == 20
    assert f.relief == ("sockdoctor kill --netns host --pid 42 --state close-wait "
                        "--older-than 10s")


def test_host_file_handles():
    b = SnapshotBuilder()
    b.host_sysctls["fs.file-nr"] = "95000 0 100000"
    [f] = of(diagnose(b.build()), "fd-pressure")
    assert f.severity == "critical"
    assert f.evidence["allocated"] == 95000


def test_dead_socket_fds():
    b = SnapshotBuilder()
    b.process(7, "py")
    b.dead_fd(7, 1)
    assert of(diagnose(b.build()), "dead-socket-fds") == []  # one: maybe not connected yet
    b.dead_fd(7, 1)
    [f] = of(diagnose(b.build()), "dead-socket-fds")
    assert f.severity == "info"
    b.dead_fd(7, 4)
    [f] = of(diagnose(b.build()), "dead-socket-fds")
    assert f.severity == "warning"
    assert f.sockets == 6
    assert f.evidence["fds"] == [3, 4, 5, 6, 7, 8]
    assert "shutdown()" in f.explanation
    assert "close()" in f.fix and "ptrace" in f.fix
    assert f.relief_argv[:2] == ["sockdoctor", "kill"]
    assert f.relief_argv[-3:] == ["--pid", "7", "--dead-fds"]


def test_dead_fds_that_stay_dead_between_samples_warn():
    b = SnapshotBuilder()
    b.process(7, "py")
    b.dead_fd(7, 3)
    before = b.build()
    b.advance(10)
    [f] = of(diagnose(b.build(), previous=before), "dead-socket-fds")
    assert f.evidence["persisted"] == 3
    assert f.severity == "warning"


def test_dead_fds_grouped_per_process():
    b = SnapshotBuilder()
    b.process(7, "a")
    b.process(8, "b")
    b.dead_fd(7, 5)
    b.dead_fd(8, 6)
    found = of(diagnose(b.build()), "dead-socket-fds")
    assert sorted((f.processes[0].pid, f.sockets) for f in found) == [(7, 5), (8, 6)]


def test_dead_fds_of_processes_outside_the_scanned_namespaces_are_not_judged():
    """Their sockets may live in a namespace this scan did not dump."""
    b = SnapshotBuilder()
    b.dead_fd(9, 50)  # a process the scan knows nothing about
    snap = b.build()
    snap.processes[10] = Process(pid=10, comm="elsewhere", netns=12345)
    snap.dead_fds += [msgspec.structs.replace(snap.dead_fds[0], pid=10, fd=fd)
                      for fd in range(3, 20)]
    assert of(diagnose(snap), "dead-socket-fds") == []


# --- dead descriptors that were inspected (peer, pending error, tcp_info) -----------

RESET = TcpInfo(state=7, bytes_sent=120, bytes_acked=121, bytes_received=300,
                last_data_recv=600_000)  # SYN acked, data acked, no FIN of ours
GRACEFUL = TcpInfo(state=7, bytes_sent=120, bytes_acked=122, bytes_received=301)
GRACEFUL_SERVER = TcpInfo(state=7, bytes_sent=0, bytes_acked=1, bytes_received=1)
TIMED_OUT = TcpInfo(state=7, retransmits=15, bytes_sent=500, bytes_retrans=2000,
                    bytes_acked=1)


def test_reset_connections_of_a_pool_are_named_with_the_service_and_the_pool_fix():
    b = SnapshotBuilder()
    b.process(7, "java")
    b.dead_fd(7, 4, peer="10.0.0.9:3306", error=True, info=RESET)  # error not read yet
    b.dead_fd(7, 2, peer="10.0.0.9:3306", error=False, info=RESET)  # read, fd kept
    [f] = of(diagnose(b.build()), "dead-socket-fds")
    assert f.severity == "warning" and f.sockets == 6
    assert f.evidence["cause"] == "reset" and f.evidence["error_unread"] == 4
    assert f.evidence["service"] == "10.0.0.9:3306" and f.ports == [3306]
    assert f.peers == ["10.0.0.9:3306"]
    assert f.title == ("java (pid 7) keeps 6 connections to 10.0.0.9:3306 (MySQL) that the "
                       "peer reset, never close()d (dead descriptors)")
    assert "closes idle connections abortively" in f.explanation
    assert "pre-ping" in f.fix and "maxLifetime" in f.fix
    assert any("reset by the peer (RST) to 10.0.0.9:3306" in line and "10m" in line
               for line in f.evidence_lines)
    assert f.relief_argv[-3:] == ["--pid", "7", "--dead-fds"]


def test_dead_fds_are_grouped_by_service_and_cause():
    b = SnapshotBuilder()
    b.process(7, "app")
    b.listener(8080, pid=7)
    b.dead_fd(7, 3, peer="10.0.0.9:5432", error=True, info=RESET)
    b.dead_fd(7, 3, peer="10.0.0.8:6379", error=True, info=RESET)
    b.dead_fd(7, 2, peer="10.0.0.7:44000", local="10.0.0.2:8080", error=False,
              info=GRACEFUL_SERVER)
    b.dead_fd(7, 2, peer="10.0.0.6:443", error=False, info=GRACEFUL)
    b.dead_fd(7, 2, peer="10.0.0.5:80", error=True, info=TIMED_OUT)
    b.dead_fd(7, 2, error=False, info=TcpInfo(state=7))
    found = {(f.evidence.get("service", ""),
              f.evidence["cause"]) for f in of(diagnose(b.build()), "dead-socket-fds")}
    assert found == {("10.0.0.9:5432", "reset"), ("10.0.0.8:6379", "reset"),
                     (":8080", "shutdown"), ("10.0.0.6:443", "shutdown"),
                     ("10.0.0.5:80", "timeout"), ("", "unconnected")}


def test_cause_from_tcp_info_alone():
    d = DeadSocketFd(pid=1, fd=3, inode=9, protocol="TCP", peer_port=80, error_pending=False)
    assert cause(msgspec.structs.replace(d, info=GRACEFUL), client=True) == "shutdown"
    assert cause(msgspec.structs.replace(d, info=RESET), client=True) == "reset"
    assert cause(msgspec.structs.replace(d, info=GRACEFUL_SERVER), client=False) == "shutdown"
    assert cause(msgspec.structs.replace(d, info=TcpInfo(state=7)), client=True) == "unknown"
    pending = msgspec.structs.replace(d, error_pending=True)
    assert cause(msgspec.structs.replace(pending, info=RESET), client=True) == "reset"
    assert cause(msgspec.structs.replace(pending, info=TIMED_OUT), client=True) == "timeout"
