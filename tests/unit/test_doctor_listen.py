"""accept-queue-not-drained and backlog-or-slow-handler on synthetic snapshots."""

from __future__ import annotations

from sockdoctor.doctor import diagnose
from sockdoctor.doctor.synth import SnapshotBuilder

EPOLL = ("S", "epoll_wait", "ep_poll")
SLEEP = ("S", "clock_nanosleep", "hrtimer_nanosleep")


def of(report, rule):
    return [f for f in report.findings if f.rule == rule]


def et_server(threads=(EPOLL,), state: str = "S", closed: int = 8, open_: int = 16,
              age_ms: int = 30_000, backlog: int = 511) -> SnapshotBuilder:
    """The edge-triggered listener that stopped accepting (queue 24/511, 8 closed)."""
    b = SnapshotBuilder()
    b.process(88324, "server", state=state,
              threads=None if threads is None else list(threads))
    lst = b.listener(8080, pid=88324, addr="127.0.0.1", backlog=backlog)
    b.queued(closed, "close-wait", "127.0.0.1:8080", "127.0.0.1", lst, age_ms=age_ms,
             recv_q=46)
    b.queued(open_, "established", "127.0.0.1:8080", "127.0.0.1", lst, age_ms=age_ms)
    b.sockets(3, "established", "127.0.0.1:8080", "127.0.0.1", pid=88324, age_ms=10)
    return b


def test_idle_event_loop_with_stale_queue_is_not_drained():
    report = diagnose(et_server().build())
    [f] = of(report, "accept-queue-not-drained")
    assert f.severity == "warning"
    assert [p.pid for p in f.processes] == [88324]
    assert f.ports == [8080]
    assert f.sockets == 24
    assert "8 connections closed by their clients" in f.title
    assert "(24/511)" in f.title
    assert f.evidence["accept_queue"] == 24
    assert f.evidence["queued_close_wait"] == 8
    assert f.evidence["owner_activity"] == "idle"
    assert f.evidence["threads_88324"] == ["epoll_wait"]
    assert any("epoll_wait (ep_poll)" in line for line in f.evidence_lines)
    assert "EPOLLET" in f.fix and "EAGAIN" in f.fix and "continue" in f.fix
    assert "edge-triggered" in f.explanation
    assert f.relief == "sockdoctor kill --netns host --state close-wait sport = :8080"
    assert of(report, "backlog-or-slow-handler") == []
    assert of(report, "never-closed") == []


def test_idle_owner_with_a_queue_older_than_a_minute_is_an_outage():
    [f] = of(diagnose(et_server(age_ms=90_000).build()), "accept-queue-not-drained")
    assert f.severity == "critical"


def test_stopped_owner_is_critical():
    report = diagnose(et_server(state="T", threads=[("T", "", "do_signal_stop")]).build())
    [f] = of(report, "accept-queue-not-drained")
    assert f.severity == "critical"
    assert "stopped" in f.explanation
    assert report.exit_code == 2


def test_full_queue_is_critical():
    [f] = of(diagnose(et_server(backlog=24).build()), "accept-queue-not-drained")
    assert f.severity == "critical"


def test_unknown_thread_states_fall_back_to_the_literal_rule():
    [f] = of(diagnose(et_server(threads=None).build()), "accept-queue-not-drained")
    assert f.evidence["owner_activity"] == "unknown"
    assert "not collected" in f.explanation


def test_momentary_queue_is_fine():
    b = et_server(closed=1, open_=3, age_ms=3)
    report = diagnose(b.build())
    assert report.findings == [] or all(f.severity == "info" for f in report.findings)
    assert of(report, "accept-queue-not-drained") == []
    assert of(report, "backlog-or-slow-handler") == []


def test_busy_handler_makes_it_a_slow_handler_not_an_undrained_queue():
    b = SnapshotBuilder()
    b.process(300, "slowsrv", threads=[SLEEP])
    lst = b.listener(8080, pid=300, backlog=16)
    b.queued(10, "close-wait", "10.0.0.1:8080", "10.0.0.2", lst, age_ms=8_000, recv_q=6)
    b.queued(6, "established", "10.0.0.1:8080", "10.0.0.2", lst, age_ms=3_000)
    b.sockets(4, "close-wait", "10.0.0.1:8080", "10.0.0.2", pid=300, age_ms=20_000)
    report = diagnose(b.build())
    assert of(report, "accept-queue-not-drained") == []
    [f] = of(report, "backlog-or-slow-handler")
    assert f.severity == "critical"  # full, waited, clients already gave up
    assert report.findings[0] is f
    assert f.evidence["accept_queue"] == 16 and f.evidence["backlog"] == 16
    assert f.evidence["owner_activity"] == "busy"
    assert "somaxconn=4096" in f.fix
    assert f.relief == "sockdoctor kill --netns host --state close-wait sport = :8080"
    # the handler's own CLOSE-WAIT are requests in progress: information only
    [nc] = of(report, "never-closed")
    assert nc.severity == "info"


def test_queue_that_drained_between_samples_is_slow_not_stuck():
    b = et_server(age_ms=6_000)
    old = [sk for sk in b.socket_list if sk.inode == 0][:5]
    before = b.build()
    b.advance(10)
    b.remove(old)
    report = diagnose(b.build(), previous=before)
    assert of(report, "accept-queue-not-drained") == []
    [f] = of(report, "backlog-or-slow-handler")
    assert f.evidence["left_queue_since_previous"] == 5


def test_overflows_between_samples_without_a_full_listener_now():
    b = SnapshotBuilder()
    b.netns("web", counters={"TcpExt": {"ListenOverflows": 100, "ListenDrops": 100}})
    b.listener(80, pid=1, netns="web")
    b.process(1, "nginx", netns="web")
    before = b.build()
    b.advance(10)
    b.netns("web", counters={"TcpExt": {"ListenOverflows": 150, "ListenDrops": 150}})
    report = diagnose(b.build(), previous=before)
    [f] = of(report, "backlog-or-slow-handler")
    assert f.severity == "warning"
    assert f.netns == "web"
    assert f.evidence["listen_overflows_delta"] == 50
    # lifetime counters alone, without a previous sample, say nothing
    assert of(diagnose(b.build()), "backlog-or-slow-handler") == []


def test_near_full_queue_with_waiting_connections_warns():
    b = SnapshotBuilder()
    b.process(5, "app", threads=[("R", "running", "")])
    lst = b.listener(9000, pid=5, backlog=100)
    b.queued(85, "established", "10.0.0.1:9000", "10.0.0.2", lst, age_ms=1_500)
    [f] = of(diagnose(b.build()), "backlog-or-slow-handler")
    assert f.severity == "warning"
    assert f.sockets == 85


def test_listeners_in_two_namespaces_are_separate():
    b = et_server()
    b.netns("other")
    b.process(9, "server", netns="other", threads=[EPOLL])
    lst = b.listener(8080, pid=9, netns="other", addr="127.0.0.1")
    b.queued(6, "close-wait", "127.0.0.1:8080", "127.0.0.1", lst, netns="other",
             age_ms=20_000)
    found = of(diagnose(b.build()), "accept-queue-not-drained")
    assert sorted((f.netns, f.processes[0].pid, f.sockets) for f in found) == [
        ("host", 88324, 24), ("other", 9, 6)]


def test_several_owners_take_the_plural_verb():
    """'gunicorn (pid 300) and 2 other processes accept and handle', not 'accepts'."""
    b = SnapshotBuilder()
    for pid in (300, 301, 302):
        b.process(pid, "gunicorn", threads=[SLEEP], ppid=300 if pid != 300 else 1)
    lst = b.listener(8080, pid=300, backlog=16, pids=(301, 302))
    b.queued(16, "established", "10.0.0.1:8080", "10.0.0.2", lst, age_ms=3_000)
    [f] = of(diagnose(b.build()), "backlog-or-slow-handler")
    assert f.title.startswith("gunicorn (pid 300) and 2 other processes accept and handle "
                              "connections on :8080 too slowly")
    one = SnapshotBuilder()
    one.process(300, "slowsrv", threads=[SLEEP])
    single = one.listener(8080, pid=300, backlog=16)
    one.queued(16, "established", "10.0.0.1:8080", "10.0.0.2", single, age_ms=3_000)
    [g] = of(diagnose(one.build()), "backlog-or-slow-handler")
    assert g.title.startswith("slowsrv (pid 300) accepts and handles connections")


def test_several_stopped_owners_are_stopped():
    b = SnapshotBuilder()
    for pid in (300, 301):
        b.process(pid, "worker", state="T", threads=[("T", "", "do_signal_stop")])
    lst = b.listener(8080, pid=300, backlog=16, pids=(301,))
    b.queued(5, "close-wait", "10.0.0.1:8080", "10.0.0.2", lst, age_ms=30_000)
    [f] = of(diagnose(b.build()), "accept-queue-not-drained")
    assert f.title.startswith("worker (pid 300) and 1 other process do not accept()")
    assert "and 1 other process are stopped" in f.explanation
