"""Concurrent actors: two sockdoctors on the same sockets end each socket once, and each
claims only what it ended itself (docs/reliability.md, "Concurrent actors").

Before the fix both `kill --yes` runs claimed all sockets ("done" twice), and
apply_plan(plan) after another run had ended them said "shut down (was
CLOSE)" for each: a success for work that was not its own.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from hostile import Holder, audit_lines, done_cookies, kill_argv, run

import sockdoctor
from conftest import Script
from sockdoctor import KillPolicy
from sockdoctor.lab.netlab import SERVER_V4, Lab
from sockdoctor.model import TcpState

pytestmark = [pytest.mark.root, pytest.mark.slow]
N = 1000


def test_two_kills_at_once_end_each_socket_once(solo: Lab, tmp_path: Path) -> None:
    holder = Holder(solo)
    targets = holder.leak(N)
    logs = [tmp_path / "a.jsonl", tmp_path / "b.jsonl"]
    procs = [subprocess.Popen(kill_argv(solo, holder.port, log), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
             for log in logs]
    results = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    first, second = (done_cookies(log) for log in logs)
    assert len(first) + len(second) == N  # each ended once, by one of them
    assert set(first) | set(second) == targets and not set(first) & set(second)
    assert not holder.close_waits() & targets
    for log in logs:  # every other socket of the plan: said to be another's work
        acts = audit_lines(log, "act")
        assert {a["action"] for a in acts} <= {"done", "already-gone"}
        assert len(audit_lines(log, "intent")) == len(acts)


def test_kill_and_reap_at_once_each_claim_only_their_own(solo: Lab, tmp_path: Path) -> None:
    holder = Holder(solo)
    targets = holder.leak(N)
    policy = tmp_path / "reap.toml"
    policy.write_text(f'[[rule]]\nname = "adv"\nstate = "close-wait"\npid = {holder.pid}\n'
                      f'methods = ["fin"]\nmax_per_cycle = {N}\n')
    kill_log, reap_log = tmp_path / "kill.jsonl", tmp_path / "reap.jsonl"
    reap = subprocess.Popen(
        [sys.executable, "-m", "sockdoctor", "reap", "--policy", str(policy), "--netns",
         solo.server.netns, "--audit-log", str(reap_log), "--once", "--apply"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    kill = run(kill_argv(solo, holder.port, kill_log, "--rate", "400/s"))  # still at it
    out, err = reap.communicate(timeout=180)
    assert kill.returncode == 0 and reap.returncode == 0, (kill.stderr, err)
    by_kill, by_reap = done_cookies(kill_log), done_cookies(reap_log)
    assert len(by_kill) + len(by_reap) == N and set(by_kill) | set(by_reap) == targets
    # Who gets how many is scheduling (one batch under the actors' lock may take all);
    # whatever the split, each log accounts for every socket it planned, and claims
    # only what its own run ended.
    for log in (kill_log, reap_log):
        acts = audit_lines(log, "act")
        assert {a["action"] for a in acts} <= {"done", "already-gone"}
        assert len(audit_lines(log, "intent")) == len(acts)
    ended = re.search(r"ended (\d+) of (\d+)", out)
    assert ended and int(ended.group(1)) == len(by_reap), out  # the reaper's own account


def test_applying_a_plan_after_someone_else_ended_its_sockets(solo: Lab,
                                                              tmp_path: Path) -> None:
    holder = Holder(solo)
    targets = holder.leak(3)
    snap = sockdoctor.scan(f"state close-wait sport = :{holder.port}", netns=solo.server.netns)
    plan = sockdoctor.plan_kill(snap, host=sockdoctor.host_facts())
    assert [i.method for i in plan.items] == ["fin"] * 3
    first = run(kill_argv(solo, holder.port, tmp_path / "first.jsonl"))
    assert first.returncode == 0 and not holder.close_waits() & targets, first.stderr
    log = tmp_path / "late.jsonl"
    report = sockdoctor.apply_plan(plan, audit_log=str(log))
    assert [o.outcome for o in report.outcomes] == ["already-gone"] * 3
    assert report.ended_here == 0 and report.exit_code == 0
    assert [a["action"] for a in audit_lines(log, "act")] == ["already-gone"] * 3


KEEPER = """
ls = socket.create_server(("0.0.0.0", 0))
emit({"port": ls.getsockname()[1]})
held = []
while True:
    held += [ls.accept()[0] for _ in range(int(wait()))]
    emit(len(held))
"""


def test_destroy_does_not_claim_a_socket_another_run_has_shut_down(lab: Lab,
                                                                  tmp_path: Path) -> None:
    """The peer is gone, so after another run's fin the socket waits in LAST-ACK: still
    in the table, but already ended by that run; destroying it now is not ours to claim."""
    keeper = Script(lab, lab.server, KEEPER)
    port: int = keeper.read()["port"]  # type: ignore[index]
    peers = [lab.client.run(lambda: socket.create_connection((SERVER_V4, port)))
             for _ in range(3)]
    keeper.send("3")
    assert keeper.read() == 3
    for peer in peers:
        peer.close()
    query = f"state close-wait sport = :{port}"
    snap = sockdoctor.scan(query, netns=lab.server.netns)
    assert len(snap.sockets) == 3
    lab.cut_link()  # our FIN will never be acknowledged
    plan = sockdoctor.plan_kill(snap, KillPolicy(methods=("destroy",)),
                                host=sockdoctor.host_facts())
    first = run(kill_argv(lab, port, tmp_path / "first.jsonl"))
    assert {line["action"] for line in audit_lines(tmp_path / "first.jsonl", "act")} == \
        {"done"}, first.stdout
    now = sockdoctor.scan(f"sport = :{port}", netns=lab.server.netns, owners=False)
    assert {sk.state for sk in now.sockets if sk.state != TcpState.LISTEN} == \
        {TcpState.LAST_ACK}
    report = sockdoctor.apply_plan(plan, audit_log=str(tmp_path / "late.jsonl"))
    assert [o.outcome for o in report.outcomes] == ["already-gone"] * 3
    acts = audit_lines(tmp_path / "late.jsonl", "act")
    assert [a["action"] for a in acts] == ["already-gone"] * 3
    assert "already LAST-ACK when we came" in acts[0]["detail"]
