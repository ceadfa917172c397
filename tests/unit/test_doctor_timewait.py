"""time-wait-port-pressure on synthetic snapshots."""

from __future__ import annotations

from sockdoctor.doctor import diagnose
from sockdoctor.doctor.synth import SnapshotBuilder


def of(report, rule):
    return [f for f in report.findings if f.rule == rule]


def client(n_tw: int, *, reuse: str = "2", port_range: str = "40000 40999",
           n_est: int = 0, expires_ms: int = 59_500) -> SnapshotBuilder:
    b = SnapshotBuilder()
    b.netns("cli", sysctls={"net.ipv4.ip_local_port_range": port_range,
                            "net.ipv4.tcp_tw_reuse": reuse})
    b.process(60, "loadgen", netns="cli")
    b.sockets(n_tw, "time-wait", "10.77.0.2", "10.77.0.1:8080", netns="cli",
              expires_ms=expires_ms)
    b.sockets(n_est, "established", "10.77.0.2", "10.77.0.1:8080", netns="cli", pid=60,
              age_ms=10)
    return b


def test_ports_running_out_towards_one_destination():
    report = diagnose(client(690, n_est=10).build())
    [f] = of(report, "time-wait-port-pressure")
    assert f.severity == "warning"
    assert f.netns == "cli"
    assert f.evidence["used"] == 700 and f.evidence["capacity"] == 1000
    assert f.evidence["time_wait"] == 690
    assert f.peers == ["10.77.0.1:8080"]
    assert [p.pid for p in f.processes] == [60]
    assert "tcp_tw_reuse" in f.fix and "IP_BIND_ADDRESS_NO_PORT" in f.fix
    assert "tcp_tw_recycle" in f.fix and "4.12" in f.fix and "NAT" in f.fix
    assert f.relief == ("sockdoctor kill --netns cli --port 8080 --state time-wait "
                        "dst 10.77.0.1")


def test_nearly_exhausted_is_critical():
    [f] = of(diagnose(client(950).build()), "time-wait-port-pressure")
    assert f.severity == "critical"


def test_normal_time_wait_counts_are_fine():
    report = diagnose(client(300, port_range="32768 60999").build())
    assert of(report, "time-wait-port-pressure") == []
    assert report.exit_code == 0


def test_tw_reuse_makes_old_time_wait_ports_available():
    assert of(diagnose(client(700, reuse="1", expires_ms=30_000).build()),
              "time-wait-port-pressure") == []
    # younger than a second: not reusable yet
    [f] = of(diagnose(client(700, reuse="1", expires_ms=59_900).build()),
             "time-wait-port-pressure")
    assert f.evidence["reusable_time_wait"] == 0


def test_reserved_ports_shrink_the_range():
    b = client(500)
    b.netns("cli", sysctls={"net.ipv4.ip_local_reserved_ports": "40000-40199,50000"})
    [f] = of(diagnose(b.build()), "time-wait-port-pressure")
    assert f.evidence["capacity"] == 800


def test_destinations_are_counted_separately():
    b = client(400)
    b.sockets(400, "time-wait", "10.77.0.2", "10.77.0.1:9090", netns="cli",
              expires_ms=59_500)
    found = of(diagnose(b.build()), "time-wait-port-pressure")
    assert sorted(f.peers[0] for f in found) == ["10.77.0.1:8080", "10.77.0.1:9090"]
    assert all(f.severity == "info" for f in found)


def test_time_wait_bucket_limit():
    b = client(95, port_range="32768 60999")
    b.netns("cli", sysctls={"net.ipv4.tcp_max_tw_buckets": "100"})
    [f] = of(diagnose(b.build()), "time-wait-port-pressure")
    assert f.severity == "warning"
    assert "tcp_max_tw_buckets=100" in f.title


def test_many_time_wait_from_one_nat_address_is_a_hint():
    b = SnapshotBuilder()
    b.process(1, "nginx")
    b.listener(443, pid=1)
    b.sockets(9000, "time-wait", "10.0.0.1:443", "192.0.2.10", expires_ms=30_000)
    [f] = of(diagnose(b.build()), "time-wait-port-pressure")
    assert f.severity == "info"
    assert f.peers == ["192.0.2.10"]
