"""sysctl-audit on synthetic snapshots."""

from __future__ import annotations

from sockdoctor.doctor import diagnose
from sockdoctor.doctor.synth import SnapshotBuilder


def of(report, rule):
    return [f for f in report.findings if f.rule == rule]


def test_defaults_say_nothing():
    assert of(diagnose(SnapshotBuilder().build()), "sysctl-audit") == []


def test_changed_values_are_information_with_default_and_advice():
    b = SnapshotBuilder()
    b.netns("host", sysctls={"net.ipv4.tcp_fin_timeout": "30"})
    report = diagnose(b.build())
    [f] = of(report, "sysctl-audit")
    assert f.severity == "info"
    assert f.evidence["values"] == {"net.ipv4.tcp_fin_timeout": "30"}
    assert "(default 60)" in f.evidence_lines[0]
    assert report.exit_code == 0


def test_tw_recycle_is_harmful_and_obsolete():
    b = SnapshotBuilder()
    b.netns("host", sysctls={"net.ipv4.tcp_tw_recycle": "1"})
    [f] = of(diagnose(b.build()), "sysctl-audit")
    assert f.severity == "warning"
    assert "net.ipv4.tcp_tw_recycle=1" in f.title
    assert "NAT" in f.evidence_lines[0] and "4.12" in f.evidence_lines[0]
    b.netns("host", sysctls={"net.ipv4.tcp_tw_recycle": "0"})
    [f] = of(diagnose(b.build()), "sysctl-audit")
    assert f.severity == "info"
    assert "obsolete" in f.evidence_lines[0]


def test_very_high_fin_timeout_warns():
    b = SnapshotBuilder()
    b.netns("host", sysctls={"net.ipv4.tcp_fin_timeout": "3600"})
    [f] = of(diagnose(b.build()), "sysctl-audit")
    assert f.severity == "warning"


def test_identical_namespaces_share_one_finding():
    b = SnapshotBuilder()
    for name in ("a", "b"):
        b.netns(name, sysctls={"net.ipv4.tcp_keepalive_time": "600"})
    b.netns("c", sysctls={"net.ipv4.tcp_keepalive_time": "900"})
    found = of(diagnose(b.build()), "sysctl-audit")
    assert sorted(f.netns for f in found) == ["a, b", "c"]
    merged = next(f for f in found if f.netns == "a, b")
    assert merged.evidence["namespaces"] == ["a", "b"]


def test_tiny_somaxconn_capping_a_full_queue_warns():
    b = SnapshotBuilder()
    b.netns("host", sysctls={"net.core.somaxconn": "64"})
    b.process(1, "srv", threads=[("R", "running", "")])
    b.listener(8080, pid=1, backlog=64, queue=64)
    [f] = of(diagnose(b.build()), "sysctl-audit")
    assert f.severity == "warning"
    assert ":8080" in f.evidence_lines[0]


def test_orphans_near_the_limit():
    b = SnapshotBuilder()
    b.netns("host", sysctls={"net.ipv4.tcp_max_orphans": "100"},
            counters={"sockstat.TCP": {"orphan": 95}})
    [f] = of(diagnose(b.build()), "sysctl-audit")
    assert f.severity == "critical"
    assert "95 orphaned sockets" in f.evidence_lines[0]


def test_absurd_keepalive_time_matters_when_idle_connections_lack_keepalive():
    b = SnapshotBuilder()
    b.netns("host", sysctls={"net.ipv4.tcp_keepalive_time": "864000"})
    assert of(diagnose(b.build()), "sysctl-audit")[0].severity == "info"
    b.process(3, "d")
    b.sockets(2, "established", "10.0.0.2", "10.0.0.9:22", pid=3, age_ms=7_200_000)
    [f] = of(diagnose(b.build()), "sysctl-audit")
    assert f.severity == "warning"
