"""sockdoctor.guard() on real sockets: loopback in this process and its children,
and (as root) a private network namespace."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import pytest

import sockdoctor
from sockdoctor.errors import FilterSyntaxError, NotFoundError, UsageError
from sockdoctor.leakguard import Guard, SocketLeakError, SocketLeakWarning
from sockdoctor.linux import heldsockets
from sockdoctor.model import TcpState

# This module makes leaks on purpose and closes them itself; the suite's own
# leak check must not count them.
pytestmark = pytest.mark.sockdoctor(mode="off")


class Pair:
    """A listener, a client and the accepted end, all on loopback; closed at the end."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.client = socket.create_connection(self.listener.getsockname())
        self.server, _ = self.listener.accept()

    def close(self) -> None:
        for sock in (self.listener, self.client, self.server):
            sock.close()


@pytest.fixture
def made() -> Iterator[list[socket.socket]]:
    """Sockets a test made (and perhaps leaked): closed when the test ends."""
    kept: list[socket.socket] = []
    yield kept
    for sock in kept:
        sock.close()


def pair(made: list[socket.socket]) -> Pair:
    p = Pair()
    made.extend((p.listener, p.client, p.server))
    return p


def test_clean_block_passes_and_says_so(made: list[socket.socket]) -> None:
    with sockdoctor.guard() as g:
        p = Pair()
        p.close()
    assert g.report is not None and g.report.ok and not g.report
    assert g.report.summary() == "no TCP socket leaked"


def test_close_wait_raises_with_owner_fd_state_and_endpoints(made: list[socket.socket]) -> None:
    with pytest.raises(SocketLeakError) as caught, sockdoctor.guard():
        p = pair(made)
        p.client.close()
        p.listener.close()
    report = caught.value.report
    assert isinstance(caught.value, AssertionError)
    [leak] = report.leaks
    assert (leak.kind, leak.state) == ("close-wait", "CLOSE-WAIT")
    assert [(o.pid, o.fd) for o in leak.owners] == [(os.getpid(), p.server.fileno())]
    assert (leak.socket.local_port, leak.socket.peer_port) == (
        p.server.getsockname()[1], p.server.getpeername()[1])
    text = str(caught.value)
    assert text.startswith("sockdoctor: 1 TCP socket leaked: 1 CLOSE-WAIT by the block at ")
    assert f"127.0.0.1:{leak.socket.local_port} -> 127.0.0.1:{leak.socket.peer_port}" in text
    assert f"pid {os.getpid()} fd {p.server.fileno()}" in text


def test_tracemalloc_names_the_creating_line(made: list[socket.socket]) -> None:
    tracemalloc = pytest.importorskip("tracemalloc")
    tracemalloc.start(10)
    try:
        with sockdoctor.guard(mode="return") as g:
            made.append(socket.create_server(("127.0.0.1", 0)))  # the creating line
    finally:
        tracemalloc.stop()
    [leak] = g.report.leaks
    with open(__file__) as f:
        line = next(n for n, text in enumerate(f, 1) if text.endswith("# the creating line\n"))
    assert leak.created_at.endswith(f"test_guard.py:{line}")
    assert "made.append(socket.create_server" in "\n".join(leak.lines())


def test_without_tracemalloc_the_hint_says_how(made: list[socket.socket]) -> None:
    with sockdoctor.guard(mode="return") as g:
        made.append(socket.create_server(("127.0.0.1", 0)))
    [leak] = g.report.leaks
    assert leak.created == []
    assert "PYTHONTRACEMALLOC=20" in leak.created_note


def test_dead_descriptor_and_fin_wait_2(made: list[socket.socket]) -> None:
    with sockdoctor.guard(mode="return") as g:
        first, second = pair(made), pair(made)
        first.server.shutdown(socket.SHUT_RDWR)   # peer closes too: dead descriptor
        first.client.close()
        second.server.shutdown(socket.SHUT_WR)    # peer keeps its end: FIN-WAIT-2 / CLOSE-WAIT
        first.listener.close()
        second.listener.close()
    kinds = {(leak.kind, leak.socket.inode) for leak in g.report.leaks}
    assert kinds == {("dead", os.fstat(first.server.fileno()).st_ino),
                     ("fin-wait-2", os.fstat(second.server.fileno()).st_ino),
                     ("close-wait", os.fstat(second.client.fileno()).st_ino)}
    dead = next(leak for leak in g.report.leaks if leak.kind == "dead")
    assert dead.state == "DEAD" and "in no TCP table" in dead.endpoints()


def test_open_sockets_made_inside_are_reported_once(made: list[socket.socket]) -> None:
    g = Guard(mode="return").start()
    p = pair(made)
    assert g.check(stuck_only=True).ok  # nothing is stuck
    report = g.check()
    assert sorted(leak.state for leak in report.leaks) == ["ESTAB", "ESTAB", "LISTEN"]
    assert g.check().ok  # already reported
    p.client.close()
    assert [leak.kind for leak in g.check().leaks] == ["close-wait"]  # a new kind of trouble


def test_sockets_older_than_the_guard_count_only_when_they_get_stuck(
        made: list[socket.socket]) -> None:
    old, already = pair(made), pair(made)
    already.client.close()
    time.sleep(0.05)  # already.server is in CLOSE-WAIT before the guard starts
    with sockdoctor.guard(mode="return") as g:
        old.client.close()
    assert [(leak.kind, leak.socket.inode) for leak in g.report.leaks] == [
        ("close-wait", os.fstat(old.server.fileno()).st_ino)]


def test_grace_period_lets_a_close_in_flight_land(made: list[socket.socket]) -> None:
    def close_soon(sock: socket.socket) -> threading.Thread:
        thread = threading.Thread(target=lambda: (time.sleep(0.03), sock.close()))
        thread.start()
        return thread

    with sockdoctor.guard(grace=0.5) as g:
        sock = socket.create_server(("127.0.0.1", 0))
        thread = close_soon(sock)
    thread.join()
    assert g.report.ok
    with pytest.raises(SocketLeakError), sockdoctor.guard(grace=0):
        sock = socket.create_server(("127.0.0.1", 0))
        made.append(sock)
        thread = close_soon(sock)
    thread.join()


def test_warn_mode_warns(made: list[socket.socket]) -> None:
    with (pytest.warns(SocketLeakWarning, match="1 TCP socket leaked: 1 still open"),
          sockdoctor.guard(mode="warn")):
        made.append(socket.create_server(("127.0.0.1", 0)))


def test_decorator_guards_every_call(made: list[socket.socket]) -> None:
    checked = sockdoctor.guard(mode="return")

    @checked
    def leaky() -> str:
        made.append(socket.create_server(("127.0.0.1", 0)))
        return "done"

    @checked
    def clean() -> str:
        socket.create_server(("127.0.0.1", 0)).close()
        return "fine"

    assert leaky() == "done" and checked.report and len(checked.report.leaks) == 1
    assert clean() == "fine" and checked.report.ok

    @sockdoctor.guard()
    async def leaky_async() -> None:
        made.append(socket.create_server(("127.0.0.1", 0)))

    with pytest.raises(SocketLeakError, match=r"by .*leaky_async\(\)"):
        asyncio.run(leaky_async())


def test_an_error_inside_the_block_is_kept_and_gets_the_leaks_as_a_note(
        made: list[socket.socket]) -> None:
    with pytest.raises(KeyError) as caught, sockdoctor.guard():
        made.append(socket.create_server(("127.0.0.1", 0)))
        raise KeyError("original")
    assert any("1 TCP socket leaked" in note for note in caught.value.__notes__)


def test_allow_rules(made: list[socket.socket]) -> None:
    with sockdoctor.guard(mode="return") as g:
        a, b, c, d = (socket.create_server(("127.0.0.1", 0)) for _ in range(4))
        made.extend((a, b, c, d))
        g.allow(a.getsockname()[1], f"sport = :{b.getsockname()[1]}", c)
    assert [leak.socket.inode for leak in g.report.leaks] == [os.fstat(d.fileno()).st_ino]
    with sockdoctor.guard(allow=lambda leak: leak.state == "LISTEN"):
        made.append(socket.create_server(("127.0.0.1", 0)))


def test_guard_is_the_function_however_it_was_imported() -> None:
    import sockdoctor.leakguard as module

    assert isinstance(sockdoctor.guard(), Guard) and sockdoctor.guard is module.guard
    assert "guard" in sockdoctor.__all__


def test_bad_arguments_are_clear() -> None:
    with pytest.raises(UsageError, match="mode must be one of raise, warn, return"):
        sockdoctor.guard(mode="explode")
    with pytest.raises(FilterSyntaxError):
        sockdoctor.guard(allow="sport = = :80")
    with pytest.raises(UsageError, match="either processes"):
        sockdoctor.guard(pids=[os.getpid()], netns="x")
    with pytest.raises(NotFoundError, match="no process 999999999"):
        sockdoctor.guard(pids=[999999999])
    with pytest.raises(UsageError, match=r"before guard\.start"):
        Guard().check()


CHILD = """
import os, socket, sys
srv = socket.create_server(("127.0.0.1", 0))
print(srv.getsockname()[1], flush=True)
conn, _ = srv.accept()
print("accepted", flush=True)
if sys.argv[1] == "fork":  # a grandchild holds it as well
    if os.fork() == 0:
        sys.stdin.read(); os._exit(0)
sys.stdin.read()
"""


@pytest.fixture
def child() -> Iterator[Callable[[str], subprocess.Popen[str]]]:
    """Start CHILD programs; each is killed with its whole process group at the end."""
    started: list[subprocess.Popen[str]] = []

    def start(how: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen([sys.executable, "-c", CHILD, how], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True, start_new_session=True)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdin.close()  # type: ignore[union-attr]
        proc.stdout.close()  # type: ignore[union-attr]


def connect_to(proc: subprocess.Popen[str], port: int) -> None:
    """One connection to the child's server, closed at once; returns once it was accepted."""
    socket.create_connection(("127.0.0.1", port)).close()
    assert proc.stdout.readline() == "accepted\n"  # type: ignore[union-attr]


def test_children_and_grandchildren_are_watched(child: Callable[[str], subprocess.Popen[str]]
                                                ) -> None:
    with sockdoctor.guard(mode="return") as g:
        proc = child("fork")
        connect_to(proc, int(proc.stdout.readline()))  # type: ignore[union-attr]
        time.sleep(0.1)
        report = g.check(stuck_only=True)
        family = heldsockets.descendants([os.getpid()])
    assert proc.pid in family and len(family) >= 3  # this process, the child, the grandchild
    [leak] = report.leaks
    assert leak.kind == "close-wait"
    assert proc.pid in {o.pid for o in leak.owners}
    assert len(leak.owners) == 2  # the fork shares the descriptor
    assert "python" in leak.processes[proc.pid]


def test_given_pids_only(made: list[socket.socket],
                         child: Callable[[str], subprocess.Popen[str]]) -> None:
    proc = child("plain")
    port = int(proc.stdout.readline())  # type: ignore[union-attr]  (it listens now)
    with sockdoctor.guard(pids=[proc.pid], mode="return") as g:
        made.append(socket.create_server(("127.0.0.1", 0)))  # ours: not watched
        connect_to(proc, port)
    assert [(leak.kind, leak.owners[0].pid) for leak in g.report.leaks] == [
        ("close-wait", proc.pid)]


def test_dump_fallback_agrees_with_duplicates(made: list[socket.socket]) -> None:
    p = pair(made)
    q = pair(made)
    q.client.close()
    time.sleep(0.05)
    inspector = heldsockets.FdInspector()
    mine = inspector.tcp_sockets([os.getpid()])
    direct = inspector.inspect(mine)
    inspector.describe(direct.values())
    dumped = [heldsockets.Held(inode, owners) for inode, owners in mine.items()]
    heldsockets._from_dump(dumped)
    by_dump = {held.inode: held for held in dumped}
    wanted = {os.fstat(s.fileno()).st_ino for s in (p.listener, p.client, p.server, q.server)}
    assert wanted <= direct.keys() and wanted <= by_dump.keys()
    for inode in wanted:
        a, b = direct[inode].socket, by_dump[inode].socket
        assert a is not None and b is not None
        assert (a.state, a.local_port, a.peer_port) == (b.state, b.local_port, b.peer_port)
        assert direct[inode].state == by_dump[inode].state == a.state
    assert direct[os.fstat(q.server.fileno()).st_ino].state == TcpState.CLOSE_WAIT


SERVER_IN_NETNS = """
srv = socket.create_server(("127.0.0.1", 7000), backlog=8)
held = []
emit({"ready": True})
wait()
held.append(srv.accept()[0])   # accepts one; the second stays queued
emit({"accepted": True})
wait()
"""


@pytest.mark.root
def test_a_namespace_is_watched_whole(solo) -> None:  # type: ignore[no-untyped-def]
    from conftest import Script

    server = Script(solo, solo.server, SERVER_IN_NETNS)
    assert server.read() == {"ready": True}
    with sockdoctor.guard(netns=solo.server.netns, mode="return") as g:
        clients = [solo.server.run(lambda: socket.create_connection(("127.0.0.1", 7000)))
                   for _ in range(2)]
        server.send()
        assert server.read() == {"accepted": True}
        for client in clients:
            client.close()
    kinds = sorted((leak.kind, leak.holders()) for leak in g.report.leaks)
    assert [kind for kind, _ in kinds] == ["close-wait", "close-wait"]
    assert any("accept queue" in holders for _, holders in kinds)
    assert all(leak.netns == solo.server.netns for leak in g.report.leaks)


AS_NOBODY = """
import os, signal, socket, time
import sockdoctor
keep = []
with sockdoctor.guard(mode="return") as g:
    srv = socket.create_server(("127.0.0.1", 0))
    child = os.fork()
    if child == 0:  # holds a connection to srv until killed
        held = socket.create_connection(srv.getsockname())
        time.sleep(60)
        os._exit(0)
    conn, _ = srv.accept()
    keep.append(conn)
    time.sleep(0.1)
    report = g.check(stuck_only=True)       # nothing stuck yet; the child's end is open
    os.kill(child, signal.SIGKILL); os.waitpid(child, 0)   # its end closes: ours CLOSE-WAIT
    srv.close()
print(report.summary())
print(g.report.summary())
print(sorted(leak.state for leak in g.report.leaks))
"""


@pytest.mark.root
def test_without_root_own_and_child_sockets_are_seen(unprivileged) -> None:  # type: ignore[no-untyped-def]
    from conftest import SETPRIV

    proc = subprocess.run([*SETPRIV, unprivileged.python, "-c", AS_NOBODY], env=unprivileged.env,
                          cwd="/", capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["no TCP socket leaked", "1 TCP socket leaked: 1 CLOSE-WAIT",
                                        "['CLOSE-WAIT']"]
