"""The classic bugs of the seeds, each a scenario that reproduces it for real.

`REGISTRY` maps a scenario's name to its definition: what it reproduces,
which seed it comes from, what the doctor must conclude (rule, process,
port), and which `sockdoctor kill` arguments clear it. Every scenario runs
in its own pair of network namespaces (server 10.77.0.1, client 10.77.0.2).
"""

from __future__ import annotations

import os
import signal
import subprocess

from ..doctor.config import DEFAULT as DOCTOR
from ..model import DeadSocketFd, Snapshot, Socket, TcpState
from .netlab import Lab
from .scenario import RunInfo, Scenario, ScenarioError, probe


def _kill(port: int, state: str = "close-wait") -> tuple[str, ...]:
    return ("--netns", "{netns}", "--port", str(port), "--state", state)


def _unaccepted(sockets: list[Socket], state: TcpState, port: int) -> list[Socket]:
    """Sockets on a local port that no process holds: still in the accept queue."""
    return [sk for sk in sockets
            if sk.state == state and sk.local_port == port and sk.inode == 0]


def _listener(snap: Snapshot, port: int) -> Socket | None:
    return next((sk for sk in snap.sockets
                 if sk.state == TcpState.LISTEN and sk.local_port == port), None)


class ForgotClose(Scenario):
    clients = 5

    def launch(self, lab: Lab, run: RunInfo) -> None:
        self.server(lab, run, "echo-server", "echo_server")
        done = self.client(lab, run, "echo-client", "echo_client",
                           "--count", str(self.clients)).wait_event("done", 15)
        run.notes.append(f"echo-client made {done['connections']} connections, each answered "
                         f"(last answer: {done['last_answer']!r}) and closed by the client")


class EtAcceptReturn(Scenario):
    def launch(self, lab: Lab, run: RunInfo) -> None:
        self.server(lab, run, "et-server", "et_server", "--limit", "1")
        done = self.client(lab, run, "et-client", "burst_client", "--bursts", "3",
                           "--size", "10").wait_event("done", 15)
        run.notes.append(
            f"et-client holds the server's only slot (greeting {done['greeting']!r}), then "
            f"{done['connections']} clients connected in bursts and closed quickly; "
            f"{done['answered']} of them got any answer")

    def stuck_sockets(self, snap: Snapshot, run: RunInfo) -> list[Socket]:
        return _unaccepted(snap.sockets, TcpState.CLOSE_WAIT, self.expected_port)

    def reached(self, snap: Snapshot, run: RunInfo, stuck: list[Socket]) -> bool:
        lst = _listener(snap, self.expected_port)
        # seed 002's tell: the listener's queue holds exactly these sockets
        return (len(stuck) >= self.min_stuck and lst is not None
                and lst.recv_q == len(stuck))


class PoolIdleClosed(Scenario):
    pool_size = 6

    def launch(self, lab: Lab, run: RunInfo) -> None:
        self.server(lab, run, "db-server", "db_server", "--idle-timeout", "1.5")
        self.client(lab, run, "pool-client", "pool_client",
                    "--size", str(self.pool_size)).wait_event("done", 15)
        run.notes.append(f"pool-client opened {self.pool_size} connections to :3306, ran one "
                         "query on each and keeps them; db-server closes them after 1.5 s idle")


class SlowHandlerBacklog(Scenario):
    def launch(self, lab: Lab, run: RunInfo) -> None:
        self.server(lab, run, "slow-server", "slow_server", "--backlog", "32", "--work", "1.5")
        done = self.client(lab, run, "slow-client", "impatient_client", "--count", "48",
                           "--rate", "20", "--timeout", "0.3").wait_event("done", 20)
        outcomes = ", ".join(f"{n} {what}" for what, n in sorted(done["outcomes"].items()))
        run.notes.append(f"{done['connections']} clients, 20 per second, each waiting 0.3 s "
                         f"against a 1.5 s handler and a backlog of 32: {outcomes}")

    def stuck_sockets(self, snap: Snapshot, run: RunInfo) -> list[Socket]:
        return _unaccepted(snap.sockets, TcpState.CLOSE_WAIT, self.expected_port)


class ShutdownWithoutClose(Scenario):
    clients = 5
    needs_evidence = True

    def launch(self, lab: Lab, run: RunInfo) -> None:
        self.server(lab, run, "shut-server", "shut_server")
        self.client(lab, run, "shut-client", "echo_client",
                    "--count", str(self.clients)).wait_event("done", 15)
        run.notes.append(f"shut-client made {self.clients} connections; shut-server answered, "
                         "then shutdown() each one and kept it without close()")

    def stuck_sockets(self, snap: Snapshot, run: RunInfo) -> list[Socket]:
        return []  # the point: these sockets are in no TCP table

    def reached(self, snap: Snapshot, run: RunInfo, stuck: list[Socket]) -> bool:
        run.dead_fds = self.dead_fds(snap, run)
        return len(run.dead_fds) >= self.clients

    def dead_fds(self, snap: Snapshot, run: RunInfo) -> list[DeadSocketFd]:
        pid = run.programs["shut-server"].pid
        return [d for d in snap.dead_fds if d.pid == pid]

    def ls_filter(self) -> list[str]:
        return ["-p"]


class PeerVanished(Scenario):
    connections = DOCTOR.idle_warn_count  # dead peers accumulating: the doctor warns

    def launch(self, lab: Lab, run: RunInfo) -> None:
        self.server(lab, run, "idle-server", "idle_server")
        client = self.client(lab, run, "idle-client", "pool_client", "--query", "hello",
                             "--size", str(self.connections))
        client.wait_event("done", 15)
        lab.cut_link()  # the client host disappears: no FIN, no RST, nothing
        _kill_program(client.proc)
        run.notes.append(f"idle-client opened {self.connections} connections and went quiet; "
                         "then its link was removed and the program killed: no FIN, no RST")

    def reached(self, snap: Snapshot, run: RunInfo, stuck: list[Socket]) -> bool:
        gone = run.programs["idle-client"].proc.poll() is not None
        return gone and len(stuck) >= self.min_stuck

    def probe(self, lab: Lab) -> str:
        # The server's link is gone with the client's; a new client on its own host.
        return probe(lab.server, "127.0.0.1", self.expected_port, self.probe_timeout)


class FinWait2PeerNeverCloses(Scenario):
    # From the server alone orphaned FIN-WAIT-2 are only a pile-up from this many.
    connections = DOCTOR.fw2_orphan_warn

    def launch(self, lab: Lab, run: RunInfo) -> None:
        self.server(lab, run, "fw2-server", "reply_server", "--close-first")
        self.client(lab, run, "lazy-client", "pool_client",
                    "--size", str(self.connections)).wait_event("done", 15)
        run.notes.append(f"lazy-client made {self.connections} requests; fw2-server answered "
                         "and closed each one; lazy-client never closes its side")


class TimeWaitExhaustion(Scenario):
    port_range = (40000, 40099)

    def launch(self, lab: Lab, run: RunInfo) -> None:
        low, high = self.port_range
        _sysctl(lab.client.netns, "net.ipv4.ip_local_port_range", f"{low} {high}")
        self.server(lab, run, "tw-server", "reply_server")
        ended = self.client(lab, run, "tw-client", "tw_client").wait_event("exhausted", 20)
        run.facts.update(ended)
        run.notes.append(
            f"ip_local_port_range set to {low}-{high} in {lab.client.netns}; tw-client made "
            f"{ended['connections']} short connections, then connect() failed: "
            f"{ended['errno']} ({ended['message']})")

    def reached(self, snap: Snapshot, run: RunInfo, stuck: list[Socket]) -> bool:
        # every connection the client made, the last one included, has finished closing
        return len(stuck) >= max(self.min_stuck, run.facts["connections"])


def _kill_program(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=10)


def _sysctl(netns: str, name: str, value: str) -> None:
    """Set a per-namespace sysctl inside a lab namespace."""
    done = subprocess.run(["ip", "netns", "exec", netns, "sysctl", "-qw", f"{name}={value}"],
                          capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise ScenarioError(f"sysctl {name} in {netns}: {done.stderr.strip()}")


_SCENARIOS: list[Scenario] = [
    ForgotClose(
        name="forgot-close", title="an echo server that never closes its connections",
        seed="003",
        description=(
            "Seed 003's server.c: the echo server reads one request per connection, "
            "answers, and goes back to accept() without ever calling close(). Every "
            "client that hangs up leaves a CLOSE_WAIT socket owned by echo-server on "
            "port 8000, Recv-Q 1 (the FIN it never read). The kernel never times them "
            "out; only close() (or the process exiting) ends them."),
        expected_rule="never-closed", expected_comm="echo-server", expected_port=8000,
        kill_filter=_kill(8000), stuck_state=TcpState.CLOSE_WAIT, min_stuck=5),
    EtAcceptReturn(
        name="et-accept-return",
        title="an edge-triggered epoll listener that returns instead of draining accept()",
        seed="002",
        description=(
            "Seed 002's epoll server: the listening socket is registered with EPOLLET and "
            "the server allows one connection, which a long-lived client holds. Over the "
            "limit it accepts one connection, closes it and returns instead of draining "
            "the queue until EAGAIN. Clients connect in bursts and close quickly: the "
            "connections of each burst stay in the accept queue and turn into CLOSE_WAIT "
            "that no process owns; the listener's Recv-Q equals their number, and "
            "et-server sleeps in epoll_wait. New clients wait in the queue too."),
        expected_rule="accept-queue-not-drained", expected_comm="et-server",
        expected_port=8080, kill_filter=_kill(8080), stuck_state=TcpState.CLOSE_WAIT,
        serves_while_stuck=False, healthy_answers=frozenset({"answered", "busy"}),
        probe_timeout=1.5),
    PoolIdleClosed(
        name="pool-idle-closed-by-server",
        title="a connection pool that never notices the server closed its idle connections",
        seed="001", side="client",
        description=(
            "Seed 001's MySQL case: db-server on port 3306 (playing a database or a load "
            "balancer) closes connections idle for 1.5 s. pool-client keeps its pooled "
            "connections without validating them, so each one is ACKed and left in "
            "CLOSE_WAIT on the client side, on an ephemeral local port towards :3306. "
            "They pile up for as long as the client runs, and can exhaust its ports."),
        expected_rule="client-pool-dead-connections", expected_comm="pool-client",
        expected_port=3306, kill_filter=_kill(3306), stuck_state=TcpState.CLOSE_WAIT,
        min_stuck=6),
    SlowHandlerBacklog(
        name="slow-handler-backlog",
        title="a handler slower than its clients, behind a big backlog",
        seed="001",
        description=(
            "Seed 001, causes 2 and 3: slow-server handles one request at a time and each "
            "takes 1.5 s; clients arrive 20 per second and give up after 0.3 s. Their "
            "connections wait in an accept queue of 32 until long after the client has "
            "closed them: CLOSE_WAIT nobody has accept()ed, on port 8088. When the queue "
            "is full the kernel drops new handshakes (ListenOverflows, ListenDrops). The "
            "process is busy in its handler, not idle."),
        expected_rule="backlog-or-slow-handler", expected_comm="slow-server",
        expected_port=8088, kill_filter=_kill(8088), stuck_state=TcpState.CLOSE_WAIT,
        serves_while_stuck=False, also_rules=("accept-queue-not-drained",), min_stuck=5,
        probe_timeout=3.5),
    ShutdownWithoutClose(
        name="shutdown-without-close", title="shutdown() taken for close() in Python",
        seed="004",
        description=(
            "Seed 004's Python pitfall: shut-server ends each session with "
            "shutdown(SHUT_RDWR) and keeps the socket object instead of closing it. The "
            "connections finish closing and vanish from every TCP table, but each one "
            "still takes a descriptor and a kernel socket in shut-server, which listens "
            "on port 9000. ss shows nothing; only the process's fd table has them."),
        expected_rule="dead-socket-fds", expected_comm="shut-server", expected_port=9000,
        kill_filter=("--netns", "{netns}", "--pid", "{pid}", "--dead-fds"),
        stuck_state=TcpState.CLOSE),
    PeerVanished(
        name="peer-vanished-no-keepalive",
        title="a peer that vanished without a FIN, on connections without keepalive",
        seed="003",
        description=(
            "idle-client opens connections to idle-server (port 5000, no SO_KEEPALIVE) "
            "and goes quiet; then its host vanishes: the link is removed and the program "
            "killed, so no FIN or RST is ever sent. Nothing travels on an idle "
            "connection, so nothing fails: the server's sockets stay ESTABLISHED and "
            "their threads blocked in recv() forever. Seed 003's fix (4): SO_KEEPALIVE "
            "with TCP_KEEPIDLE/INTVL/CNT, or an application heartbeat."),
        expected_rule="no-keepalive", expected_comm="idle-server", expected_port=5000,
        kill_filter=(*_kill(5000, "established"), "--method", "destroy"),
        stuck_state=TcpState.ESTABLISHED, min_stuck=PeerVanished.connections,
        doctor_args=("--idle-after", "1s"), doctor_after=4.5),
    FinWait2PeerNeverCloses(
        name="fin-wait-2-peer-never-closes",
        title="our side closed, the peer's program never does",
        seed="004",
        description=(
            "Seed 004's pair: fw2-server (ours, port 6000) answers each request and "
            "closes; lazy-client (the peer) never closes its side. Ours sits in "
            "FIN_WAIT2, orphaned (no descriptor: the program did close), until "
            "net.ipv4.tcp_fin_timeout; the peer's sockets sit in CLOSE_WAIT forever, "
            "which is where the fix belongs. Look at the server namespace for "
            "FIN_WAIT2 and at the client namespace for the paired CLOSE_WAIT."),
        expected_rule="fin-wait-2-pileup", expected_comm="fw2-server", expected_port=6000,
        kill_filter=_kill(6000, "fin-wait-2"), stuck_state=TcpState.FIN_WAIT2,
        also_rules=("never-closed",), min_stuck=FinWait2PeerNeverCloses.connections),
    TimeWaitExhaustion(
        name="time-wait-port-exhaustion",
        title="short connections from one address use up the ephemeral ports",
        seed="003, 004", side="client",
        description=(
            "Seeds 003 and 004: tw-client opens and closes short connections to one "
            "server address:port (tw-server, port 80) from one source address, closing "
            "first, so each leaves a TIME_WAIT for 60 s. Its namespace has "
            "net.ipv4.ip_local_port_range narrowed to 100 ports, so connect() soon fails "
            "with EADDRNOTAVAIL and TIME_WAIT is nearly all there is. No process owns a "
            "TIME_WAIT socket; the doctor names the remote address:port."),
        expected_rule="time-wait-port-pressure", expected_comm=None, expected_port=80,
        kill_filter=_kill(80, "time-wait"), stuck_state=TcpState.TIME_WAIT,
        serves_while_stuck=False, min_stuck=90),
]

REGISTRY: dict[str, Scenario] = {sc.name: sc for sc in _SCENARIOS}
