"""The machinery every lab scenario shares: start programs, wait, probe, tear down.

A scenario builds its hosts with netlab.Lab, starts its programs there, and
polls the kernel (inventory.scan, owners only when needed) until the stuck
sockets it is about exist; the concrete scenarios live in scenarios.py.
"""

from __future__ import annotations

import errno
import json
import os
import select
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import IO, Any

from ..errors import PermissionDeniedError, SockdoctorError
from ..inventory import scan
from ..model import DeadSocketFd, Snapshot, Socket, TcpState
from .netlab import Host, Lab, LabError

PROGRAMS = "sockdoctor.lab.programs"
POLL_INTERVAL = 0.1


class ScenarioError(SockdoctorError):
    """A lab scenario could not be built or did not reach its stuck state."""


class Program:
    """A lab program running in a namespace, reporting JSON status lines on stdout."""

    def __init__(self, name: str, proc: subprocess.Popen, stderr: IO[bytes]) -> None:
        self.name = name
        self.proc = proc
        self._stderr = stderr
        self._buffer = b""

    @property
    def pid(self) -> int:
        return self.proc.pid  # `ip netns exec` execs the program: same pid

    def wait_event(self, event: str, timeout: float) -> dict[str, Any]:
        """The next status line with this event; a clear error if it never comes."""
        deadline = time.monotonic() + timeout
        while True:
            line = self._next_line(deadline)
            if line is None:
                raise ScenarioError(f"{self.name} did not report '{event}' within {timeout:.0f}s"
                                    + self.failure())
            record = json.loads(line)
            if record.get("event") == event:
                return record

    def _next_line(self, deadline: float) -> bytes | None:
        stdout = self.proc.stdout
        assert stdout is not None
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([stdout], [], [], left)[0]:
                return None
            chunk = os.read(stdout.fileno(), 4096)
            if not chunk:
                return None
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line

    def failure(self) -> str:
        """Exit status and the end of stderr, for error messages."""
        code = self.proc.poll()
        self._stderr.seek(0)
        tail = self._stderr.read().decode(errors="replace").strip().splitlines()[-5:]
        state = "still running" if code is None else f"exited with status {code}"
        return f" ({self.name} {state}{': ' if tail else ''}{' | '.join(tail)})"


@dataclass
class RunInfo:
    """What a started scenario is made of, and where to look at it."""

    scenario: str
    lab: Lab
    netns: str  # where the stuck sockets are: point the doctor here
    peer_netns: str | None  # the other end, when it is in another namespace
    port: int
    programs: dict[str, Program] = field(default_factory=dict)
    kill_args: list[str] = field(default_factory=list)
    stuck: list[Socket] = field(default_factory=list)
    dead_fds: list[DeadSocketFd] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)  # what the programs reported
    seconds: float = 0.0

    @property
    def pids(self) -> dict[str, int]:
        """Process name (comm) -> pid of every program the scenario started."""
        return {name: prog.pid for name, prog in self.programs.items()}

    @property
    def namespaces(self) -> list[str]:
        hosts = {self.lab.server.netns, self.lab.client.netns}
        return sorted(hosts)


@dataclass(frozen=True)
class Scenario:
    """One classic bug, reproduced for real. Subclasses launch and recognise it.

    expected_comm: the process the doctor must name (None when the stuck
        sockets can have no owner and no listener points at one).
    expected_port: the service port the doctor must name: the local port on
        a server, the remote port on a client.
    kill_filter: arguments of `sockdoctor kill` that clear the stuck sockets;
        "{netns}" and "{pid}" are filled in by start().
    side: which lab host holds the stuck sockets, "server" or "client".
    serves_while_stuck: whether a new client still gets an answer while the
        bug is present (False when refusing service is part of the symptom).
    healthy_answers: probe outcomes that count as served; seed 002's server
        has one slot, held for good, so "busy" is the best it can answer.
    also_rules: other rules that may rightly fire on the same scene.
    doctor_args: options of `sockdoctor doctor` that judge this leak, seconds
        old, as the defaults judge one minutes or hours old on a real host.
    doctor_after: seconds after start() from which those options see it.
    """

    name: str
    title: str
    seed: str
    description: str
    expected_rule: str
    expected_comm: str | None
    expected_port: int
    kill_filter: tuple[str, ...]
    stuck_state: TcpState
    side: str = "server"
    serves_while_stuck: bool = True
    also_rules: tuple[str, ...] = ()
    min_stuck: int = 3
    probe_timeout: float = 2.0
    healthy_answers: frozenset[str] = frozenset({"answered"})
    doctor_args: tuple[str, ...] = ("--stuck-after", "1s")
    doctor_after: float = 1.2

    # --- the public face ---------------------------------------------------

    def new_lab(self) -> Lab:
        """The (not yet built) network this scenario runs in."""
        return Lab(self.name)

    def start(self, lab: Lab, timeout: float = 20.0) -> RunInfo:
        """Build the network, start the programs, wait until the stuck sockets exist.

        On any failure everything started so far is removed again.
        """
        began = time.monotonic()
        try:
            _bring_up(lab)
            run = RunInfo(scenario=self.name, lab=lab, netns=self.host(lab).netns,
                          peer_netns=self.peer(lab).netns if lab.pair else None,
                          port=self.expected_port)
            self.launch(lab, run)
            self._wait_stuck(lab, run, timeout)
            pid = run.programs[self.expected_comm].pid if self.expected_comm in run.programs else 0
            run.kill_args = [a.format(netns=run.netns, pid=pid) for a in self.kill_filter]
        except BaseException:
            lab.down()
            raise
        run.seconds = time.monotonic() - began
        return run

    def healthy_check(self, lab: Lab) -> bool:
        """Does a new client still get an answer from the server?"""
        return self.probe(lab) in self.healthy_answers

    def probe(self, lab: Lab) -> str:
        """Try one request as a new client: answered, busy, closed, timed out, or an errno name."""
        return probe(lab.client, lab.server.addr4, self.expected_port, self.probe_timeout)

    def teardown(self, lab: Lab) -> None:
        """Stop every program and remove the namespaces."""
        lab.down()

    def host(self, lab: Lab) -> Host:
        """The host whose namespace holds the stuck sockets."""
        return lab.server if self.side == "server" else lab.client

    def peer(self, lab: Lab) -> Host:
        return lab.client if self.side == "server" else lab.server

    def ls_filter(self) -> list[str]:
        """What to type after `sockdoctor ls` to see the stuck sockets."""
        return ["state", self.stuck_state.filter_name]

    # --- what subclasses provide ------------------------------------------

    def launch(self, lab: Lab, run: RunInfo) -> None:
        raise NotImplementedError

    def stuck_sockets(self, snap: Snapshot, run: RunInfo) -> list[Socket]:
        """The sockets this scenario is about, as found in a scan of run.netns: in
        stuck_state, on the service port (local on a server, remote on a client)."""
        on_server = self.side == "server"
        return [sk for sk in snap.sockets if sk.state == self.stuck_state
                and (sk.local_port if on_server else sk.peer_port) == self.expected_port]

    def reached(self, snap: Snapshot, run: RunInfo, stuck: list[Socket]) -> bool:
        return len(stuck) >= self.min_stuck

    needs_evidence = False  # poll with a full evidence scan (dead descriptors)

    # --- helpers for subclasses --------------------------------------------

    def spawn(self, lab: Lab, run: RunInfo, host: Host, comm: str, module: str,
              *args: str) -> Program:
        """Start `python -m sockdoctor.lab.programs.MODULE --comm COMM ARGS` on a host."""
        errfile = tempfile.TemporaryFile(prefix="sdlab-")  # noqa: SIM115 - kept by Program
        proc = lab.python(host, f"{PROGRAMS}.{module}", "--comm", comm, *args,
                          stdout=subprocess.PIPE, stderr=errfile, stdin=subprocess.DEVNULL,
                          bufsize=0)
        prog = Program(comm, proc, errfile)
        run.programs[comm] = prog
        return prog

    def server(self, lab: Lab, run: RunInfo, comm: str, module: str, *args: str) -> Program:
        """Start a server on the server host and wait until it listens."""
        prog = self.spawn(lab, run, lab.server, comm, module, "--port",
                          str(self.expected_port), *args)
        prog.wait_event("ready", timeout=15)
        return prog

    def client(self, lab: Lab, run: RunInfo, comm: str, module: str, *args: str) -> Program:
        """Start a client on the client host, talking to the server's address."""
        return self.spawn(lab, run, lab.client, comm, module, "--host", lab.server.addr4,
                          "--port", str(self.expected_port), *args)

    def _wait_stuck(self, lab: Lab, run: RunInfo, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            snap = scan(netns=run.netns, owners=False, evidence=self.needs_evidence)
            stuck = self.stuck_sockets(snap, run)
            if self.reached(snap, run, stuck):
                run.stuck = stuck
                return
            if time.monotonic() > deadline:
                raise ScenarioError(
                    f"lab {self.name}: expected at least {self.min_stuck} stuck sockets "
                    f"({self.stuck_state.ss_name}, port {self.expected_port}) in "
                    f"{run.netns} within {timeout:.0f}s, found {len(stuck)}"
                    + "".join(p.failure() for p in run.programs.values()))
            time.sleep(POLL_INTERVAL)


def _bring_up(lab: Lab) -> None:
    if os.path.exists(lab.server.path):
        return  # already built by the caller
    try:
        lab.up()
    except LabError as exc:
        if os.geteuid() != 0:
            raise PermissionDeniedError(f"the lab needs root: {exc}") from exc
        raise ScenarioError(f"could not build the lab network: {exc}") from exc


def probe(host: Host, addr: str, port: int, timeout: float,
          request: bytes = b"GET /health HTTP/1.0\r\n\r\n") -> str:
    """One request from inside `host`.

    Returns "answered", "busy" (turned away with a message), "closed" (EOF
    without an answer), "timed out", or the errno name of a failure
    (ECONNREFUSED, EADDRNOTAVAIL, ...).
    """
    def attempt() -> str:
        with socket.create_connection((addr, port), timeout=timeout) as sock:
            sock.sendall(request)
            data = sock.recv(4096)
        if not data:
            return "closed"
        return "busy" if data.startswith(b"busy") else "answered"

    try:
        return host.run(attempt)
    except TimeoutError:
        return "timed out"
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, type(exc).__name__)


def count_states(sockets: Sequence[Socket]) -> dict[str, int]:
    """ss-style state name -> number of sockets."""
    counts: dict[str, int] = {}
    for sk in sockets:
        name = TcpState(sk.state).ss_name
        counts[name] = counts.get(name, 0) + 1
    return counts
