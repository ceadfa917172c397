"""The report: ordering, exit codes, JSON round trip, text, and no false alarms."""

from __future__ import annotations

import pathlib
import random
import shlex

import msgspec
import pytest

from sockdoctor.doctor import (
    RULES,
    Finding,
    Report,
    diagnose,
    from_json,
    json_schema,
    render_text,
    to_json,
)
from sockdoctor.doctor.synth import SnapshotBuilder
from sockdoctor.errors import BadSnapshotError
from sockdoctor.model import Snapshot
from sockdoctor.query import Query

DOCS = pathlib.Path(__file__).resolve().parents[2] / "docs" / "doctor.md"


def busy_healthy_host() -> SnapshotBuilder:
    """A busy web server and its clients doing nothing wrong."""
    rng = random.Random(7)
    b = SnapshotBuilder()
    b.process(100, "nginx", threads=[("S", "epoll_wait", "ep_poll")] * 4, fd_count=900,
              fd_limit=65536)
    b.process(200, "app", threads=[("S", "futex", "futex_wait_queue")] * 8)
    b.process(300, "sshd", threads=[("S", "pselect6", "do_select")])
    b.listener(80, pid=100, backlog=511)
    for _ in range(500):
        b.socket("established", "10.0.0.1:80", f"198.51.100.{rng.randrange(1, 250)}",
                 pid=100, age_ms=rng.randrange(0, 5_000))
    b.sockets(20, "established", "10.0.0.1", "10.0.0.9:5432", pid=200, age_ms=30_000,
              timer=2)
    b.listener(22, pid=300)
    b.socket("established", "10.0.0.1:22", "192.0.2.50", pid=300, age_ms=9_000_000, timer=2)
    return b


def add_churn(b: SnapshotBuilder, seed: int) -> list:
    """Connections that come and go within moments on a healthy host."""
    rng = random.Random(seed)
    lst = next(sk for sk in b.socket_list if sk.state == 10 and sk.local_port == 80)
    lst.recv_q = 0
    socks = b.queued(2, "established", "10.0.0.1:80", "198.51.100.7", lst, age_ms=1)
    socks += b.sockets(6, "close-wait", "10.0.0.1:80", "198.51.100.9", pid=100, age_ms=2,
                       recv_q=1)
    for _ in range(2000):
        socks.append(b.socket("time-wait", "10.0.0.1:80",
                              f"198.51.100.{rng.randrange(1, 250)}",
                              expires_ms=rng.randrange(0, 60_000)))
    socks += b.sockets(40, "fin-wait-2", "10.0.0.1:80", "198.51.100.30", age_ms=4_000,
                       timer=3)
    socks += b.sockets(5, "fin-wait-1", "10.0.0.1:80", "198.51.100.31", age_ms=20)
    socks += b.sockets(2, "last-ack", "10.0.0.1:80", "198.51.100.32", retrans=1, timer=1)
    socks += b.sockets(300, "time-wait", "10.0.0.1", "10.0.0.20:8080", expires_ms=40_000)
    b.dead_fds.clear()
    b.dead_fd(200, 1)  # a socket created, not connected yet
    return socks


def test_a_healthy_busy_host_yields_no_findings():
    b = busy_healthy_host()
    churn = add_churn(b, 1)
    before = b.build()
    b.remove(churn)
    b.advance(10)
    add_churn(b, 2)
    report = diagnose(b.build(), previous=before)
    assert report.findings == [], render_text(report)
    assert report.exit_code == 0
    assert report.healthy
    assert "healthy: nothing to report" in render_text(report)
    assert diagnose(before).findings == []


def mixed() -> Snapshot:
    b = busy_healthy_host()
    add_churn(b, 3)
    b.process(4242, "python3", threads=[("S", "epoll_wait", "ep_poll")])
    b.listener(8080, pid=4242)
    b.sockets(312, "close-wait", "10.0.0.1:8080", "10.0.0.2", pid=4242, age_ms=11_520_000,
              recv_q=1)
    b.dead_fd(4242, 6)
    b.netns("host", sysctls={"net.ipv4.tcp_fin_timeout": "30"})
    return b.build()


def test_findings_most_severe_first_then_causes_first():
    report = diagnose(mixed())
    ranks = [(-f.rank, RULES.index(f.rule)) for f in report.findings]
    assert ranks == sorted(ranks)
    assert [f.rule for f in report.findings] == ["never-closed", "dead-socket-fds",
                                                 "sysctl-audit"]
    assert [f.severity for f in report.findings] == ["critical", "warning", "info"]
    assert report.summary.critical == 1 and report.summary.warning == 1
    assert report.summary.info == 1
    assert report.summary.states["CLOSE-WAIT"] == 318
    assert report.exit_code == 2


def test_exit_codes_follow_the_worst_finding():
    def report_with(*severities) -> Report:
        r = diagnose(SnapshotBuilder().build())
        r.findings = [Finding(rule="sysctl-audit", severity=s, title="t") for s in severities]
        return r
    assert report_with().exit_code == 0
    assert report_with("info").exit_code == 0
    assert report_with("info", "warning").exit_code == 1
    assert report_with("warning", "critical", "info").exit_code == 2


def test_json_round_trip():
    report = diagnose(mixed())
    data = to_json(report)
    again = from_json(data)
    assert again == report
    assert again.exit_code == report.exit_code
    doc = msgspec.json.decode(data)
    assert doc["schema"] == "sockdoctor.report/1"
    assert doc["findings"][0]["rule"] == "never-closed"
    assert doc["findings"][0]["evidence"]["count"] == 312
    assert doc["findings"][0]["relief"].startswith("sockdoctor kill ")


def test_corrupt_report_is_a_user_error():
    with pytest.raises(BadSnapshotError):
        from_json(b'{"findings": 3}')
    with pytest.raises(BadSnapshotError):
        from_json(b"not json")


def test_snapshot_json_gives_the_same_answer():
    snap = mixed()
    again = msgspec.json.decode(msgspec.json.encode(snap), type=Snapshot)
    assert diagnose(again) == diagnose(snap)


def test_text_is_readable_at_a_glance():
    text = render_text(diagnose(mixed()))
    lines = text.splitlines()
    assert lines[0].startswith("sockdoctor doctor: testhost (kernel 6.18.0)")
    assert lines[1] == "problems found: 1 critical, 1 warning, 1 info"
    assert lines[3].startswith("CRITICAL never-closed  python3 (pid 4242) holds 312 "
                               "CLOSE-WAIT sockets on :8080 (oldest 3h12m)")
    assert "    evidence: 312 CLOSE-WAIT sockets, 312 silent for >= 10s" in text
    assert "    why:      " in text and "    fix:      " in text
    assert ("    relieve now: sockdoctor kill --netns host --pid 4242 --port 8080 "
            "--state close-wait --older-than 10s") in text
    assert text.index("CRITICAL") < text.index("WARNING") < text.index("INFO")
    assert "\x1b[" not in text
    colored = render_text(diagnose(mixed()), color=True)
    assert "\x1b[1;31mCRITICAL" in colored


def test_wrapped_lines_respect_the_width():
    text = render_text(diagnose(mixed()), width=80)
    for line in text.splitlines():
        if line.startswith(("    why:", "    fix:", "              ")):
            assert len(line) <= 80 or " " not in line.strip()


def test_previous_sample_newer_than_current_is_ignored():
    b = busy_healthy_host()
    add_churn(b, 4)
    now = b.build()
    b.advance(10)
    later = b.build()
    report = diagnose(now, previous=later)
    assert report.snapshot.interval_s is None
    assert any("one sample only" in line for line in report.limits)


def test_limits_say_what_was_not_collected():
    b = SnapshotBuilder(info=False)
    snap = b.build()
    snap.owners_scanned = False
    snap.namespaces[0].sysctls = {}
    limits = " | ".join(diagnose(snap).limits)
    assert "owners were not collected" in limits
    assert "ages were not collected" in limits
    assert "sysctls and counters were not collected" in limits
    assert "no LISTEN sockets" in limits


def test_ages_asked_for_count_as_known_even_when_no_socket_has_one():
    b = SnapshotBuilder(info=False)
    b.listener(80, pid=10)
    snap = b.build()
    assert not any(sk.age_ms is not None for sk in snap.sockets)
    assert any("ages were not collected" in line for line in diagnose(snap).limits)
    snap.age_scanned = True  # a host with nothing but listeners, scanned with ages
    assert not any("ages were not collected" in line for line in diagnose(snap).limits)


def test_schema_and_docs_cover_every_rule_and_field():
    schema = json_schema()
    defs = schema["$defs"]
    assert set(defs["Finding"]["properties"]) >= {"rule", "severity", "evidence", "relief"}
    doc = DOCS.read_text(encoding="utf-8")
    for rule in RULES:
        assert f"`{rule}`" in doc, rule
    for struct in ("Report", "Finding", "Summary", "SnapshotMeta", "ProcessRef"):
        for field in defs[struct]["properties"]:
            assert f"`{field}`" in doc, f"{struct}.{field} undocumented"


def everything_at_once() -> Snapshot:
    """One snapshot in which every rule has something to say."""
    b = SnapshotBuilder()
    b.netns("a")
    b.netns("b", sysctls={"net.ipv4.ip_local_port_range": "40000 40999",
                          "net.ipv4.tcp_tw_recycle": "1"})
    b.process(1, "leaky", netns="a", fd_count=1000, fd_limit=1024)
    b.listener(8080, pid=1, netns="a")
    b.sockets(5, "close-wait", "10.0.0.1:8080", "10.0.0.2", pid=1, netns="a", age_ms=60_000)
    b.process(2, "et", netns="a", threads=[("S", "epoll_wait", "ep_poll")])
    lst = b.listener(9090, pid=2, netns="a")
    b.queued(4, "close-wait", "10.0.0.1:9090", "10.0.0.3", lst, netns="a", age_ms=20_000)
    b.process(3, "slow", netns="b", threads=[("S", "clock_nanosleep", "")])
    lst = b.listener(7070, pid=3, netns="b", backlog=8)
    b.queued(8, "close-wait", "10.1.0.1:7070", "10.1.0.2", lst, netns="b", age_ms=9_000)
    b.process(4, "java", netns="b")
    b.sockets(4, "close-wait", "10.1.0.1", "10.1.0.9:5432", pid=4, netns="b",
              age_ms=100_000)
    b.sockets(2, "established", "10.1.0.1", "10.1.0.9:6379", pid=4, netns="b",
              age_ms=3_600_000)
    b.sockets(3, "fin-wait-2", "10.1.0.1:7070", "10.1.0.5", pid=3, netns="b",
              age_ms=100_000)
    b.sockets(3, "fin-wait-1", "10.1.0.1:7070", "10.1.0.6", netns="b", retrans=3, timer=1)
    b.sockets(3, "last-ack", "10.1.0.1:7070", "10.1.0.7", netns="b", retrans=3, timer=1)
    b.sockets(700, "time-wait", "10.1.0.1", "10.1.0.8:80", netns="b", expires_ms=59_000)
    b.dead_fd(4, 5)
    return b.build()


def test_every_rule_fires_and_round_trips():
    report = diagnose(everything_at_once())
    assert {f.rule for f in report.findings} == set(RULES), render_text(report)
    assert from_json(to_json(report)) == report
    assert render_text(report).count("relieve now: sockdoctor kill") >= 9


def _matching(snap: Snapshot, argv: list[str]) -> list:
    """The sockets of `snap` a `sockdoctor kill` argv would select (flags as the CLI has them)."""
    flags: dict[str, list[str]] = {}
    words: list[str] = []
    it = iter(argv[2:])
    for arg in it:
        if arg == "--dead-fds":
            flags[arg] = []  # a switch: it selects descriptors, not sockets
        elif arg.startswith("--"):
            flags.setdefault(arg, []).append(next(it))
        else:
            words.append(arg)
    q = Query.build(words, states=flags.get("--state", []),
                    ports=[int(p) for p in flags.get("--port", [])],
                    pids=[int(p) for p in flags.get("--pid", [])],
                    older_than=(flags.get("--older-than") or [None])[0])
    [ns] = [n for n in snap.namespaces if flags["--netns"][0] in (n.name, str(n.inode))]
    return [sk for sk in snap.sockets if sk.netns == ns.inode and q.match_socket(sk)
            and q.match_owner(sk, snap.processes)]


def test_relief_commands_select_exactly_the_stuck_sockets():
    snap = everything_at_once()
    report = diagnose(snap)
    exact = {"never-closed", "accept-queue-not-drained", "client-pool-dead-connections",
             "backlog-or-slow-handler", "no-keepalive", "fin-wait-2-pileup",
             "fin-wait-1-pileup", "last-ack-stuck", "time-wait-port-pressure"}
    checked = set()
    for f in report.findings:
        if not f.relief_argv:
            continue
        assert f.relief == shlex.join(f.relief_argv)
        if f.rule == "dead-socket-fds":
            assert "--dead-fds" in f.relief_argv  # descriptors in no TCP table, not sockets
            continue
        selected = _matching(snap, f.relief_argv)
        assert selected, f.relief
        assert all(sk.state != 10 for sk in selected)  # never a listener
        if f.rule in exact:
            assert len(selected) == f.sockets, (f.rule, f.relief)
            checked.add(f.rule)
    assert checked == exact
