"""never-closed and client-pool-dead-connections on synthetic snapshots."""

from __future__ import annotations

from sockdoctor.doctor import DoctorConfig, diagnose
from sockdoctor.doctor.synth import SnapshotBuilder


def of(report, rule):
    return [f for f in report.findings if f.rule == rule]


def leaky_server(n: int = 40, age_ms: int = 600_000, recv_q: int = 1) -> SnapshotBuilder:
    b = SnapshotBuilder()
    b.process(4242, "python3", threads=[("S", "epoll_wait", "ep_poll")])
    b.listener(8080, pid=4242)
    b.sockets(n, "close-wait", "10.0.0.1:8080", "10.0.0.2", pid=4242, age_ms=age_ms,
              recv_q=recv_q)
    b.sockets(5, "established", "10.0.0.1:8080", "10.0.0.3", pid=4242, age_ms=50)
    return b


def test_server_leak_is_named_with_process_port_and_relief():
    report = diagnose(leaky_server().build())
    [f] = of(report, "never-closed")
    assert f.severity == "warning"
    assert [p.pid for p in f.processes] == [4242]
    assert f.processes[0].comm == "python3"
    assert f.ports == [8080]
    assert f.sockets == 40
    assert f.title.startswith("python3 (pid 4242) holds 40 CLOSE-WAIT sockets on :8080")
    assert f.evidence["stuck"] == 40
    assert f.evidence["recv_q_one"] == 40
    assert f.evidence["oldest_age_ms"] == 600_000
    assert f.relief == ("sockdoctor kill --netns host --pid 4242 --port 8080 "
                        "--state close-wait --older-than 10s")
    assert f.relief_argv[:2] == ["sockdoctor", "kill"]
    assert "never even read the end-of-file" in f.explanation
    assert "recv()" in f.fix and "finally" in f.fix
    assert report.exit_code == 1
    assert of(report, "client-pool-dead-connections") == []


def test_recv_q_zero_means_eof_read_but_not_closed():
    [f] = of(diagnose(leaky_server(recv_q=0).build()), "never-closed")
    assert f.evidence["recv_q_zero"] == 40
    assert "has read everything up to the end-of-file" in f.explanation


def test_fresh_close_wait_is_not_an_alarm():
    report = diagnose(leaky_server(n=6, age_ms=4).build())
    assert of(report, "never-closed") == []
    assert report.exit_code == 0


def test_two_stuck_sockets_are_information_only():
    report = diagnose(leaky_server(n=2, age_ms=30_000).build())
    [f] = of(report, "never-closed")
    assert f.severity == "info"
    assert report.exit_code == 0


def test_one_very_old_socket_warns():
    [f] = of(diagnose(leaky_server(n=1, age_ms=3_600_000).build()), "never-closed")
    assert f.severity == "warning"


def test_many_stuck_sockets_are_critical():
    report = diagnose(leaky_server(n=150).build())
    [f] = of(report, "never-closed")
    assert f.severity == "critical"
    assert report.exit_code == 2


def test_thresholds_come_from_the_config():
    snap = leaky_server(n=3, age_ms=2_000).build()
    assert of(diagnose(snap), "never-closed") == []
    tight = DoctorConfig(stuck_age_ms=1_000)
    [f] = of(diagnose(snap, config=tight), "never-closed")
    assert f.severity == "warning"
    assert "--older-than 1s" in f.relief


def test_same_port_in_two_namespaces_is_two_services():
    b = leaky_server(n=10)
    b.netns("blue")
    b.process(5000, "node", netns="blue")
    b.listener(8080, pid=5000, netns="blue")
    b.sockets(12, "close-wait", "10.1.0.1:8080", "10.1.0.2", pid=5000, netns="blue",
              age_ms=120_000)
    found = of(diagnose(b.build()), "never-closed")
    assert sorted((f.netns, f.processes[0].pid, f.sockets) for f in found) == [
        ("blue", 5000, 12), ("host", 4242, 10)]
    blue = next(f for f in found if f.netns == "blue")
    assert blue.relief.startswith("sockdoctor kill --netns blue --pid 5000 --port 8080")


def test_grouped_per_program_and_per_port():
    b = leaky_server(n=10)
    b.process(4243, "python3")  # another python3 on the listener's port: the same program
    b.sockets(4, "close-wait", "10.0.0.1:8080", "10.0.0.2", pid=4243, age_ms=90_000)
    b.process(4244, "ruby")  # a different program holding connections of that port
    b.sockets(3, "close-wait", "10.0.0.1:8080", "10.0.0.2", pid=4244, age_ms=90_000)
    b.listener(9090, pid=4242)
    b.sockets(5, "close-wait", "10.0.0.1:9090", "10.0.0.2", pid=4242, age_ms=90_000)
    found = of(diagnose(b.build()), "never-closed")
    assert sorted(([p.pid for p in f.processes], f.ports[0], f.sockets) for f in found) == [
        ([4242], 9090, 5), ([4242, 4243], 8080, 14), ([4244], 8080, 3)]


def prefork(workers: int = 5, each: int = 1, age_ms: int = 60_000) -> SnapshotBuilder:
    """A master that listens and forks workers; each worker leaks `each` CLOSE-WAIT."""
    b = SnapshotBuilder()
    b.process(3000, "php-fpm")
    b.listener(9000, pid=3000, pids=tuple(range(3001, 3001 + workers)))
    for pid in range(3001, 3001 + workers):
        b.process(pid, "php-fpm", ppid=3000)
        b.sockets(each, "close-wait", "10.0.0.1:9000", "10.0.0.2", pid=pid, age_ms=age_ms)
    return b


def test_prefork_workers_are_one_warning_with_the_split_and_one_relief():
    report = diagnose(prefork().build())
    [f] = of(report, "never-closed")
    assert f.severity == "warning"  # 5 stuck in all, 1 per worker
    assert f.sockets == 5 and [p.pid for p in f.processes] == [3001, 3002, 3003, 3004, 3005]
    assert f.evidence["per_process"] == {str(p): 1 for p in range(3001, 3006)}
    assert f.title.startswith("php-fpm (5 processes: pid 3001, 3002, 3003, 3004, ...) holds "
                              "5 CLOSE-WAIT sockets on :9000")
    assert any("held by 5 processes (children of php-fpm (pid 3000))" in line
               for line in f.evidence_lines)
    assert f.relief == ("sockdoctor kill --netns host --pid 3001 --pid 3002 --pid 3003 "
                        "--pid 3004 --pid 3005 --port 9000 --state close-wait --older-than 10s")
    assert report.exit_code == 1


def test_many_workers_are_relieved_by_name():
    [f] = of(diagnose(prefork(workers=40).build()), "never-closed")
    assert f.relief == ("sockdoctor kill --netns host --process php-fpm --port 9000 "
                        "--state close-wait --older-than 10s")
    assert len(f.processes) == 20  # the finding names the first 20, the evidence all


def test_children_of_the_listener_group_even_under_another_name():
    b = SnapshotBuilder()
    b.process(10, "master")
    b.listener(8000, pid=10)
    for pid in (11, 12, 13):
        b.process(pid, "worker", ppid=10)
        b.sockets(1, "close-wait", "10.0.0.1:8000", "10.0.0.2", pid=pid, age_ms=60_000)
    [f] = of(diagnose(b.build()), "never-closed")
    assert f.severity == "warning" and f.sockets == 3


def test_young_close_wait_is_a_note_with_when_it_will_count():
    report = diagnose(leaky_server(n=5, age_ms=3_000).build())
    assert of(report, "never-closed") == [] and report.exit_code == 0
    [note] = report.notes
    assert note == ("5 CLOSE-WAIT sockets of python3 (pid 4242) on :8080, oldest 3s: they "
                    "count as stuck at 10s (--stuck-after), in 7s if they stay")


def test_a_close_in_flight_is_not_even_a_note():
    assert diagnose(leaky_server(n=6, age_ms=4).build()).notes == []


def test_socket_shared_after_fork_is_attributed_once():
    b = SnapshotBuilder()
    b.process(100, "gunicorn")
    b.process(101, "gunicorn")
    b.listener(8000, pid=100)
    b.sockets(5, "close-wait", "10.0.0.1:8000", "10.0.0.2", pid=100, pids=(101,),
              age_ms=60_000)
    [f] = of(diagnose(b.build()), "never-closed")
    assert f.processes[0].pid == 100
    assert f.evidence["also_held_by"] == [101]


def test_unseen_owner_still_reported_without_pid():
    b = SnapshotBuilder()
    b.listener(8080)
    b.sockets(5, "close-wait", "10.0.0.1:8080", "10.0.0.2", inode=777, age_ms=60_000)
    [f] = of(diagnose(b.build()), "never-closed")
    assert f.processes == []
    assert "could not be seen" in f.title
    assert "--pid" not in f.relief


def test_queued_close_wait_is_left_to_the_listener_rules():
    b = SnapshotBuilder()
    b.process(1, "srv", threads=[("S", "epoll_wait", "ep_poll")])
    lst = b.listener(8080, pid=1)
    b.queued(10, "close-wait", "10.0.0.1:8080", "10.0.0.2", lst, age_ms=60_000)
    report = diagnose(b.build())
    assert of(report, "never-closed") == []
    assert len(of(report, "accept-queue-not-drained")) == 1


def test_without_ages_only_big_counts_count():
    b = SnapshotBuilder(info=False)
    b.listener(8080, pid=1)
    b.process(1, "srv")
    b.sockets(5, "close-wait", "10.0.0.1:8080", "10.0.0.2", pid=1)
    assert of(diagnose(b.build()), "never-closed") == []
    b.sockets(60, "close-wait", "10.0.0.1:8080", "10.0.0.2", pid=1)
    report = diagnose(b.build())
    [f] = of(report, "never-closed")
    assert f.severity == "warning"
    assert f.evidence["ages_known"] is False
    assert any("ages were not collected" in line for line in report.limits)


def test_growth_between_samples_escalates_and_ages_survivors():
    b = SnapshotBuilder(info=False)
    b.process(1, "srv")
    b.listener(8080, pid=1)
    b.sockets(20, "close-wait", "10.0.0.1:8080", "10.0.0.2", pid=1)
    before = b.build()
    b.advance(10)
    b.sockets(25, "close-wait", "10.0.0.1:8080", "10.0.0.2", pid=1)
    report = diagnose(b.build(), previous=before)
    [f] = of(report, "never-closed")
    assert f.evidence["growth"] == 25
    assert f.evidence["previous_count"] == 20
    assert f.evidence["persisted"] == 20
    assert f.evidence["stuck"] == 20  # seen 10 s apart: at least 10 s old
    assert f.severity == "critical"
    assert any(line.startswith("+25 since the previous sample 10s ago")
               for line in f.evidence_lines)
    assert report.snapshot.interval_s == 10


def test_client_pool_dead_connections_to_mysql():
    b = SnapshotBuilder()
    b.netns("app")
    b.process(500, "java", netns="app")
    b.sockets(8, "close-wait", "10.0.0.2", "10.0.0.9:3306", pid=500, netns="app",
              age_ms=1_200_000)
    b.sockets(10, "established", "10.0.0.2", "10.0.0.9:3306", pid=500, netns="app",
              age_ms=2_000)
    report = diagnose(b.build())
    assert of(report, "never-closed") == []
    [f] = of(report, "client-pool-dead-connections")
    assert f.severity == "warning"
    assert f.netns == "app"
    assert f.peers == ["10.0.0.9:3306"]
    assert "MySQL" in f.title
    assert "maxLifetime" in f.fix and "pool_pre_ping" in f.fix
    assert "SetConnMaxIdleTime" in f.fix
    assert f.evidence["live_connections"] == 10
    assert f.relief == ("sockdoctor kill --netns app --pid 500 --port 3306 --state close-wait "
                        "--older-than 10s dst 10.0.0.9")


def test_client_pool_knobs_follow_the_service():
    b = SnapshotBuilder()
    b.process(7, "python3")
    b.sockets(4, "close-wait", "10.0.0.2", "10.0.0.5:6379", pid=7, age_ms=400_000)
    b.sockets(4, "close-wait", "fd00::2", "[fd00::5]:7777", pid=7, age_ms=400_000)
    found = {f.ports[0]: f for f in of(diagnose(b.build()), "client-pool-dead-connections")}
    assert "health_check_interval" in found[6379].fix
    assert "idle timeout" in found[7777].fix
    assert found[7777].relief.endswith("dst '[fd00::5]'")


def test_listener_port_inside_ephemeral_range_is_still_server_side():
    b = SnapshotBuilder()
    b.process(9, "grpc")
    b.listener(50051, pid=9)
    b.sockets(5, "close-wait", "10.0.0.1:50051", "10.0.0.2", pid=9, age_ms=60_000)
    report = diagnose(b.build())
    assert len(of(report, "never-closed")) == 1
    assert of(report, "client-pool-dead-connections") == []


def test_a_young_close_wait_with_an_unread_eof_is_a_note():
    """doctor right after a leak (0.2 s): the unread EOF is mentioned (issue 15, item 8)."""
    report = diagnose(leaky_server(n=5, age_ms=200, recv_q=1).build())
    assert report.exit_code == 0
    [note] = report.notes
    assert note == ("5 CLOSE-WAIT sockets of python3 (pid 4242) on :8080, 5 of them with the "
                    "peer's close not yet read (Recv-Q > 0), oldest 200ms: they count as "
                    "stuck at 10s (--stuck-after), in 9s if they stay")
    assert diagnose(leaky_server(n=5, age_ms=200, recv_q=0).build()).notes == []
