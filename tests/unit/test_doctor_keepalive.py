"""no-keepalive on synthetic snapshots."""

from __future__ import annotations

from sockdoctor.doctor import diagnose
from sockdoctor.doctor.synth import SnapshotBuilder

HOUR = 3_600_000


def of(report, rule):
    return [f for f in report.findings if f.rule == rule]


def idle_server(n: int, age_ms: int, timer: int = 0, info: bool = True) -> SnapshotBuilder:
    b = SnapshotBuilder(info=info)
    b.process(10, "daemon")
    b.listener(7000, pid=10)
    b.sockets(n, "established", "10.0.0.1:7000", "10.0.0.7", pid=10, age_ms=age_ms,
              timer=timer)
    b.sockets(30, "established", "10.0.0.1:7000", "10.0.0.8", pid=10, age_ms=200)
    return b


def test_many_long_silent_connections_without_keepalive_warn():
    [f] = of(diagnose(idle_server(25, 3 * HOUR).build()), "no-keepalive")
    assert f.severity == "warning"
    assert f.sockets == 25
    assert f.ports == [7000]
    assert f.peers == ["10.0.0.7"]
    assert f.evidence["tcp_keepalive_time"] == "7200"
    assert "TCP_KEEPIDLE" in f.fix and "SO_KEEPALIVE" in f.fix and "TCP_KEEPCNT" in f.fix
    assert f.relief == ("sockdoctor keepalive --netns host --pid 10 --port 7000 "
                        "--idle 30m --interval 30s --count 3")


def test_a_few_idle_connections_are_information():
    report = diagnose(idle_server(3, 40 * 60_000).build())
    [f] = of(report, "no-keepalive")
    assert f.severity == "info"
    assert report.exit_code == 0


def test_keepalive_or_retransmit_timer_is_fine():
    assert of(diagnose(idle_server(25, 3 * HOUR, timer=2).build()), "no-keepalive") == []
    assert of(diagnose(idle_server(25, 3 * HOUR, timer=1).build()), "no-keepalive") == []


def test_recent_traffic_is_fine():
    assert of(diagnose(idle_server(25, 60_000).build()), "no-keepalive") == []


def test_without_ages_the_rule_is_silent():
    assert of(diagnose(idle_server(25, 3 * HOUR, info=False).build()), "no-keepalive") == []


def test_client_side_groups_by_remote_service():
    b = SnapshotBuilder()
    b.process(11, "worker")
    b.sockets(3, "established", "10.0.0.2", "10.0.0.9:5432", pid=11, age_ms=2 * HOUR)
    b.sockets(2, "established", "10.0.0.2", "10.0.0.10:5432", pid=11, age_ms=2 * HOUR)
    found = of(diagnose(b.build()), "no-keepalive")
    assert sorted((f.peers[0], f.sockets) for f in found) == [("10.0.0.10", 2),
                                                            ("10.0.0.9", 3)]
    assert all("to 10.0.0." in f.title for f in found)
