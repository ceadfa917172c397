"""Method `fin` on real sockets: pidfd_getfd + shutdown on a duplicate.

A server in the lab's server namespace leaks the connections its peers
half-close (CLOSE_WAIT) while its main thread sits in accept() and a worker
thread in epoll keeps answering "ping". The client sockets are made in the
client namespace; traffic crosses the veth pair.
"""

from __future__ import annotations

import json
import os
import socket
import time

import leaky
import pytest

from conftest import Script
from sockdoctor.lab.netlab import SERVER_V4, SERVER_V6, Lab
from sockdoctor.linux import pidfd
from sockdoctor.model import TcpState

pytestmark = pytest.mark.root
PORT = 7100
# What socket.recv() blocks in: recvfrom(2), numbered per architecture.
RECVFROM = {"x86_64": 45, "aarch64": 207}.get(os.uname().machine, 45)

# Main thread: accept(). Worker: epoll, answers "ping", leaks a connection on EOF.
# Reader: a thread blocked in recv() on the connection the test names.
SERVER = f"""
import threading
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("{SERVER_V4}", {PORT}))
srv.listen(64)
conns, keep = {{}}, []
ep = select.epoll()

{leaky.SERVE}
def reader(fd):
    emit({{"reader_got": conns[fd].recv(100).decode()}})

def commands():
    while True:
        cmd = json.loads(wait())
        fd = cmd["fd"]
        if cmd["op"] == "recv":
            emit({{"recv": conns[fd].recv(100).decode()}})
        elif cmd["op"] == "reader":
            ep.unregister(fd)
            threading.Thread(target=reader, args=(fd,), daemon=True).start()

threading.Thread(target=serve, daemon=True).start()
threading.Thread(target=commands, daemon=True).start()
emit({{"ready": True}})
while True:
    c, peer = srv.accept()
    keep.append(c)
    conns[c.fileno()] = c
    ep.register(c.fileno(), select.EPOLLIN)
    emit({{"fd": c.fileno(), "inode": os.fstat(c.fileno()).st_ino, "port": peer[1]}})
"""








def wait_state(lab: Lab, inode: int, wanted: set[int | None], limit: float = 10.0) -> int | None:
    deadline = time.monotonic() + limit
    while True:
        state = leaky.state_of(lab, inode)
        if state in wanted or time.monotonic() > deadline:
            return state
        time.sleep(0.02)


@pytest.fixture
def server(lab: Lab) -> Script:
    return leaky.start(lab, SERVER)






def test_fin_ends_close_wait_and_keeps_the_fd(lab: Lab, server: Script) -> None:
    peer, conn = leaky.open_close_wait(lab, server, PORT)
    fd, inode = conn["fd"], conn["inode"]

    before = pidfd.graceful_shutdown(server.pid, fd, inode)

    assert before == TcpState.CLOSE_WAIT
    assert peer.recv(100) == b""  # our FIN reached the peer
    assert wait_state(lab, inode, {None}) is None  # LAST_ACK, then gone
    assert os.readlink(f"/proc/{server.pid}/fd/{fd}") == f"socket:[{inode}]"
    server.send(json.dumps({"op": "recv", "fd": fd}))
    assert server.read() == {"recv": ""}
    # The program still holds a dead socket: visible only through its fd.
    assert pidfd.tcp_info(server.pid, fd, inode)["state"] == TcpState.CLOSE
    assert pidfd.graceful_shutdown(server.pid, fd, inode) == TcpState.CLOSE  # a no-op
    leaky.assert_serves(lab, server, PORT, {"fd", "inode", "port"})
    peer.close()


def test_fin_on_established_wakes_blocked_reader(lab: Lab, server: Script) -> None:
    peer = leaky.connect(lab, PORT)
    conn = server.read()
    server.send(json.dumps({"op": "reader", "fd": conn["fd"]}))
    deadline = time.monotonic() + 10
    while not _in_syscall(server.pid, RECVFROM) and time.monotonic() < deadline:
        time.sleep(0.01)

    before = pidfd.graceful_shutdown(server.pid, conn["fd"], conn["inode"])

    assert before == TcpState.ESTABLISHED
    assert server.read() == {"reader_got": ""}  # the thread in recv() woke with EOF
    assert peer.recv(100) == b""
    assert leaky.state_of(lab, conn["inode"]) in (TcpState.FIN_WAIT1, TcpState.FIN_WAIT2)
    leaky.assert_serves(lab, server, PORT, {"fd", "inode", "port"})
    peer.close()


def _in_syscall(pid: int, nr: int) -> bool:
    """Some thread of the process is blocked in system call `nr`."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/syscall") as fh:
            if fh.read().split()[0] == str(nr):
                return True
    return False


def test_wrong_inode_changes_nothing(lab: Lab, server: Script) -> None:
    peer, conn = leaky.open_close_wait(lab, server, PORT)

    with pytest.raises(pidfd.IdentityChanged):
        pidfd.graceful_shutdown(server.pid, conn["fd"], conn["inode"] + 1)

    assert leaky.state_of(lab, conn["inode"]) == TcpState.CLOSE_WAIT
    peer.setblocking(False)
    with pytest.raises(BlockingIOError):
        peer.recv(100)  # no FIN came
    peer.close()


def test_missing_process_and_fd(server: Script) -> None:
    with open("/proc/sys/kernel/pid_max") as fh:
        beyond = int(fh.read()) + 1
    with pytest.raises(pidfd.ProcessGone):
        pidfd.graceful_shutdown(beyond, 3, 1)
    with pytest.raises(pidfd.FdGone):
        pidfd.graceful_shutdown(server.pid, 999, 1)
    with pytest.raises(pidfd.IdentityChanged, match="not a socket"):
        pidfd.graceful_shutdown(server.pid, 0, os.fstat(0).st_ino)  # stdin: a pipe


def test_exited_process_is_gone(lab: Lab) -> None:
    child = lab.spawn(lab.server, ["true"])
    handle = pidfd.PidFd(child.pid)
    try:
        deadline = time.monotonic() + 10
        while not pidfd.is_exited(handle.fd) and time.monotonic() < deadline:
            time.sleep(0.01)
        with pytest.raises(pidfd.ProcessGone):
            handle.getfd(0)
    finally:
        handle.close()
        child.wait()


def test_listener_is_refused(server: Script) -> None:
    fd, inode = _listener(server.pid)
    with pytest.raises(pidfd.ListenerRefused):
        pidfd.graceful_shutdown(server.pid, fd, inode)
    assert pidfd.tcp_info(server.pid, fd, inode)["state"] == TcpState.LISTEN


def _listener(pid: int) -> tuple[int, int]:
    for name in os.listdir(f"/proc/{pid}/fd"):
        link = os.readlink(f"/proc/{pid}/fd/{name}")
        if link.startswith("socket:"):
            return int(name), int(link[8:-1])  # the first socket the server made
    raise AssertionError("no listening socket")


def test_tcp_info_and_duplicate_see_the_owners_socket(lab: Lab, server: Script) -> None:
    peer, conn = leaky.open_close_wait(lab, server, PORT)

    info = pidfd.tcp_info(server.pid, conn["fd"], conn["inode"])
    with pidfd.duplicate(server.pid, conn["fd"], conn["inode"]) as dup:
        local = dup.getsockname()
        remote = dup.getpeername()

    assert info["state"] == TcpState.CLOSE_WAIT
    assert local == (SERVER_V4, PORT)
    assert remote[1] == conn["port"] == peer.getsockname()[1]
    assert leaky.state_of(lab, conn["inode"]) == TcpState.CLOSE_WAIT  # looking changes nothing
    peer.close()


def test_many_sockets_through_one_pidfd(lab: Lab, server: Script) -> None:
    pairs = [leaky.open_close_wait(lab, server, PORT) for _ in range(20)]

    with pidfd.PidFd(server.pid) as handle:
        states = [handle.shutdown(conn["fd"], conn["inode"]) for _, conn in pairs]

    assert states == [TcpState.CLOSE_WAIT] * len(pairs)
    for peer, conn in pairs:
        assert peer.recv(100) == b""
        assert wait_state(lab, conn["inode"], {None}) is None
        peer.close()
    assert pidfd.supported()


V6_SERVER = f"""
srv = socket.socket(socket.AF_INET6)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("{SERVER_V6}", {PORT}))
srv.listen()
emit({{"ready": True}})
c, _ = srv.accept()
emit({{"fd": c.fileno(), "inode": os.fstat(c.fileno()).st_ino}})
wait()
"""


def test_fin_over_ipv6(lab: Lab) -> None:
    server = Script(lab, lab.server, V6_SERVER)
    assert server.read() == {"ready": True}
    peer = leaky.connect(lab, PORT, SERVER_V6)
    conn = server.read()
    peer.shutdown(socket.SHUT_WR)
    assert wait_state(lab, conn["inode"], {TcpState.CLOSE_WAIT}) == TcpState.CLOSE_WAIT

    with pidfd.duplicate(server.pid, conn["fd"], conn["inode"]) as dup:
        assert dup.family == socket.AF_INET6
    assert pidfd.graceful_shutdown(server.pid, conn["fd"], conn["inode"]) == TcpState.CLOSE_WAIT

    assert peer.recv(100) == b""
    assert wait_state(lab, conn["inode"], {None}) is None
    peer.close()
