"""Acceptance: the relief the doctor suggests (a kill, or arming keepalive) cures every lab
scenario.

For each scenario of lab.REGISTRY: start it, take the evidence the doctor
takes, diagnose it with the scenario's own thresholds (its doctor_args, what
`sockdoctor doctor --stuck-after/--idle-after` would use: a lab leak is
seconds old), run the top finding's relief command through
`python -m sockdoctor` with --yes, then check that the stuck sockets (or dead
descriptors) are gone and that the server answers a new client.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sockdoctor.doctor import DoctorConfig, config_for, diagnose
from sockdoctor.inventory import ScanOptions, scan
from sockdoctor.lab import REGISTRY, RunInfo, Scenario
from sockdoctor.model import Snapshot, Socket, TcpState

pytestmark = pytest.mark.root
ORPHAN_STATES = {TcpState.FIN_WAIT1, TcpState.FIN_WAIT2, TcpState.LAST_ACK, TcpState.CLOSING,
                 TcpState.TIME_WAIT}


def doctor_config(sc: Scenario) -> DoctorConfig:
    """The thresholds `sockdoctor doctor` gets from the scenario's doctor_args."""
    options = dict(zip(sc.doctor_args[::2], sc.doctor_args[1::2], strict=True))
    assert set(options) <= {"--stuck-after", "--idle-after"}, sc.doctor_args
    return config_for(options.get("--stuck-after"), options.get("--idle-after"))


def evidence(info: RunInfo) -> Snapshot:
    return scan(None, ScanOptions(age=True), netns=info.netns, evidence=True)


def stuck_now(sc: Scenario, info: RunInfo, snap: Snapshot) -> set[tuple[int, int]]:
    """What the scenario is about: its stuck sockets, or the dead descriptors of its server."""
    if sc.stuck_state == TcpState.CLOSE:  # sockets in no table: only descriptors are left
        pid = info.pids[sc.expected_comm or ""]
        return {(d.fd, d.inode) for d in snap.dead_fds if d.pid == pid}
    return {(sk.cookie, sk.state) for sk in sc.stuck_sockets(snap, info)}


def still_there(before: set[tuple[int, int]], after: Snapshot, sc: Scenario,
                info: RunInfo) -> set[tuple[int, int]]:
    """The stuck things of `before` still present (a socket the kernel is merely finishing,
    orphaned in a closing state, is not stuck any more)."""
    if sc.stuck_state == TcpState.CLOSE:
        return before & stuck_now(sc, info, after)
    now: dict[int, Socket] = {sk.cookie: sk for sk in after.sockets}
    cookies = {cookie for cookie, _ in before}
    return {(c, now[c].state) for c in cookies if c in now
            and not (now[c].inode == 0 and now[c].state in ORPHAN_STATES
                     and now[c].state != sc.stuck_state)}


@pytest.mark.parametrize("name", list(REGISTRY))
def test_the_suggested_kill_clears_the_scenario(name: str, tmp_path: Path) -> None:
    sc = REGISTRY[name]
    lab = sc.new_lab()
    info = sc.start(lab, timeout=30)
    try:
        time.sleep(max(0.0, sc.doctor_after))
        snap = evidence(info)
        stuck = stuck_now(sc, info, snap)
        assert len(stuck) >= sc.min_stuck or sc.stuck_state == TcpState.CLOSE, stuck
        assert stuck

        report = diagnose(snap, config=doctor_config(sc))
        assert report.findings, "the doctor found nothing"
        top = report.findings[0]
        assert top.rule == sc.expected_rule, [(f.rule, f.severity) for f in report.findings]
        command = top.relief_argv[1]
        assert command in ("kill", "keepalive"), top.relief_argv
        assert top.relief_argv[2:4] == ["--netns", info.netns], top.relief_argv

        audit = tmp_path / "audit.jsonl"
        done = subprocess.run(
            [sys.executable, "-m", "sockdoctor", *top.relief_argv[1:], "--yes", "--json",
             "--audit-log", str(audit)],
            capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
        assert done.returncode == 0, (top.relief, done.stderr, done.stdout[-2000:])
        result = json.loads(done.stdout)
        acted = [i for i in result["plan"]["items"] if i["method"]]
        if sc.stuck_state != TcpState.CLOSE:  # every stuck socket was in the plan
            planned = {i["socket"]["cookie"] for i in acted}
            assert {cookie for cookie, _ in stuck} <= planned
        events = [json.loads(line)["event"] for line in audit.read_text().splitlines()]
        outcomes = [o["outcome"] for o in result["outcomes"]]
        if command == "keepalive":  # armed now; the kernel ends the dead ones itself
            assert set(outcomes) == {"armed"} and events == ["keepalive"] * len(acted)
            deadline = time.monotonic() + 15
            while still_there(stuck, evidence(info), sc, info) and time.monotonic() < deadline:
                time.sleep(0.2)
        else:
            # already-gone: a busy server may accept (and close) some of them itself
            assert set(outcomes) <= {"closed", "closing", "already-gone"}, result["outcomes"]
            assert outcomes.count("already-gone") < len(outcomes) / 2, outcomes
            assert events == ["intent"] * len(acted) + ["act"] * len(acted) + \
                ["verify"] * len(outcomes)
            assert len(acted) == len(outcomes)

        assert not still_there(stuck, evidence(info), sc, info)
        assert all(p.proc.poll() is None for p in info.programs.values()
                   if p.name == sc.expected_comm)  # the owner was not restarted
        assert sc.healthy_check(lab), sc.probe(lab)
    finally:
        sc.teardown(lab)
