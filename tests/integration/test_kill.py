"""`sockdoctor kill` on real connections across the lab's veth pair.

A server program (lab.server) holds connections on port 7000 and answers
echo requests on port 7001; a client program (lab.client) opens them, half-
or fully closes them and watches what it gets back. Each case drives the
server's end of three connections into one state, then the kill runs (the
CLI mostly, the Python API for a few) while a thread of the test keeps doing
request/response with the same server on a connection of its own. Checked:
the outcome, the kernel's view afterwards, what the peer saw, the owner's
descriptor, the audit log, and that the owner served every request.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import sockdoctor
from conftest import Script, Unprivileged
from sockdoctor import inventory
from sockdoctor.lab.netlab import CLIENT_V4, SERVER_V4, SERVER_V6, Lab
from sockdoctor.lab.scenario import probe
from sockdoctor.model import Snapshot, Socket, TcpState

pytestmark = pytest.mark.root
PORT, HEALTH = 7000, 7001
ORPHAN_STATES = {TcpState.FIN_WAIT1, TcpState.FIN_WAIT2, TcpState.LAST_ACK, TcpState.CLOSING,
                 TcpState.TIME_WAIT}
AUDIT_FIELDS = {"time", "user", "event", "netns", "netns_inode", "local", "peer", "inode",
                "cookie", "pid", "comm", "fd", "state", "method", "detail"}

# The owner: keeps what it accepts on PORT (accepting only when told), echoes on HEALTH.
SERVER = """
import subprocess, threading
FAM = socket.AF_INET6 if ":" in ADDR else socket.AF_INET

def listener(port):
    s = socket.socket(FAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((ADDR, port))
    s.listen(64)
    return s

ls, hs = listener(PORT), listener(HEALTH)
conns = []

def echo(c):
    with c:
        while data := c.recv(4096):
            c.sendall(data)

def health():
    while True:
        c, _ = hs.accept()
        threading.Thread(target=echo, args=(c,), daemon=True).start()

def look(c):  # what the program sees on its socket now
    try:
        c.settimeout(1.0)
        return "data" if c.recv(100) else "eof"
    except socket.timeout:
        return "timeout"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))

threading.Thread(target=health, daemon=True).start()
emit("ready")
while True:
    cmd, _, arg = wait().strip().partition(" ")
    if cmd == "accept":
        new = [ls.accept()[0] for _ in range(int(arg))]
        conns.extend(new)
        emit([{"fd": c.fileno(), "inode": os.fstat(c.fileno()).st_ino} for c in new])
    elif cmd == "shutwr":
        for c in conns:
            c.shutdown(socket.SHUT_WR)
        emit("ok")
    elif cmd == "close":
        for c in conns:
            c.close()
        conns.clear()
        emit("ok")
    elif cmd == "look":
        emit([look(c) for c in conns])
    elif cmd == "blocking":  # the listener's O_NONBLOCK, shared with any duplicate of it
        emit(os.get_blocking(ls.fileno()))
    elif cmd == "run":  # a program this process starts: its own sockets are its ancestor's
        done = subprocess.run(json.loads(arg), capture_output=True, text=True)
        emit({"rc": done.returncode, "out": done.stdout, "err": done.stderr})
"""

# The peer: opens connections to PORT; a watcher per connection reports the
# first thing recv() returns and then closes, as a well-behaved client does.
CLIENT = """
import threading
FAM = socket.AF_INET6 if ":" in ADDR else socket.AF_INET
conns, watchers, seen = [], [], {}

def connect(sport):
    c = socket.socket(FAM)
    if sport:
        c.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        c.bind(("", sport))
    c.connect((ADDR, PORT))
    return c

def watch(i, c):
    try:
        seen[i] = "data" if c.recv(100) else "eof"
    except OSError as e:
        seen[i] = errno.errorcode.get(e.errno, str(e.errno))
    c.close()

def poke(c):  # read; after EOF write: a reset shows on one of the two
    c.settimeout(1.0)
    try:
        if c.recv(100):
            return "data"
        c.send(b"x")
        return "eof"
    except socket.timeout:
        return "timeout"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))

emit("ready")
while True:
    cmd, _, arg = wait().strip().partition(" ")
    if cmd == "connect":
        n, _, sport = arg.partition(" ")
        new = [connect(int(sport or 0)) for _ in range(int(n))]
        conns.extend(new)
        emit([c.getsockname()[1] for c in new])
    elif cmd == "shutwr":
        for c in conns:
            c.shutdown(socket.SHUT_WR)
        emit("ok")
    elif cmd == "watch":
        for i, c in enumerate(conns):
            t = threading.Thread(target=watch, args=(i, c), daemon=True)
            t.start()
            watchers.append(t)
        emit("ok")
    elif cmd == "seen":
        end = time.monotonic() + float(arg)
        for t in watchers:
            t.join(max(0.0, end - time.monotonic()))
        emit([seen.get(i, "nothing") for i in range(len(conns))])
    elif cmd == "poke":
        emit([poke(c) for c in conns])
    elif cmd == "close":
        for c in conns:
            c.close()
        emit("ok")
    elif cmd == "reset":  # abortive close: RST, no TIME-WAIT on either side
        for c in conns:
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\\x01\\0\\0\\0\\0\\0\\0\\0")
            c.close()
        conns.clear()
        emit("ok")
"""

# Where each case leaves the server's end, how to select it, who holds it.
# fin-wait-2: the program closed, the kernel holds the orphan; fin-wait-2-held:
# the program shut it down and keeps the descriptor (seed 004's pitfall).
STATE = {"close-wait": TcpState.CLOSE_WAIT, "queued": TcpState.CLOSE_WAIT,
         "fin-wait-2": TcpState.FIN_WAIT2, "fin-wait-2-held": TcpState.FIN_WAIT2,
         "established": TcpState.ESTABLISHED, "time-wait": TcpState.TIME_WAIT}
OWNED = {"close-wait", "established", "fin-wait-2-held"}
# Which methods can end each case, and what auto chooses.
APPLIES = {"close-wait": {"fin", "destroy", "close", "rst"},
           "queued": {"drain", "destroy", "rst"},
           "fin-wait-2": {"destroy", "rst"},
           "fin-wait-2-held": {"destroy", "close", "rst"},
           "established": {"fin", "destroy", "close", "rst"},
           "time-wait": {"destroy", "rst"}}
AUTO = {"close-wait": "fin", "queued": "drain", "fin-wait-2": "destroy",
        "fin-wait-2-held": "destroy", "established": "fin", "time-wait": "destroy"}
# What the peer shows afterwards, and the words of the plan that say so: its read
# returns EOF (our FIN) or fails (a reset). Our FIN-WAIT-2's peer has read our FIN
# long ago: only a write tells, and a reset in CLOSE-WAIT reads as EPIPE; an
# orphaned FIN-WAIT-2 is a bare timer the kernel drops without sending anything.
PEER = {"fin": ("eof", "EOF"), "close": ("eof", "EOF"), "drain": ("eof", "EOF"),
        "destroy": ("ECONNRESET", "ECONNRESET"), "rst": ("ECONNRESET", "ECONNRESET")}
PEER_IN = {("fin-wait-2", "destroy"): ("eof", "next write is answered with"),
           ("fin-wait-2", "rst"): ("EPIPE", "EPIPE"),
           ("fin-wait-2-held", "destroy"): ("EPIPE", "EPIPE"),
           ("fin-wait-2-held", "rst"): ("EPIPE", "EPIPE"),
           ("fin-wait-2-held", "close"): ("eof", "our FIN went out already"),
           ("time-wait", "destroy"): (None, "closed its side already"),
           ("time-wait", "rst"): (None, "closed its side already")}
# What the owning program's next read shows on an ESTABLISHED socket it still holds.
# close leaves an unconnected placeholder on the descriptor: reading it is ENOTCONN.
OWNER_SEES = {"fin": "eof", "destroy": "ECONNABORTED", "rst": "ECONNRESET",
              "close": "ENOTCONN"}


# --- the scene -------------------------------------------------------------------

class Traffic:
    """Request/response with the owner on a connection of its own, until stopped."""

    def __init__(self, lab: Lab, addr: str) -> None:
        self.lab, self.addr = lab, addr
        self.count = 0
        self.errors: list[str] = []
        self.ready, self.stop = threading.Event(), threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Traffic:
        self.thread.start()
        assert self.ready.wait(10), self.errors
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10)

    def _run(self) -> None:
        try:
            self.lab.client.run(self._talk)
        except Exception as exc:  # the thread reports, the test asserts
            self.errors.append(repr(exc))
        finally:
            self.ready.set()

    def _talk(self) -> None:
        with socket.create_connection((self.addr, HEALTH), timeout=5) as sock:
            while not self.stop.is_set():
                message = f"request {self.count}\n".encode()
                sock.sendall(message)
                answer = b""
                while len(answer) < len(message):
                    chunk = sock.recv(len(message) - len(answer))
                    if not chunk:
                        raise ConnectionError("the server closed the health connection")
                    answer += chunk
                if answer != message:
                    self.errors.append(f"asked {message!r}, got {answer!r}")
                self.count += 1
                self.ready.set()


@dataclass
class Run:
    """One `sockdoctor kill` run: exit code, output, and the parsed JSON report."""

    rc: int
    out: str
    err: str
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def items(self) -> list[dict[str, Any]]:
        return self.report["plan"]["items"]

    @property
    def outcomes(self) -> list[dict[str, Any]]:
        return self.report["outcomes"]


@dataclass
class Scene:
    lab: Lab
    server: Script
    client: Script
    addr: str
    audit: Path
    fds: list[dict[str, int]] = field(default_factory=list)  # what the server accepted
    ports: list[int] = field(default_factory=list)  # the client's ends

    @property
    def netns(self) -> str:
        return self.lab.server.netns

    def scan(self) -> Snapshot:
        return inventory.scan(netns=self.netns, owners=False)  # inode 0: nobody holds it

    def ours(self) -> list[Socket]:
        """The server's ends of connections on PORT."""
        return [sk for sk in self.scan().sockets
                if sk.local_port == PORT and sk.state != TcpState.LISTEN]

    def wait_for(self, state: TcpState, n: int = 3, owned: bool | None = None) -> list[Socket]:
        for _ in range(300):
            found = [sk for sk in self.ours() if sk.state == state]
            if len(found) == n and (owned is None or all(bool(sk.inode) == owned
                                                         for sk in found)):
                return found
            time.sleep(0.01)
        raise AssertionError(f"never saw {n} x {state.name}: {self.ours()}")

    def tell(self, script: Script, command: str) -> Any:
        script.send(command)
        return script.read()

    def kill(self, *args: str, env: dict[str, str] | None = None, as_json: bool = True,
             audit: bool = True) -> Run:
        argv = [sys.executable, "-m", "sockdoctor", "kill", "--netns", self.netns, *args]
        if audit:
            argv += ["--audit-log", str(self.audit)]
        if as_json:
            argv.append("--json")
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60,
                              stdin=subprocess.DEVNULL, env=env)
        run = Run(done.returncode, done.stdout, done.stderr)
        if as_json and done.stdout.strip():
            run.report = json.loads(done.stdout)
        return run

    def audit_lines(self, event: str | None = None) -> list[dict[str, Any]]:
        if not self.audit.exists():
            return []
        lines = [json.loads(line) for line in self.audit.read_text().splitlines()]
        return [line for line in lines if event is None or line["event"] == event]

    def serves(self) -> bool:
        """A new client still gets its answer."""
        return probe(self.lab.client, self.addr, HEALTH, 3.0) == "answered"

    def fd_target(self, fd: int) -> str | None:
        try:
            return os.readlink(f"/proc/{self.server.pid}/fd/{fd}")
        except FileNotFoundError:
            return None


def make_scene(lab: Lab, tmp_path: Path, addr: str = SERVER_V4) -> Scene:
    ports = f"ADDR, PORT, HEALTH = {addr!r}, {PORT}, {HEALTH}\n"
    server = Script(lab, lab.server, ports + SERVER)
    client = Script(lab, lab.client, ports + CLIENT)
    assert server.read() == "ready" and client.read() == "ready"
    return Scene(lab, server, client, addr, tmp_path / "audit.jsonl")


@pytest.fixture
def scene(lab: Lab, tmp_path: Path) -> Scene:
    return make_scene(lab, tmp_path)


def build(sc: Scene, case: str, n: int = 3) -> list[Socket]:
    """Drive the server's end of `n` connections into the case's state."""
    tell = sc.tell
    sc.ports = tell(sc.client, f"connect {n}")
    if case != "queued":
        sc.fds = tell(sc.server, f"accept {n}")
    if case in ("close-wait", "queued"):
        tell(sc.client, "shutwr")
    if case == "fin-wait-2-held":
        tell(sc.server, "shutwr")
    if case in ("fin-wait-2", "time-wait"):
        tell(sc.server, "close")
        sc.wait_for(TcpState.FIN_WAIT2, n, owned=False)
    if case == "time-wait":
        tell(sc.client, "close")
    if case in ("close-wait", "queued", "established"):
        tell(sc.client, "watch")
    return sc.wait_for(STATE[case], n, owned=case in OWNED)


def peer_view(sc: Scene, case: str) -> list[str]:
    if case.startswith("fin-wait-2"):  # it has read our FIN long ago: only a write tells
        return sc.tell(sc.client, "poke")
    return sc.tell(sc.client, "seen 3")


def gone_or_orphaned(before: list[Socket], after: Snapshot) -> list[Socket]:
    """The sockets of `before` that are still there, held by a program or not closing."""
    now = {sk.cookie: sk for sk in after.sockets}
    survivors = []
    for sk in before:
        found = now.get(sk.cookie)
        if found is not None and not (found.inode == 0 and found.state in ORPHAN_STATES):
            survivors.append(found)
    return survivors


def unchanged(before: list[Socket], after: list[Socket]) -> bool:
    return {(sk.cookie, sk.state, sk.inode) for sk in before} == \
        {(sk.cookie, sk.state, sk.inode) for sk in after}


# --- every method on every state ---------------------------------------------------

APPLICABLE = [(case, method) for case in STATE for method in [*sorted(APPLIES[case]), "auto"]]


@pytest.mark.parametrize(("case", "method"), APPLICABLE,
                         ids=[f"{c}-{m}" for c, m in APPLICABLE])
def test_method_ends_the_socket(scene: Scene, case: str, method: str) -> None:
    targets = build(scene, case)
    chosen = AUTO[case] if method == "auto" else method
    with Traffic(scene.lab, scene.addr) as traffic:
        before = traffic.count
        run = scene.kill("--port", str(PORT), "--state", STATE[case].filter_name,
                         "--method", method, "--yes")
        during = traffic.count - before
    assert run.rc == 0, (run.err, run.outcomes)
    assert [i["method"] for i in run.items] == [chosen] * len(targets)
    assert {i["socket"]["cookie"] for i in run.items} == {sk.cookie for sk in targets}
    assert {o["outcome"] for o in run.outcomes} <= {"closed", "closing"}, run.outcomes
    assert not gone_or_orphaned(targets, scene.scan())

    # the owner: kept running, answered every request during the kill and a new client after
    assert traffic.errors == [] and during > 0
    assert scene.server.proc.poll() is None and scene.serves()
    assert scene.tell(scene.server, "blocking") is True  # drain gave the listener back as is

    # the peer saw what the plan said it would
    seen, words = PEER_IN.get((case, chosen), PEER[chosen])
    assert all(words in i["peer_sees"] for i in run.items), run.items[0]["peer_sees"]
    if seen is not None:
        assert peer_view(scene, case) == [seen] * len(targets)

    # the descriptor: kept by every method; close parks a placeholder socket on it
    for fd in scene.fds if case in OWNED else []:
        target = scene.fd_target(fd["fd"])
        assert target is not None and target.startswith("socket:[")
        assert (target == f"socket:[{fd['inode']}]") == (chosen != "close")
    if case == "established":
        assert scene.tell(scene.server, "look") == [OWNER_SEES[chosen]] * len(targets)

    # an intent line per socket on disk before the action, an audit line per action as
    # it was taken, then one with its verified outcome
    intents = scene.audit_lines("intent")
    acts, verified = scene.audit_lines("act"), scene.audit_lines("verify")
    assert len(intents) == len(acts) == len(verified) == len(targets)
    assert scene.audit_lines()[:2 * len(acts)] == intents + acts  # intents, acts, verifies
    for line in acts:
        assert set(line) >= AUDIT_FIELDS | {"action"}
        assert (line["method"], line["action"]) == (chosen, "done")
        assert line["netns"] == scene.netns and line["state"] == STATE[case].ss_name
    outcomes = {o["index"]: o["outcome"] for o in run.outcomes}
    assert sorted(line["outcome"] for line in verified) == sorted(outcomes.values())
    assert {line["cookie"] for line in acts} == {sk.cookie for sk in targets}


NOT_APPLICABLE = {case: sorted({"fin", "drain", "close", "destroy", "rst"} - methods)
                  for case, methods in APPLIES.items()}


@pytest.mark.parametrize("case", list(STATE))
def test_methods_that_do_not_apply_change_nothing(scene: Scene, case: str) -> None:
    targets = build(scene, case)
    for method in NOT_APPLICABLE[case]:
        run = scene.kill("--port", str(PORT), "--state", STATE[case].filter_name,
                         "--method", method, "--yes")
        assert run.rc == 1, (method, run.err)
        assert all(i["method"] == "" and i["why"] for i in run.items)
        assert {o["outcome"] for o in run.outcomes} == {"not-applicable"}
        assert unchanged(targets, scene.ours()), method
    assert scene.audit_lines() == []
    if case in ("close-wait", "queued", "established"):
        assert scene.tell(scene.client, "seen 0") == ["nothing"] * len(targets)


@pytest.mark.parametrize("method", ["auto", "rst"])
def test_the_python_api_on_a_list_of_sockets_over_ipv6(lab: Lab, tmp_path: Path,
                                                         method: str) -> None:
    sc = make_scene(lab, tmp_path, SERVER_V6)
    targets = build(sc, "close-wait")
    found = sockdoctor.scan(f"state close-wait sport = :{PORT}", netns=sc.netns, owners=False)
    assert {sk.cookie for sk in found.sockets} == {sk.cookie for sk in targets}
    with Traffic(lab, sc.addr) as traffic:
        report = sockdoctor.kill(found.sockets, method=method, dry_run=False,
                                 audit_log=str(sc.audit))
    chosen = "fin" if method == "auto" else method
    assert report.applied and report.exit_code == 0
    assert [i.method for i in report.plan.items] == [chosen] * 3
    assert {o.pid for i in report.plan.items for o in i.owners} == {sc.server.pid}  # looked up
    assert {o.outcome for o in report.outcomes} <= {"closed", "closing"}
    assert not gone_or_orphaned(targets, sc.scan())
    assert traffic.errors == [] and traffic.count > 0 and sc.serves()
    assert peer_view(sc, "close-wait") == [PEER[chosen][0]] * 3
    assert all(sc.fd_target(fd["fd"]) == f"socket:[{fd['inode']}]" for fd in sc.fds)
    assert len(sc.audit_lines("act")) == len(sc.audit_lines("verify")) == 3


# --- plan first, guards ---------------------------------------------------------------

def test_without_yes_the_plan_is_printed_and_nothing_changes(scene: Scene) -> None:
    targets = build(scene, "close-wait")
    run = scene.kill("--port", str(PORT), as_json=False)
    assert run.rc == 0, run.err
    assert (f"Plan: 3 of 3 selected sockets would be ended (3 by fin) in network namespace "
            f"{scene.lab.server.netns}.") in run.out
    assert "Nothing was changed. Run again with --yes to apply this plan." in run.out
    assert run.out.count(f"CLOSE-WAIT {SERVER_V4}:{PORT} -> {CLIENT_V4}:") == 3
    assert "the peer: a normal close (FIN): its read returns EOF" in run.out
    as_json = scene.kill("--port", str(PORT))
    assert as_json.rc == 0 and as_json.report["applied"] is False
    assert as_json.outcomes == [] and len(as_json.items) == 3
    assert unchanged(targets, scene.ours())
    assert not scene.audit.exists()
    assert scene.tell(scene.client, "seen 0") == ["nothing"] * 3


def test_max_refuses_a_broad_selection_before_acting(scene: Scene) -> None:
    targets = build(scene, "close-wait", n=5)
    run = scene.kill("--port", str(PORT), "--max", "2", "--yes")
    assert run.rc == 2 and run.out == ""
    assert run.err.strip().splitlines() == [
        "sockdoctor: this would act on 5 sockets, more than --max 2; narrow the filter or "
        "raise --max"]
    assert unchanged(targets, scene.ours())
    assert not scene.audit.exists()


def listeners(sc: Scene) -> list[Socket]:
    return [sk for sk in sc.scan().sockets if sk.state == TcpState.LISTEN]


def test_listeners_are_refused_unless_forced(scene: Scene) -> None:
    before = listeners(scene)
    assert {sk.local_port for sk in before} == {PORT, HEALTH}
    run = scene.kill("--state", "listening", "--port", str(PORT), "--yes")
    assert run.rc == 1
    (item,) = run.items
    assert item["method"] == "" and "listening socket" in item["skipped"]
    assert [o["outcome"] for o in run.outcomes] == ["skipped"]
    assert unchanged(before, listeners(scene))

    with Traffic(scene.lab, scene.addr) as traffic:
        forced = scene.kill("--state", "listening", "--port", str(PORT), "--yes", "--force")
    assert forced.rc == 0, forced.outcomes
    assert [i["method"] for i in forced.items] == ["destroy"]
    assert "stops listening" in forced.items[0]["program_sees"]
    assert [sk.local_port for sk in listeners(scene)] == [HEALTH]  # only the one asked for
    assert traffic.errors == [] and scene.serves()
    assert probe(scene.lab.client, scene.addr, PORT, 2.0) == "ECONNREFUSED"


def test_the_callers_own_ssh_connection_is_refused(scene: Scene) -> None:
    targets = build(scene, "close-wait")
    mine = scene.ports[0]
    env = {**os.environ, "SSH_CONNECTION": f"{CLIENT_V4} {mine} {SERVER_V4} {PORT}"}
    run = scene.kill("--port", str(PORT), "--yes", env=env)
    assert run.rc == 1
    by_port = {i["socket"]["peer_port"]: i for i in run.items}
    assert "SSH" in by_port[mine]["skipped"] and by_port[mine]["method"] == ""
    assert sorted(o["outcome"] for o in run.outcomes) == ["closed", "closed", "skipped"]
    (left,) = scene.ours()
    assert left.peer_port == mine and left.state == TcpState.CLOSE_WAIT
    assert left.cookie in {sk.cookie for sk in targets}
    assert len(scene.audit_lines("act")) == 2
    seen = scene.tell(scene.client, "seen 1")  # the others saw theirs before kill returned
    assert seen == ["nothing" if port == mine else "eof" for port in scene.ports]


def test_sockets_of_sockdoctors_own_ancestors_are_refused(scene: Scene) -> None:
    targets = build(scene, "close-wait")
    argv = [sys.executable, "-m", "sockdoctor", "kill", "--netns", scene.netns, "--port",
            str(PORT), "--yes", "--json", "--audit-log", str(scene.audit)]
    done = scene.tell(scene.server, "run " + json.dumps(argv))  # the owner is the parent
    assert done["rc"] == 1, done["err"]
    report = json.loads(done["out"])
    assert all("held by sockdoctor or by its own session" in i["skipped"]
               for i in report["plan"]["items"])
    assert {o["outcome"] for o in report["outcomes"]} == {"skipped"}
    assert unchanged(targets, scene.ours())
    assert scene.audit_lines() == []


# --- identity re-checked right before acting ------------------------------------------

CLIENT_PORT = 45000


@pytest.mark.parametrize("method", ["auto", "destroy", "close", "rst"])
def test_a_socket_replaced_after_planning_is_left_alone(scene: Scene, method: str) -> None:
    tell = scene.tell
    tell(scene.client, f"connect 1 {CLIENT_PORT}")
    (old_fd,) = tell(scene.server, "accept 1")
    tell(scene.client, "shutwr")
    (old,) = scene.wait_for(TcpState.CLOSE_WAIT, 1, owned=True)
    snap = sockdoctor.scan(f"state close-wait sport = :{PORT}", netns=scene.netns)
    plan = sockdoctor.plan_kill(snap, sockdoctor.KillPolicy(methods=(method,)),
                                host=sockdoctor.host_facts())
    assert [i.method for i in plan.items] == ["fin" if method == "auto" else method]

    # the same 4-tuple, a new connection (and the same descriptor number in the owner)
    tell(scene.client, "reset")
    tell(scene.server, "close")
    tell(scene.client, f"connect 1 {CLIENT_PORT}")
    (new_fd,) = tell(scene.server, "accept 1")
    tell(scene.client, "shutwr")
    tell(scene.client, "watch")
    (new,) = scene.wait_for(TcpState.CLOSE_WAIT, 1, owned=True)
    assert (new.peer_port, new_fd["fd"]) == (old.peer_port, old_fd["fd"])
    assert (new.cookie, new.inode) != (old.cookie, old.inode)

    report = sockdoctor.apply_plan(plan, audit_log=str(scene.audit))  # the stale plan itself
    assert report.plan is plan
    (outcome,) = report.outcomes
    assert outcome.outcome in ("identity-changed", "already-gone"), outcome
    assert outcome.detail
    assert report.exit_code == (0 if outcome.success else 1)
    assert unchanged([new], scene.ours())  # untouched, and its peer heard nothing
    assert scene.fd_target(new_fd["fd"]) == f"socket:[{new_fd['inode']}]"
    assert tell(scene.client, "seen 0") == ["nothing"]
    (act,), (verified,) = scene.audit_lines("act"), scene.audit_lines("verify")
    assert act["action"] in ("identity-changed", "already-gone")
    assert (verified["outcome"], verified["cookie"]) == (outcome.outcome, old.cookie)


# --- errors a user can cause -----------------------------------------------------------

def test_an_unwritable_audit_log_stops_the_kill_before_anything_is_done(scene: Scene) -> None:
    targets = build(scene, "close-wait")
    blocker = scene.audit.parent / "not-a-directory"
    blocker.write_text("")
    run = scene.kill("--port", str(PORT), "--yes", "--audit-log",
                     str(blocker / "audit.jsonl"), audit=False)
    assert run.rc == 7 and run.out == ""  # an output file that cannot be written
    (line,) = run.err.strip().splitlines()
    assert line.startswith(f"sockdoctor: cannot write the audit log {blocker}/audit.jsonl")
    assert unchanged(targets, scene.ours())
    assert scene.tell(scene.client, "seen 0") == ["nothing"] * 3


def as_nobody(argv: list[str], how: Unprivileged, netns: str | None = None
              ) -> subprocess.CompletedProcess[str]:
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed")
    return how.sockdoctor(*argv, netns=netns)


def nobody_audit_log() -> str:
    return os.path.join(tempfile.gettempdir(), f"sockdoctor-nobody-{os.getpid()}.jsonl")


def test_without_permission_one_sentence_and_exit_4(scene: Scene,
                                                   unprivileged: Unprivileged) -> None:
    targets = build(scene, "close-wait")
    audit = nobody_audit_log()
    done = as_nobody(["kill", "--netns", scene.netns, "--port", str(PORT), "--yes",
                      "--audit-log", audit], unprivileged)
    assert done.returncode == 4, done.stderr
    assert done.stdout == ""
    (line,) = done.stderr.strip().splitlines()
    assert line == (f"sockdoctor: --netns: entering network namespace '{scene.netns}' needs root "
                    "(CAP_SYS_ADMIN)")
    assert unchanged(targets, scene.ours())
    assert not os.path.exists(audit)


@pytest.mark.parametrize("method", ["auto", "fin", "close", "destroy", "rst"])
def test_without_permission_inside_the_namespace_nothing_is_done(
        scene: Scene, unprivileged: Unprivileged, method: str) -> None:
    targets = build(scene, "close-wait")
    audit = nobody_audit_log()
    done = as_nobody(["kill", "--netns", "self", "--port", str(PORT), "--method", method,
                      "--yes", "--json", "--audit-log", audit], unprivileged, scene.netns)
    assert done.returncode == 4, done.stderr
    report = json.loads(done.stdout)
    assert [o["outcome"] for o in report["outcomes"]] == ["not-permitted"] * 3
    assert all("run as root" in i["why"] or "CAP_NET_RAW" in i["why"]
               for i in report["plan"]["items"])
    assert "not readable" in done.stderr  # the owner walk says what it could not see
    assert unchanged(targets, scene.ours())
    assert not os.path.exists(audit)
