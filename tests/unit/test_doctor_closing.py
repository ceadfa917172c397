"""fin-wait-2-pileup, fin-wait-1-pileup and last-ack-stuck on synthetic snapshots."""

from __future__ import annotations

from sockdoctor.doctor import diagnose
from sockdoctor.doctor.synth import SnapshotBuilder


def of(report, rule):
    return [f for f in report.findings if f.rule == rule]


def peer_never_closes(n: int = 5) -> SnapshotBuilder:
    """Server closed (orphaned FIN-WAIT-2); the client in another namespace never closes."""
    b = SnapshotBuilder()
    b.netns("srv")
    b.netns("cli")
    b.process(20, "server", netns="srv")
    b.process(77, "client", netns="cli")
    b.listener(8080, pid=20, netns="srv")
    for i in range(n):
        port = 45000 + i
        b.socket("fin-wait-2", "10.77.0.1:8080", f"10.77.0.2:{port}", netns="srv",
                 age_ms=30_000, timer=3, expires_ms=30_000)
        b.socket("close-wait", f"10.77.0.2:{port}", "10.77.0.1:8080", pid=77, netns="cli",
                 age_ms=30_000, recv_q=1)
    return b


def test_fin_wait_2_names_the_peer_that_does_not_close():
    report = diagnose(peer_never_closes().build())
    [f] = of(report, "fin-wait-2-pileup")
    assert f.severity == "warning"
    assert f.netns == "srv"
    assert f.evidence["orphaned"] == 5
    assert f.evidence["peer_close_wait_found"] == 5
    assert f.evidence["peer_pid"] == 77
    assert "client (pid 77)" in f.title
    assert 77 in [p.pid for p in f.processes]
    assert f.evidence["tcp_fin_timeout"] == 60
    # the other end is diagnosed on its own, in its namespace: the cause, listed first,
    # whose relief relieves both ends
    [pool] = of(report, "client-pool-dead-connections")
    assert pool.netns == "cli" and pool.processes[0].pid == 77
    assert report.findings.index(pool) < report.findings.index(f)
    assert f.relief == pool.relief == ("sockdoctor kill --netns cli --pid 77 --port 8080 "
                                       "--state close-wait --older-than 10s dst 10.77.0.1")


def test_prefork_peer_is_the_cause_listed_before_the_fin_wait_2_it_causes():
    """Five forked workers never close; the client side piles up FIN-WAIT-2."""
    b = SnapshotBuilder()
    b.netns("srv")
    b.netns("cli")
    b.process(30, "client", netns="cli")
    b.process(3000, "apache2", netns="srv")
    b.listener(80, pid=3000, netns="srv", pids=(3001, 3002, 3003, 3004, 3005))
    for i, pid in enumerate(range(3001, 3006)):
        b.process(pid, "apache2", netns="srv", ppid=3000)
        b.socket("close-wait", "10.77.0.1:80", f"10.77.0.2:{47000 + i}", pid=pid,
                 netns="srv", age_ms=30_000)
        b.socket("fin-wait-2", f"10.77.0.2:{47000 + i}", "10.77.0.1:80", pid=30,
                 netns="cli", age_ms=90_000)
    report = diagnose(b.build())
    cause = report.findings[0]
    assert (cause.rule, cause.severity, cause.sockets) == ("never-closed", "warning", 5)
    [fw2] = of(report, "fin-wait-2-pileup")
    assert report.findings.index(fw2) == 1
    assert fw2.evidence["peer_pids"] == [3001, 3002, 3003, 3004, 3005]
    assert "(peer: apache2, 5 processes)" in fw2.title
    assert fw2.relief == cause.relief and cause.relief.count("--pid") == 5


def test_causes_first_even_when_the_consequence_is_more_severe():
    b = peer_never_closes(n=2)  # two CLOSE-WAIT: info; 2 held FIN-WAIT-2 pairs: warning
    report = diagnose(b.build(), config=None)
    rules = [f.rule for f in report.findings]
    assert rules.index("client-pool-dead-connections") < rules.index("fin-wait-2-pileup")


def test_loopback_pairs_only_match_in_the_same_namespace():
    b = SnapshotBuilder()
    b.netns("a")
    b.netns("b")
    b.process(5, "c", netns="b")
    for i in range(4):
        b.socket("fin-wait-2", "127.0.0.1:8080", f"127.0.0.1:{46000 + i}", netns="a",
                 age_ms=30_000)
        b.socket("close-wait", f"127.0.0.1:{46000 + i}", "127.0.0.1:8080", pid=5, netns="b",
                 age_ms=30_000)
    assert of(diagnose(b.build()), "fin-wait-2-pileup") == []


def test_half_closed_sockets_a_program_holds_never_time_out():
    b = SnapshotBuilder()
    b.process(9, "py")
    b.listener(7000, pid=9)
    b.sockets(4, "fin-wait-2", "10.0.0.1:7000", "10.0.0.3", pid=9, age_ms=120_000)
    [f] = of(diagnose(b.build()), "fin-wait-2-pileup")
    assert f.severity == "warning"
    assert f.evidence["held"] == 4 and f.evidence["held_stuck"] == 4
    assert "shutdown()" in f.explanation and "close()" in f.fix
    assert f.relief == ("sockdoctor kill --netns host --pid 9 --port 7000 --state fin-wait-2 "
                        "--older-than 1m")


def test_a_few_orphaned_fin_wait_2_are_normal():
    b = SnapshotBuilder()
    b.listener(80, pid=1)
    b.process(1, "nginx")
    b.sockets(30, "fin-wait-2", "10.0.0.1:80", "10.0.0.3", age_ms=20_000, timer=3)
    assert of(diagnose(b.build()), "fin-wait-2-pileup") == []
    b.sockets(600, "fin-wait-2", "10.0.0.1:80", "10.0.0.4", age_ms=20_000, timer=3)
    [f] = of(diagnose(b.build()), "fin-wait-2-pileup")
    assert f.severity == "warning"


def test_fin_wait_1_counts_only_sockets_without_answers():
    b = SnapshotBuilder()
    b.listener(80, pid=1)
    b.process(1, "nginx")
    b.sockets(50, "fin-wait-1", "10.0.0.1:80", "10.0.0.3", age_ms=900_000, retrans=1,
              timer=1)
    assert of(diagnose(b.build()), "fin-wait-1-pileup") == []  # one RTO is not stuck yet
    b.sockets(25, "fin-wait-1", "10.0.0.1:80", "10.0.0.5", age_ms=40_000, retrans=4,
              timer=4, send_q=65536)
    [f] = of(diagnose(b.build()), "fin-wait-1-pileup")
    assert f.severity == "warning"
    assert f.sockets == 25
    assert f.evidence["zero_window"] == 25
    assert f.evidence["send_q_bytes"] == 25 * 65536
    assert "tcp_orphan_retries" in f.fix
    assert f.relief == "sockdoctor kill --netns host --port 80 --state fin-wait-1"


def test_fin_wait_1_seen_in_both_samples_is_stuck():
    b = SnapshotBuilder()
    b.sockets(4, "fin-wait-1", "10.0.0.2", "10.0.0.9:443", age_ms=100)
    before = b.build()
    b.advance(5)
    [f] = of(diagnose(b.build(), previous=before), "fin-wait-1-pileup")
    assert f.severity == "info"
    assert f.peers == ["10.0.0.9"]


def test_last_ack_reports_the_state_of_the_other_end():
    b = SnapshotBuilder()
    b.netns("peer")
    b.listener(8080, pid=3)
    b.process(3, "srv")
    for i in range(5):
        b.socket("last-ack", "10.5.0.1:8080", f"10.5.0.2:{47000 + i}", retrans=3, timer=1)
        b.socket("time-wait", f"10.5.0.2:{47000 + i}", "10.5.0.1:8080", netns="peer")
    [f] = of(diagnose(b.build()), "last-ack-stuck")
    assert f.severity == "info"
    assert f.evidence["peer_states"] == {"TIME-WAIT": 5}
    assert f.relief == "sockdoctor kill --netns host --port 8080 --state last-ack"


def test_many_last_ack_warn():
    b = SnapshotBuilder()
    b.sockets(30, "last-ack", "10.0.0.2", "10.0.0.9:443", retrans=5, timer=1)
    [f] = of(diagnose(b.build()), "last-ack-stuck")
    assert f.severity == "warning"


def test_fin_wait_1_names_the_peer_that_does_not_read():
    b = SnapshotBuilder()
    b.netns("slowreader")
    b.process(8, "reader", netns="slowreader")
    b.listener(80, pid=1)
    b.process(1, "nginx")
    for i in range(20):
        b.socket("fin-wait-1", "10.9.0.1:80", f"10.9.0.2:{41000 + i}", retrans=5, timer=4,
                 send_q=30_000)
        b.socket("established", f"10.9.0.2:{41000 + i}", "10.9.0.1:80", pid=8,
                 netns="slowreader", recv_q=200_000, age_ms=10)
    [f] = of(diagnose(b.build()), "fin-wait-1-pileup")
    assert f.evidence["peer_states"] == {"ESTAB": 20}
    assert f.evidence["peer_pid"] == 8
    assert f.evidence["peer_unread_bytes"] == 20 * 200_000
    assert 8 in [p.pid for p in f.processes]
