"""Acceptance: the doctor, run through the CLI, names the cause of every lab scenario.

Each scenario of lab.REGISTRY is started once (a module fixture per
scenario) and diagnosed with `python -m sockdoctor doctor --netns NS --json`
plus the scenario's own doctor_args (`--stuck-after 1s`: a lab leak is
seconds old, not minutes). Tests that take the diagnosis further (the kill
that the relief command suggests) use the same fixture and the `relief()`
helper: pytest runs every test of one scenario before the next scenario
starts, in the order they appear in this file.

Also here: a healthy namespace gives no warnings; `doctor --from` a saved
snapshot gives the live answer; `--interval` sees a leak grow; `lab run` and
`lab clean` from the command line.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import Script
from sockdoctor.doctor import Finding, Report, from_json
from sockdoctor.lab import REGISTRY, RunInfo, Scenario
from sockdoctor.lab.netlab import SERVER_V4, Lab

SOCKDOCTOR = [sys.executable, "-m", "sockdoctor"]


def sockdoctor(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SOCKDOCTOR, *args], capture_output=True, text=True,
                          timeout=timeout)


def doctor(*args: str) -> tuple[int, Report]:
    """`sockdoctor doctor --json ARGS`: exit code and the decoded (validated) report."""
    done = sockdoctor("doctor", "--json", *args)
    assert done.returncode in (0, 1, 2) and done.stdout, (done.returncode, done.stderr)
    return done.returncode, from_json(done.stdout)


def severities(report: Report) -> set[str]:
    return {f.severity for f in report.findings}


def essence(report: Report) -> list[tuple]:
    """What a finding says, without the parts that change as time passes (ages in titles)."""
    return [(f.rule, f.severity, f.netns, [p.pid for p in f.processes], f.ports, f.sockets,
             f.relief) for f in report.findings]


# --- one diagnosis per scenario ---------------------------------------------------

@dataclass
class Diagnosis:
    scenario: Scenario
    info: RunInfo
    code: int
    report: Report

    @property
    def lab(self) -> Lab:
        return self.info.lab

    @property
    def top(self) -> Finding:
        assert self.report.findings, "the doctor found nothing"
        return self.report.findings[0]

    def again(self) -> tuple[int, Report]:
        """The same doctor command once more (after running the relief, say)."""
        return doctor("--netns", self.info.netns, *self.scenario.doctor_args)

    def relief(self) -> list[str]:
        """The top finding's relief command, runnable here ([] when it has none)."""
        argv = self.top.relief_argv
        if not argv:
            return []
        assert argv[0] == "sockdoctor"
        return [*SOCKDOCTOR, *argv[1:]]


@pytest.fixture(scope="module", params=list(REGISTRY))
def diagnosis(request: pytest.FixtureRequest) -> Iterator[Diagnosis]:
    scenario = REGISTRY[request.param]
    lab = scenario.new_lab()
    info = scenario.start(lab, timeout=30)
    try:
        time.sleep(max(0.0, scenario.doctor_after))
        code, report = doctor("--netns", info.netns, *scenario.doctor_args)
        yield Diagnosis(scenario, info, code, report)
    finally:
        scenario.teardown(lab)


@pytest.mark.root
def test_doctor_names_the_scenario_cause(diagnosis: Diagnosis) -> None:
    sc, info, top = diagnosis.scenario, diagnosis.info, diagnosis.top
    assert top.rule == sc.expected_rule, [(f.rule, f.severity) for f in
                                          diagnosis.report.findings]
    assert top.severity in ("warning", "critical")
    assert diagnosis.code == diagnosis.report.exit_code == {"warning": 1, "critical": 2}[
        top.severity]
    assert top.netns == info.netns
    assert sc.expected_port in top.ports
    if sc.expected_comm is not None:
        named = {p.comm: p.pid for p in top.processes}
        assert named.get(sc.expected_comm) == info.pids[sc.expected_comm], named
    # nothing else may outrank the cause: other findings are milder or explicitly allowed
    for f in diagnosis.report.findings[1:]:
        assert f.rank < top.rank or f.rule in (sc.expected_rule, *sc.also_rules), f.rule
    if top.relief_argv:  # a kill, or (no-keepalive) arming keepalive on the same sockets
        relief = diagnosis.relief()
        assert relief[3] == ("keepalive" if top.rule == "no-keepalive" else "kill"), relief
        assert relief[4:6] == ["--netns", info.netns]


# --- a healthy namespace ------------------------------------------------------------

HEALTHY = """
import threading
def serve(conn):
    with conn:  # answer until the client hangs up, then close
        while data := conn.recv(4096):
            conn.sendall(data)
def keepalive(s):
    s.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 60)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 10)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 5)
    return s
lst = keepalive(socket.create_server(("127.0.0.1", 7000), backlog=128))
def accept():
    while True:
        conn, _ = lst.accept()
        threading.Thread(target=serve, args=(keepalive(conn),), daemon=True).start()
threading.Thread(target=accept, daemon=True).start()
idle = [keepalive(socket.create_connection(("127.0.0.1", 7000))) for _ in range(4)]
def churn():
    while True:  # short requests, the client closes first: TIME-WAIT on its side
        with socket.create_connection(("127.0.0.1", 7000)) as c:
            c.sendall(b"ping"); c.recv(16)
        time.sleep(0.05)
threading.Thread(target=churn, daemon=True).start()
emit({"ready": True})
wait()
"""


@pytest.mark.root
def test_a_healthy_namespace_gives_no_warnings(solo: Lab) -> None:
    Script(solo, solo.server, HEALTHY).read()
    time.sleep(1.5)  # long enough for --stuck-after 1s to judge anything left behind
    ns = solo.server.netns
    for args in ([], ["--stuck-after", "1s"], ["--stuck-after", "1s", "--idle-after", "1s"]):
        code, report = doctor("--netns", ns, *args)
        assert (code, severities(report) - {"info"}) == (0, set()), report.findings
        assert report.summary.states.get("TIME-WAIT", 0) > 0  # the churn really happened
        assert report.summary.states.get("ESTAB", 0) >= 8  # the idle pairs are there


# --- saved snapshots, two samples -----------------------------------------------------

@pytest.mark.root
def test_from_a_saved_snapshot_gives_the_live_answer(tmp_path: Path) -> None:
    sc = REGISTRY["forgot-close"]
    lab = sc.new_lab()
    info = sc.start(lab)
    saved = str(tmp_path / "evidence.json.gz")
    try:
        time.sleep(sc.doctor_after)
        live_code, live = doctor("--netns", info.netns, *sc.doctor_args)
        taken = sockdoctor("snapshot", "--netns", info.netns, "-o", saved)
        assert taken.returncode == 0, taken.stderr
    finally:
        sc.teardown(lab)
    # the processes and namespaces are gone: only the file speaks now
    code, report = doctor("--from", saved, *sc.doctor_args)
    assert (code, essence(report)) == (live_code, essence(live))
    assert report.findings[0].rule == sc.expected_rule
    # the same file, narrowed by namespace and filter
    assert essence(doctor("--from", saved, "--netns", info.netns, "state", "close-wait",
                          *sc.doctor_args)[1]) == essence(live)


LEAKER = """
emit({"ready": True})
while True:  # a client a tenth of a second, each leaving a CLOSE-WAIT behind
    with socket.create_connection((HOST, 8000), timeout=5) as c:
        c.sendall(b"hello\\n"); c.recv(80)
    time.sleep(0.1)
"""


@pytest.mark.root
def test_interval_sees_the_leak_grow() -> None:
    sc = REGISTRY["forgot-close"]
    lab = sc.new_lab()
    info = sc.start(lab)
    try:
        Script(lab, lab.client, f"HOST = {SERVER_V4!r}\n" + LEAKER).read()
        time.sleep(sc.doctor_after)
        code, report = doctor("--netns", info.netns, "--interval", "1s", *sc.doctor_args)
    finally:
        sc.teardown(lab)
    assert report.snapshot.interval_s is not None and report.snapshot.interval_s >= 1
    top = report.findings[0]
    print(top.evidence, top.evidence_lines)  # shown if an assertion below fails
    assert (top.rule, top.ports) == ("never-closed", [8000])
    assert top.evidence["growth"] > 0
    assert top.evidence["previous_count"] + top.evidence["growth"] == top.sockets
    # none closed (>=: a socket accepted while the first scan walked /proc can miss its
    # owner there, and be counted in the second sample only)
    assert top.evidence["persisted"] >= top.evidence["previous_count"]
    assert any(re.match(r"\+\d+ since the previous sample", line)
               for line in top.evidence_lines)
    assert code in (1, 2)


# --- lab run and lab clean ----------------------------------------------------------

@pytest.mark.root
def test_lab_run_prints_what_it_did_and_how_to_look_at_it() -> None:
    done = sockdoctor("lab", "run", "forgot-close", "--duration", "0")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    ns = re.search(r"building namespaces (\S+) and (\S+) ", out)
    assert ns is not None, out
    server_ns = ns.group(1)
    assert f"sockdoctor doctor --netns {server_ns} --stuck-after 1s" in out
    assert "5 CLOSE-WAIT" in out and "expected diagnosis: never-closed" in out
    assert f"removed {server_ns} and {ns.group(2)}" in out
    assert not os.path.exists(f"/run/netns/{server_ns}")


CLEAN_IN_PRIVATE_MOUNTS = """
set -e
mount -t tmpfs sdtest /run/netns   # only our lab namespaces are visible here
{sd} lab run fin-wait-2-peer-never-closes --keep
ls /run/netns
{sd} lab clean
ls /run/netns
"""


@pytest.mark.root
def test_lab_clean_removes_what_a_kept_run_left_behind() -> None:
    # `lab clean` removes every finished lab: other labs may be running on this
    # machine, so it runs in a private mount namespace with its own /run/netns.
    os.makedirs("/run/netns", exist_ok=True)
    sd = " ".join(SOCKDOCTOR)
    done = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                           CLEAN_IN_PRIVATE_MOUNTS.format(sd=sd)],
                          capture_output=True, text=True, timeout=60)
    pids = [int(p) for p in re.findall(r"^\s+\S+\s+pid (\d+)", done.stdout, re.M)]
    try:
        assert done.returncode == 0, done.stderr
        names = re.findall(r"^(sdlab-fin-wait-2-\S+)$", done.stdout, re.M)
        assert len(names) == 2, done.stdout
        assert f"removed 2 lab namespaces: {', '.join(sorted(names))}" in done.stdout
        assert done.stdout.rstrip().endswith(f"{', '.join(sorted(names))}")  # empty at last
        assert len(pids) == 2
        deadline = time.monotonic() + 5
        while any(os.path.exists(f"/proc/{p}") for p in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(os.path.exists(f"/proc/{p}") for p in pids)
    finally:
        for pid in pids:
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass


SPARE_IN_PRIVATE_MOUNTS = """
set -e
mount -t tmpfs sdtest /run/netns   # only our lab namespaces are visible here
{sd} lab run forgot-close --duration 120 > live.log 2>&1 &
live=$!
for i in $(seq 300); do grep -q "look at it" live.log && break; sleep 0.1; done
{sd} lab run fin-wait-2-peer-never-closes --keep > /dev/null
echo "== before"; ls /run/netns
echo "== clean"; {sd} lab clean
echo "== after"; ls /run/netns
live_ns=$(sed -n 's/^building namespaces \\(\\S*\\) and .*/\\1/p' live.log)
echo "== named"; {sd} lab clean "${{live_ns%-srv}}"
echo "== end"; ls /run/netns
kill -TERM $live; wait $live || true
echo "== live run"; cat live.log
"""


@pytest.mark.root
def test_lab_clean_spares_a_live_lab_unless_named(tmp_path: Path) -> None:
    os.makedirs("/run/netns", exist_ok=True)
    done = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                           SPARE_IN_PRIVATE_MOUNTS.format(sd=" ".join(SOCKDOCTOR))],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    parts = dict(re.findall(r"^== (\w+(?: \w+)?)\n(.*?)(?=^== |\Z)", done.stdout, re.M | re.S))
    before = parts["before"].split()
    live = sorted(n for n in before if n.startswith("sdlab-forgot-close-"))
    kept = sorted(n for n in before if n.startswith("sdlab-fin-wait-2-"))
    assert len(live) == 2 and len(kept) == 2, done.stdout
    clean = parts["clean"]
    assert f"removed 2 lab namespaces: {', '.join(kept)}" in clean  # its creator is gone
    assert f"left alone {', '.join(live)}: its run is still going: " in clean
    assert "sockdoctor lab clean sdlab-forgot-close-" in clean and "--force" in clean
    assert parts["after"].split() == live
    assert f"removed 2 lab namespaces: {', '.join(live)}" in parts["named"]
    assert parts["end"].split() == []
