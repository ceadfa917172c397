"""Shared pieces of the tests that end CLOSE-WAIT sockets of a leaking server.

The server programs differ per test file (what each method must survive);
connecting to them, following a socket's state and checking that the server
still serves are the same everywhere.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

from conftest import Script
from sockdoctor import inventory
from sockdoctor.lab.netlab import SERVER_V4, Lab

# The server programs' worker thread: answers "ping" on registered connections
# and, on EOF, forgets the connection without closing it (the leak). It expects
# `ep` (an epoll object), `conns` (fd -> socket) and `emit` in the program.
SERVE = """def serve():
    try:
        while True:
            for fd, _ in ep.poll():
                data = conns[fd].recv(100)
                if data.startswith(b"ping"):
                    conns[fd].sendall(b"pong")
                else:
                    ep.unregister(fd)
                    emit({"eof": fd})
    except Exception as exc:
        emit({"error": repr(exc)})
"""


def connect(lab: Lab, port: int, addr: str = SERVER_V4) -> socket.socket:
    """A client socket made in the client namespace, connected across the veth pair."""
    return lab.client.run(lambda: socket.create_connection((addr, port), timeout=10))


def state_of(lab: Lab, inode: int) -> int | None:
    """TCP state of the server-side socket with this inode, None once it is gone."""
    snap = inventory.scan(netns=lab.server.netns, owners=False)
    return next((sk.state for sk in snap.sockets if sk.inode == inode), None)


def wait_until(check: Callable[[], bool], limit: float = 10.0) -> bool:
    deadline = time.monotonic() + limit
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def start(lab: Lab, program: str) -> Script:
    """Run a server program in the server namespace and wait for its "ready"."""
    script = Script(lab, lab.server, program)
    assert script.read() == {"ready": True}
    return script


def open_close_wait(lab: Lab, server: Script, port: int) -> tuple[socket.socket, dict]:
    """A connection the server leaks in CLOSE_WAIT; the peer half-closed it, can still read."""
    peer = connect(lab, port)
    conn = server.read()
    peer.shutdown(socket.SHUT_WR)
    assert server.read() == {"eof": conn["fd"]}  # the program saw EOF and ignores it
    assert wait_until(lambda: state_of(lab, conn["inode"]) == 8)  # CLOSE_WAIT
    return peer, conn  # type: ignore[return-value]


def assert_serves(lab: Lab, server: Script, port: int, announced: set[str]) -> None:
    """A new client is accepted and answered: the server kept working."""
    with connect(lab, port) as fresh:
        accepted = server.read()
        assert set(accepted) == announced, accepted  # type: ignore[arg-type]
        fresh.sendall(b"ping")
        assert fresh.recv(100) == b"pong"
