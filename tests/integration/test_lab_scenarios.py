"""Every lab scenario really produces its stuck sockets, and leaves nothing behind.

Each test starts one scenario in its own namespaces, scans them the way the
doctor will (inventory.scan with evidence), and checks the states, owners,
ports and side facts (accept queue, counters, threads, dead descriptors)
that the scenario promises; then that teardown removed every namespace.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from sockdoctor.errors import NotFoundError
from sockdoctor.inventory import scan
from sockdoctor.lab import REGISTRY, RunInfo, Scenario, ScenarioError, get, run
from sockdoctor.lab.netlab import CLIENT_V4, SERVER_V4, Lab
from sockdoctor.model import Snapshot, Socket, TcpState

RULES = {"never-closed", "accept-queue-not-drained", "client-pool-dead-connections",
         "backlog-or-slow-handler", "no-keepalive", "fin-wait-2-pileup", "fin-wait-1-pileup",
         "last-ack-stuck", "time-wait-port-pressure", "fd-pressure", "dead-socket-fds",
         "sysctl-audit"}
PORT_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")


# --- helpers ---------------------------------------------------------------------

def _gone(lab: Lab) -> bool:
    return not any(os.path.exists(h.path) for h in (lab.server, lab.client))


@contextmanager
def started(name: str) -> Iterator[tuple[Scenario, Lab, RunInfo]]:
    """Run a scenario for the body of the block, then check teardown left nothing."""
    scenario = REGISTRY[name]
    lab = scenario.new_lab()
    info = scenario.start(lab, timeout=20)
    try:
        yield scenario, lab, info
    finally:
        scenario.teardown(lab)
    assert _gone(lab), "teardown left a namespace behind"
    assert all(p.proc.poll() is not None for p in info.programs.values())


def evidence(netns: str) -> Snapshot:
    return scan(netns=netns, evidence=True)


def in_state(snap: Snapshot, state: TcpState, port: int) -> list[Socket]:
    """Sockets in `state` with `port` at either end."""
    return [sk for sk in snap.sockets
            if sk.state == state and port in (sk.local_port, sk.peer_port)]


def comms(snap: Snapshot, sk: Socket) -> set[str]:
    return {snap.processes[o.pid].comm for o in sk.owners}


def listener(snap: Snapshot, port: int) -> Socket:
    (lst,) = [sk for sk in snap.sockets if sk.state == TcpState.LISTEN and sk.local_port == port]
    return lst


def counters(snap: Snapshot, netns: str) -> dict[str, dict[str, int]]:
    (ns,) = [n for n in snap.namespaces if n.name == netns]
    return ns.counters


def sysctl(snap: Snapshot, netns: str, name: str) -> str:
    (ns,) = [n for n in snap.namespaces if n.name == netns]
    return ns.sysctls[name]


# --- the registry (no root needed) --------------------------------------------------

def test_registry_names_every_scenario_of_the_issue() -> None:
    assert set(REGISTRY) == {
        "forgot-close", "et-accept-return", "pool-idle-closed-by-server",
        "slow-handler-backlog", "shutdown-without-close", "peer-vanished-no-keepalive",
        "fin-wait-2-peer-never-closes", "time-wait-port-exhaustion"}
    for name, sc in REGISTRY.items():
        assert sc.name == name
        assert sc.expected_rule in RULES and set(sc.also_rules) <= RULES
        assert sc.expected_comm is None or len(sc.expected_comm) <= 15  # comm limit
        assert sc.kill_filter[:2] == ("--netns", "{netns}")
        assert sc.side in ("server", "client")
        assert sc.title and len(sc.description) > 100


def test_unknown_scenario_is_a_user_error() -> None:
    with pytest.raises(NotFoundError, match="known: forgot-close"):
        get("no-such-bug")


# --- one test per scenario ----------------------------------------------------------

@pytest.mark.root
def test_forgot_close_leaves_owned_close_wait_with_the_unread_fin() -> None:
    with started("forgot-close") as (sc, lab, info):
        snap = evidence(info.netns)
        stuck = in_state(snap, TcpState.CLOSE_WAIT, 8000)
        assert len(stuck) == 5
        assert all(sk.local_port == 8000 and sk.peer_addr == CLIENT_V4 for sk in stuck)
        assert all(comms(snap, sk) == {"echo-server"} for sk in stuck)
        assert {sk.recv_q for sk in stuck} == {1}  # the FIN, never read
        assert comms(snap, listener(snap, 8000)) == {sc.expected_comm}
        assert info.kill_args == ["--netns", lab.server.netns, "--port", "8000",
                                  "--state", "close-wait"]
        assert sc.healthy_check(lab)


@pytest.mark.root
def test_et_accept_return_leaves_the_queue_full_of_unowned_close_wait() -> None:
    with started("et-accept-return") as (sc, lab, info):
        snap = evidence(info.netns)
        stuck = in_state(snap, TcpState.CLOSE_WAIT, 8080)
        assert len(stuck) >= 3
        assert all(sk.inode == 0 and not sk.owners and sk.local_port == 8080 for sk in stuck)
        assert all(sk.recv_q > 1 for sk in stuck)  # the request and the FIN, never read
        lst = listener(snap, 8080)
        assert lst.recv_q == len(stuck)  # seed 002: Recv-Q == number of CLOSE_WAIT
        assert comms(snap, lst) == {"et-server"}
        (pid,) = {o.pid for o in lst.owners}
        threads = snap.processes[pid].threads or []
        assert any(t.syscall.startswith("epoll") for t in threads), threads
        assert not sc.healthy_check(lab)  # a new client waits in the queue as well
        assert sc.serves_while_stuck is False


@pytest.mark.root
def test_pool_idle_closed_by_server_leaves_close_wait_in_the_client() -> None:
    with started("pool-idle-closed-by-server") as (sc, lab, info):
        assert info.netns == lab.client.netns
        snap = evidence(info.netns)
        stuck = in_state(snap, TcpState.CLOSE_WAIT, 3306)
        assert len(stuck) == 6
        low, high = map(int, sysctl(snap, info.netns, "net.ipv4.ip_local_port_range").split())
        for sk in stuck:
            assert (sk.peer_addr, sk.peer_port) == (SERVER_V4, 3306)
            assert low <= sk.local_port <= high  # an ephemeral port: we are the client
            assert comms(snap, sk) == {"pool-client"} and sk.recv_q == 1
        # the server closed each one: FIN-WAIT-2, or still FIN-WAIT-1 for the last ones,
        # whose FIN the client (in delayed-ACK mode after a FIN) acknowledges up to 200 ms late
        server_snap = scan(netns=lab.server.netns)
        server_side = [*in_state(server_snap, TcpState.FIN_WAIT2, 3306),
                       *in_state(server_snap, TcpState.FIN_WAIT1, 3306)]
        assert {sk.peer_port for sk in server_side} == {sk.local_port for sk in stuck}
        assert sc.healthy_check(lab)


@pytest.mark.root
def test_slow_handler_backlog_fills_the_queue_and_overflows() -> None:
    with started("slow-handler-backlog") as (sc, lab, info):
        snap = evidence(info.netns)
        queued = [sk for sk in in_state(snap, TcpState.CLOSE_WAIT, 8088) if sk.inode == 0]
        assert len(queued) >= 5
        lst = listener(snap, 8088)
        assert lst.send_q == 32 and lst.recv_q >= len(queued)
        assert lst.recv_q >= lst.send_q  # the queue is full...
        assert counters(snap, info.netns)["TcpExt"]["ListenOverflows"] > 0  # ...and overflowed
        (pid,) = {o.pid for o in lst.owners}
        assert snap.processes[pid].comm == "slow-server"
        threads = snap.processes[pid].threads or []
        assert any(t.syscall in ("clock_nanosleep", "nanosleep") for t in threads), threads
        assert not any(t.syscall.startswith("epoll") for t in threads)
        assert not sc.healthy_check(lab)


@pytest.mark.root
def test_shutdown_without_close_keeps_descriptors_of_vanished_sockets() -> None:
    with started("shutdown-without-close") as (sc, lab, info):
        pid = info.pids["shut-server"]
        snap = evidence(info.netns)
        dead = [d for d in snap.dead_fds if d.pid == pid]
        assert len(dead) == 5 and {d.protocol for d in dead} == {"TCP"}
        live = {sk.inode for sk in snap.sockets}
        for d in dead:
            assert d.inode not in live
            assert os.readlink(f"/proc/{pid}/fd/{d.fd}") == f"socket:[{d.inode}]"
        # the namespace's TCP table holds only the listener: nothing for ss to show
        assert [(TcpState(sk.state), sk.local_port) for sk in snap.sockets] == [
            (TcpState.LISTEN, 9000)]
        assert comms(snap, snap.sockets[0]) == {"shut-server"}
        assert info.kill_args == ["--netns", lab.server.netns, "--pid", str(pid),
                                  "--dead-fds"]
        assert sc.healthy_check(lab)


@pytest.mark.root
def test_peer_vanished_leaves_established_without_keepalive() -> None:
    with started("peer-vanished-no-keepalive") as (sc, lab, info):
        assert info.programs["idle-client"].proc.poll() is not None  # the peer is gone
        link = subprocess.run(["ip", "-n", lab.client.netns, "link", "show", "eth0"],
                              capture_output=True)
        assert link.returncode != 0  # and so is its link
        snap = evidence(info.netns)
        stuck = in_state(snap, TcpState.ESTABLISHED, 5000)
        assert len(stuck) == type(sc).connections
        for sk in stuck:
            assert sk.local_port == 5000 and sk.peer_addr == CLIENT_V4
            assert comms(snap, sk) == {"idle-server"}
            assert sk.timer == 0  # no keepalive timer, nothing in flight: nothing will fail
        (pid,) = {o.pid for sk in stuck for o in sk.owners}
        blocked = [t for t in snap.processes[pid].threads or [] if t.syscall == "recvfrom"]
        assert len(blocked) >= len(stuck)
        assert sc.healthy_check(lab)  # over loopback: the server itself is fine


@pytest.mark.root
def test_fin_wait_2_pairs_with_close_wait_in_the_peer() -> None:
    with started("fin-wait-2-peer-never-closes") as (sc, lab, info):
        assert info.netns == lab.server.netns
        ours = in_state(evidence(info.netns), TcpState.FIN_WAIT2, 6000)
        assert len(ours) == type(sc).connections
        assert all(sk.local_port == 6000 and sk.inode == 0 and not sk.owners for sk in ours)
        snap = evidence(info.netns)
        assert comms(snap, listener(snap, 6000)) == {"fw2-server"}
        peer = evidence(lab.client.netns)
        theirs = in_state(peer, TcpState.CLOSE_WAIT, 6000)
        assert len(theirs) == type(sc).connections
        assert all(comms(peer, sk) == {"lazy-client"} for sk in theirs)
        assert {sk.peer_port for sk in ours} == {sk.local_port for sk in theirs}
        assert sc.healthy_check(lab)


@pytest.mark.root
def test_time_wait_exhausts_a_narrowed_port_range() -> None:
    host_range = PORT_RANGE.read_text().split()
    with started("time-wait-port-exhaustion") as (sc, lab, info):
        assert info.netns == lab.client.netns
        snap = evidence(info.netns)
        assert sysctl(snap, info.netns, "net.ipv4.ip_local_port_range") == "40000 40099"
        tw = in_state(snap, TcpState.TIME_WAIT, 80)
        assert len(tw) == 100  # every port of the range
        assert {sk.local_port for sk in tw} == set(range(40000, 40100))
        assert {(sk.peer_addr, sk.peer_port) for sk in tw} == {(SERVER_V4, 80)}
        assert len(tw) == len(snap.sockets)  # TIME_WAIT is all there is
        assert "EADDRNOTAVAIL" in " ".join(info.notes)
        assert sc.probe(lab) == "EADDRNOTAVAIL" and not sc.healthy_check(lab)
    # the sysctl was the namespace's own, not the host's
    assert PORT_RANGE.read_text().split() == host_range


# --- running, reporting, failing ----------------------------------------------------

@pytest.mark.root
def test_run_reports_the_commands_and_cleans_up() -> None:
    lines: list[str] = []
    info = run("forgot-close", duration=0, out=lines.append)
    assert info is not None and _gone(info.lab)
    text = "\n".join(lines)
    ns = info.netns
    for expected in (f"sockdoctor ls --netns {ns} state close-wait",
                     f"sockdoctor doctor --netns {ns}",
                     f"sockdoctor kill --netns {ns} --port 8000 --state close-wait",
                     "5 CLOSE-WAIT", "never-closed", "echo-server", f"removed {ns}"):
        assert expected in text


@pytest.mark.root
def test_run_keep_leaves_the_lab_running() -> None:
    lines: list[str] = []
    info = run("fin-wait-2-peer-never-closes", keep=True, out=lines.append)
    assert info is not None
    try:
        assert not _gone(info.lab)
        assert all(p.proc.poll() is None for p in (info.programs["fw2-server"],
                                                   info.programs["lazy-client"]))
        assert "sockdoctor lab clean" in lines[-1]
    finally:
        info.lab.down()  # only this lab: others may be running in parallel
    assert _gone(info.lab)


@pytest.mark.root
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_interrupted_run_removes_everything(sig: signal.Signals) -> None:
    code = "from sockdoctor.lab import run; run('peer-vanished-no-keepalive')"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        lines = []
        for line in proc.stdout or []:
            lines.append(line)
            if "press Ctrl-C" in line:
                break
        (names,) = [ln.split()[2:5:2] for ln in lines if ln.startswith("building namespaces")]
        pids = [int(ln.split()[2]) for ln in lines if ln.split()[1:2] == ["pid"]]
        assert len(pids) == 2
        assert all(os.path.exists(f"/run/netns/{n}") for n in names)
        proc.send_signal(sig)
        rest, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0 and "interrupted" in rest
    assert not any(os.path.exists(f"/run/netns/{n}") for n in names)
    assert not any(os.path.exists(f"/proc/{pid}") for pid in pids)


@pytest.mark.root
def test_a_scenario_that_never_gets_stuck_fails_clearly_and_cleans_up() -> None:
    impossible = dataclasses.replace(REGISTRY["forgot-close"], min_stuck=50)
    lab = impossible.new_lab()
    with pytest.raises(ScenarioError, match=r"at least 50 stuck sockets.*found 5"):
        impossible.start(lab, timeout=1)
    assert _gone(lab)
