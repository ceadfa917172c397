"""`sockdoctor doctor` and `sockdoctor lab` as a user runs them: options, output, exit codes.

Most tests feed the doctor saved snapshots (`--from`), built synthetically,
so what the CLI adds to the library — filters with listeners as context,
--stuck-after/--idle-after, --previous, text vs JSON, colours, exit codes,
one-line errors — is checked without root. The few live ones (marked root)
scan private namespaces only.
"""

from __future__ import annotations

import gzip
import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import pytest

from sockdoctor.cli import main
from sockdoctor.doctor import DoctorConfig, Report, config_for, from_json
from sockdoctor.doctor.synth import SnapshotBuilder
from sockdoctor.lab import REGISTRY
from sockdoctor.lab.netlab import Lab
from sockdoctor.snapshot_io import save

SOCKDOCTOR = [sys.executable, "-m", "sockdoctor"]
# The fields docs/doctor.md documents, section "JSON schema of a report".
REPORT_FIELDS = {"schema", "findings", "summary", "snapshot", "limits", "notes"}
FINDING_FIELDS = {"rule", "severity", "title", "netns", "netns_inode", "processes", "ports",
                  "peers", "sockets", "evidence", "evidence_lines", "explanation", "fix",
                  "relief", "relief_argv"}


# --- helpers ---------------------------------------------------------------------

def sockdoctor(*args: str, env: dict[str, str] | None = None
               ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SOCKDOCTOR, *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


def doctor_json(*args: str) -> tuple[int, Report]:
    done = sockdoctor("doctor", "--json", *args)
    assert done.stdout, done.stderr
    return done.returncode, from_json(done.stdout)


def written(b: SnapshotBuilder, path: Path) -> str:
    save(b.build(), str(path))
    return str(path)


def rules(report: Report) -> list[tuple[str, str]]:
    return [(f.rule, f.severity) for f in report.findings]


def one_line_error(done: subprocess.CompletedProcess[str], code: int) -> str:
    assert done.returncode == code, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr and done.stdout == ""
    first = done.stderr.strip().splitlines()[0]
    assert first.startswith(("sockdoctor:", "Error:")), done.stderr
    return done.stderr


def leaky(n: int, age_ms: int, *, port: int = 9000, pid: int = 42) -> SnapshotBuilder:
    """A server that never closes: `n` CLOSE-WAIT of `age_ms` on its listening port."""
    b = SnapshotBuilder()
    b.process(pid, "leaky")
    b.listener(port, pid=pid)
    b.sockets(n, "close-wait", f"10.0.0.1:{port}", "10.0.0.2", pid=pid, age_ms=age_ms,
              recv_q=1)
    b.sockets(3, "established", f"10.0.0.1:{port}", "10.0.0.3", pid=pid, age_ms=100)
    return b


def two_services() -> SnapshotBuilder:
    """A leak on :40000 (a listening port inside the ephemeral range) and, apart from it,
    a listener on :8080 whose owner idles in epoll_wait with a stale queue."""
    b = leaky(5, 60_000, port=40000)
    b.process(50, "et-server", threads=[("S", "epoll_wait", "ep_poll")])
    lst = b.listener(8080, pid=50, backlog=16)
    b.queued(6, "close-wait", "10.0.0.1:8080", "10.0.0.4", lst, age_ms=30_000, recv_q=20)
    return b


def in_process(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
               *args: str) -> tuple[int, str]:
    """Run the CLI's main() here (to fake a non-root user); exit code and stderr."""
    monkeypatch.setattr(sys, "argv", ["sockdoctor", *args])
    with pytest.raises(SystemExit) as ended:
        main()
    return int(ended.value.code or 0), capsys.readouterr().err


# --- exit codes and output ------------------------------------------------------------

@pytest.mark.parametrize(("n", "code", "severity"), [(0, 0, None), (5, 1, "warning"),
                                                     (150, 2, "critical")])
def test_exit_code_follows_the_worst_finding(tmp_path: Path, n: int, code: int,
                                             severity: str | None) -> None:
    path = written(leaky(n, 60_000), tmp_path / "s.json")
    rc, report = doctor_json("--from", path)
    assert rc == code == report.exit_code
    assert rules(report) == ([("never-closed", severity)] if severity else [])
    text = sockdoctor("doctor", "--from", path)
    assert text.returncode == code
    assert ("healthy: nothing to report" in text.stdout) == (n == 0)


def test_text_report_puts_the_most_severe_first(tmp_path: Path) -> None:
    b = leaky(150, 60_000)
    b.process(43, "shutter", netns="host")
    b.listener(9100, pid=43)
    b.dead_fd(43, 6)
    done = sockdoctor("doctor", "--from", written(b, tmp_path / "s.json"))
    assert done.returncode == 2
    out = done.stdout
    assert out.index("CRITICAL never-closed") < out.index("WARNING  dead-socket-fds")
    assert "problems found: 1 critical, 1 warning" in out
    assert "relieve now: sockdoctor kill --netns host --pid 42 --port 9000" in out
    assert "\x1b[" not in out  # piped: no colours


def test_json_has_the_documented_fields(tmp_path: Path) -> None:
    done = sockdoctor("doctor", "--json", "--from", written(leaky(5, 60_000),
                                                            tmp_path / "s.json"))
    doc = json.loads(done.stdout)
    assert set(doc) == REPORT_FIELDS and doc["schema"] == "sockdoctor.report/1"
    (finding,) = doc["findings"]
    assert set(finding) == FINDING_FIELDS
    assert finding["processes"][0]["comm"] == "leaky" and finding["ports"] == [9000]
    assert finding["relief_argv"][:2] == ["sockdoctor", "kill"]
    assert doc["summary"]["warning"] == 1 and doc["summary"]["states"]["CLOSE-WAIT"] == 5


def run_on_a_terminal(*args: str, env: dict[str, str] | None = None) -> str:
    """stdout of the CLI when it writes to a terminal."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([*SOCKDOCTOR, *args], stdout=slave, stderr=subprocess.PIPE,
                            env={**os.environ, **(env or {})})
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=30)
    os.close(master)
    return b"".join(chunks).decode()


def test_colour_only_on_a_terminal_and_never_when_asked(tmp_path: Path) -> None:
    path = written(leaky(5, 60_000), tmp_path / "s.json")
    assert "\x1b[1;33mWARNING" in run_on_a_terminal("doctor", "--from", path)
    assert "\x1b[" not in run_on_a_terminal("doctor", "--from", path, "--no-color")
    assert "\x1b[" not in run_on_a_terminal("doctor", "--from", path, env={"NO_COLOR": "1"})


# --- --stuck-after and --idle-after ----------------------------------------------------

def test_stuck_after_sets_when_close_wait_counts_as_stuck(tmp_path: Path) -> None:
    path = written(leaky(5, 3_000), tmp_path / "s.json")
    rc, report = doctor_json("--from", path)
    assert (rc, rules(report)) == (0, [])  # 3 s is young by default (10 s)
    rc, report = doctor_json("--from", path, "--stuck-after", "2s")
    assert (rc, rules(report)) == (1, [("never-closed", "warning")])
    (f,) = report.findings
    assert f.evidence["stuck_age_ms"] == 2000
    assert f.relief_argv[-2:] == ["--older-than", "2s"]  # spares younger ones
    rc, report = doctor_json("--from", path, "--stuck-after", "5s")
    assert (rc, rules(report)) == (0, [])


def test_stuck_after_scales_the_thresholds_tied_to_it(tmp_path: Path) -> None:
    cfg, base = config_for("1s"), DoctorConfig()
    assert cfg.stuck_age_ms == 1_000
    for name in ("long_stuck_ms", "queue_stale_ms", "queue_wait_ms", "queue_dead_ms",
                 "half_closed_stuck_ms"):
        assert getattr(cfg, name) * 10 == getattr(base, name), name
    assert (cfg.idle_ms, cfg.warn_stuck, cfg.queue_near_ratio) == (
        base.idle_ms, base.warn_stuck, base.queue_near_ratio)
    assert config_for("10s") == base  # the default is the default
    # one CLOSE-WAIT 40 s old: alone it warns once it is 30 x --stuck-after old
    path = written(leaky(1, 40_000), tmp_path / "s.json")
    assert rules(doctor_json("--from", path)[1]) == [("never-closed", "info")]
    assert rules(doctor_json("--from", path, "--stuck-after", "1s")[1]) == [
        ("never-closed", "warning")]


def idle(n: int, age_ms: int, timer: int) -> SnapshotBuilder:
    b = SnapshotBuilder()
    b.process(7, "idler")
    b.listener(5000, pid=7)
    b.sockets(n, "established", "10.0.0.1:5000", "10.0.0.9", pid=7, age_ms=age_ms,
              timer=timer)
    return b


def test_idle_after_sets_when_silent_connections_without_keepalive_count(
        tmp_path: Path) -> None:
    path = written(idle(20, 5_000, timer=0), tmp_path / "s.json")
    assert rules(doctor_json("--from", path)[1]) == []  # 5 s is nothing by default (30m)
    rc, report = doctor_json("--from", path, "--idle-after", "1s")
    assert (rc, rules(report)) == (1, [("no-keepalive", "warning")])  # 20 silent >= 4 x 1s
    assert rules(doctor_json("--from", path, "--idle-after", "2s")[1]) == [
        ("no-keepalive", "info")]
    kept = written(idle(20, 5_000, timer=2), tmp_path / "ka.json")  # keepalive timer runs
    assert doctor_json("--from", kept, "--idle-after", "1s", "--stuck-after", "1s")[0] == 0


def test_help_documents_the_defaults_it_uses() -> None:
    from sockdoctor.doctor.text import duration_arg

    done = sockdoctor("doctor", "--help")
    text = " ".join(done.stdout.split())
    base = DoctorConfig()
    assert f"[default: {duration_arg(base.stuck_age_ms)}]" in text
    assert f"[default: {duration_arg(base.idle_ms)}]" in text
    for words in ("30 x AGE", "AGE/2", "6 x AGE", "4 x AGE", "0 healthy", "1 warnings",
                  "2 critical", "listeners of their namespaces are kept as context"):
        assert words in text, words


# --- filters ---------------------------------------------------------------------

def test_a_filter_keeps_listeners_as_context(tmp_path: Path) -> None:
    path = written(two_services(), tmp_path / "s.json")
    both = rules(doctor_json("--from", path)[1])
    assert both == [("never-closed", "warning"), ("accept-queue-not-drained", "warning")]
    # CLOSE-WAIT only: the listener of :40000 still says "our service", not a client pool
    rc, report = doctor_json("--from", path, "state", "close-wait")
    assert rules(report) == both
    # one port: the other listener's queue is context, not news
    rc, report = doctor_json("--from", path, "sport", "=", ":40000")
    assert (rc, rules(report)) == (1, [("never-closed", "warning")])
    assert report.findings[0].ports == [40000]
    rc, report = doctor_json("--from", path, "--port", "8080")
    assert rules(report) == [("accept-queue-not-drained", "warning")]
    assert [p.comm for p in report.findings[0].processes] == ["et-server"]
    rc, report = doctor_json("--from", path, "--pid", "42", "state", "established")
    assert (rc, rules(report)) == (0, [])


def test_without_its_listener_a_server_leak_looks_like_a_client() -> None:
    """Why the context matters: the same sockets judged with their listener filtered out."""
    from sockdoctor.doctor import diagnose

    snap = two_services().build()
    bare = msgspec.structs.replace(snap, sockets=[sk for sk in snap.sockets
                                                  if sk.state == 8])  # CLOSE-WAIT only
    assert "client-pool-dead-connections" in {f.rule for f in diagnose(bare).findings}


# --- samples ---------------------------------------------------------------------

def test_previous_snapshot_adds_growth(tmp_path: Path) -> None:
    b = leaky(5, 60_000)
    before = written(b, tmp_path / "before.json")
    b.advance(10)
    b.sockets(12, "close-wait", "10.0.0.1:9000", "10.0.0.5", pid=42, age_ms=2_000, recv_q=1)
    after = written(b, tmp_path / "after.json")
    rc, report = doctor_json("--from", after, "--previous", before, "--stuck-after", "1s")
    (f,) = report.findings
    assert (f.rule, f.severity, rc) == ("never-closed", "critical", 2)  # 17 stuck, +12
    assert (f.evidence["previous_count"], f.evidence["growth"]) == (5, 12)
    assert report.snapshot.interval_s == 10
    # the wrong way round: no trend, and the user is told why
    done = sockdoctor("doctor", "--json", "--from", before, "--previous", after)
    assert "not older" in done.stderr
    assert from_json(done.stdout).snapshot.interval_s is None


# --- errors ----------------------------------------------------------------------

def test_bad_snapshot_files_exit_6(tmp_path: Path) -> None:
    good = written(leaky(5, 60_000), tmp_path / "good.json")
    report = tmp_path / "report.json"
    report.write_text(sockdoctor("doctor", "--json", "--from", good).stdout)
    garbage = tmp_path / "garbage.json"
    garbage.write_bytes(b"\x00not json at all")
    foreign = tmp_path / "foreign.json"
    foreign.write_text('{"schema": "someone-else/1", "sockets": []}')
    broken = tmp_path / "broken.json.gz"
    broken.write_bytes(gzip.compress(Path(good).read_bytes())[:40])
    for path in (report, garbage, foreign, broken, tmp_path):
        err = one_line_error(sockdoctor("doctor", "--from", str(path)), 6)
        assert str(path) in err
    one_line_error(sockdoctor("doctor", "--from", good, "--previous", str(garbage)), 6)


@pytest.mark.root
def test_an_unknown_namespace_on_a_live_scan_exits_3() -> None:
    err = one_line_error(sockdoctor("doctor", "--netns", "sdlab-there-is-no-such-ns"), 3)
    assert "sdlab-there-is-no-such-ns" in err


def test_user_mistakes_are_one_line_errors_with_their_exit_code(tmp_path: Path) -> None:
    good = written(leaky(5, 60_000), tmp_path / "good.json")
    assert "no such snapshot file" in one_line_error(
        sockdoctor("doctor", "--from", str(tmp_path / "missing.json")), 3)
    assert "known: host" in one_line_error(
        sockdoctor("doctor", "--from", good, "--netns", "nosuch"), 3)
    for args, word in ((["--interval", "0"], "--interval"),
                       (["--interval", "soon"], "not a duration"),
                       (["--interval", "1s", "--from", good], "--previous"),
                       (["--stuck-after", "0s", "--from", good], "--stuck-after"),
                       (["--stuck-after", "later", "--from", good], "--stuck-after"),
                       (["--idle-after", "-1", "--from", good], "--idle-after"),
                       (["state", "sleepy", "--from", good], "sleepy")):
        assert word in one_line_error(sockdoctor("doctor", *args), 2), args


# --- lab -------------------------------------------------------------------------

def test_lab_list_names_every_scenario_with_its_seed_and_title() -> None:
    done = sockdoctor("lab", "list")
    assert done.returncode == 0
    lines = done.stdout.splitlines()
    assert len(lines) == len(REGISTRY)
    for line, (name, sc) in zip(lines, REGISTRY.items(), strict=True):
        assert line.split()[0] == name
        assert f"seed {sc.seed}" in line and line.endswith(sc.title)


def test_lab_run_of_an_unknown_scenario_lists_the_known_ones() -> None:
    err = one_line_error(sockdoctor("lab", "run", "no-such-bug"), 3)
    assert all(name in err for name in REGISTRY)


def test_lab_needs_root(monkeypatch: pytest.MonkeyPatch,
                        capsys: pytest.CaptureFixture[str]) -> None:
    import sockdoctor.lab.netlab as netlab
    import sockdoctor.lab.runner as runner

    def must_not_run(*args: object, **kw: object) -> None:
        pytest.fail("the lab ran without root")  # and would have touched other labs

    monkeypatch.setattr(runner.Scenario, "start", must_not_run)
    monkeypatch.setattr(netlab, "clean", must_not_run)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    for args in (("lab", "run", "forgot-close", "--duration", "0"), ("lab", "clean")):
        code, err = in_process(monkeypatch, capsys, *args)
        assert code == 4 and "needs root" in err and len(err.strip().splitlines()) == 1
    code, err = in_process(monkeypatch, capsys, "lab", "run", "no-such-bug")
    assert code == 3  # the name is checked first: no root needed to learn the names


def test_lab_run_keep_and_duration_exclude_each_other() -> None:
    one_line_error(sockdoctor("lab", "run", "forgot-close", "--keep", "--duration", "1"), 2)


# --- live: waiting for the second sample ------------------------------------------

@pytest.mark.root
def test_interval_shows_a_countdown_and_ctrl_c_aborts_cleanly(solo: Lab) -> None:
    master, slave = pty.openpty()
    proc = subprocess.Popen([*SOCKDOCTOR, "doctor", "--netns", solo.server.netns,
                             "--interval", "30s"], stdout=subprocess.PIPE, stderr=slave,
                            preexec_fn=default_sigint)
    os.close(slave)
    try:
        seen = read_terminal(master, until=b"Ctrl-C aborts")
        assert b"second sample in" in seen
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=10)
        rest = read_terminal(master)
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    assert proc.returncode == 130
    assert out == b""  # no half report
    assert b"interrupted" in rest and b"Traceback" not in rest


def default_sigint() -> None:
    """A shell's background job ignores SIGINT; the program under test must not."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def read_terminal(fd: int, until: bytes | None = None, timeout: float = 20) -> bytes:
    """What a program wrote to its terminal: up to `until`, or until it closed it."""
    data = b""
    deadline = time.monotonic() + timeout
    while (until is None or until not in data) and time.monotonic() < deadline:
        if not select.select([fd], [], [], deadline - time.monotonic())[0]:
            break
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: closed
            break
        if not chunk:
            break
        data += chunk
    return data
