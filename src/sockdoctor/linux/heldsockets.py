"""The TCP sockets that a few processes hold, read without a host-wide scan.

guard() asks this many times per test run, so it must cost little whatever
the host holds. A sock_diag dump walks the kernel's whole TCP hash table,
which is shared by every network namespace: measured 20 ms per address
family on this machine while another namespace held 130k sockets, even when
the dumped namespace held two. Here instead each descriptor is looked at
directly: the processes' /proc/PID/fd (procfs), the protocol of each new
socket inode (one extended attribute), and for a TCP socket a duplicate of
the descriptor (pidfd_getfd) whose getsockopt(TCP_INFO) gives the state.
A duplicate works in any network namespace and costs the same on a busy
host as on an idle one. Sockets we may not duplicate (another user's
process, a strict ptrace policy) fall back to one sock_diag dump of our own
namespace, matched by inode.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import struct
import termios
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from ..errors import SockdoctorError
from ..model import ALL_STATES_MASK, Owner, Socket, TcpState
from . import pidfd, procfs, sockdiag, tcpinfo

SO_COOKIE = 57
SIOCOUTQ = termios.TIOCOUTQ
SIOCGSKNS = 0x894C  # the socket's own network namespace, as a new fd (needs CAP_NET_ADMIN)
TCP_PROTOCOLS = ("TCP", "TCPv6")


def descendants(pids: Iterable[int]) -> list[int]:
    """The processes and every live descendant (/proc/PID/task/TID/children).

    A process that daemonised away (its parent exited, it was re-parented to
    init or a subreaper) is no longer anyone's descendant and is not found.
    """
    seen: list[int] = []
    todo = list(pids)
    known = set(todo)
    while todo:
        pid = todo.pop()
        seen.append(pid)
        for child in _children(pid):
            if child not in known:
                known.add(child)
                todo.append(child)
    return seen


def _children(pid: int) -> list[int]:
    try:
        tids = os.listdir(f"{procfs.PROC}/{pid}/task")
    except OSError:
        return []
    found: list[int] = []
    for tid in tids:
        try:
            with open(f"{procfs.PROC}/{pid}/task/{tid}/children", "rb") as f:
                found.extend(int(word) for word in f.read().split())
        except OSError:
            continue
    return found


@dataclass
class Held:
    """One TCP socket, the descriptors holding it, and how the kernel sees it now.

    `state` and `segs_out` come from every inspection; the full `socket`
    (addresses, queues, namespace) only from describe(), for the few that
    are reported.
    """

    inode: int
    owners: list[Owner]
    state: int = 0
    segs_out: int = 0  # segments ever sent: tells a finished connection from a fresh socket
    socket: Socket | None = None


@dataclass
class FdInspector:
    """Reads the TCP sockets of given processes; remembers each inode's protocol.

    The protocol of a socket never changes, so it is asked once per inode;
    inodes that disappear are forgotten at the next walk.
    """

    protocols: dict[int, str] = field(default_factory=dict)
    refused: int = 0  # descriptors we could not duplicate in the last inspect()

    def tcp_sockets(self, pids: Iterable[int]) -> dict[int, list[Owner]]:
        """inode -> holders, for the TCP sockets among the processes' descriptors."""
        owners = procfs.socket_owners(pids).by_inode
        protocols = {}
        for inode, holders in owners.items():
            proto = self.protocols.get(inode)
            if proto is None:
                proto = procfs.socket_protocol(holders[0].pid, holders[0].fd)
            protocols[inode] = proto
        self.protocols = protocols
        return {inode: holders for inode, holders in owners.items()
                if protocols[inode] in TCP_PROTOCOLS}

    def inspect(self, sockets: dict[int, list[Owner]]) -> dict[int, Held]:
        """The state of each socket; a socket closed meanwhile is left out."""
        helds = [Held(inode, holders) for inode, holders in sockets.items()]
        refused = _through_duplicates(helds, _read_state)
        self.refused = len(refused)
        if refused:
            _from_dump(refused)
        return {held.inode: held for held in helds if held.state}

    def describe(self, helds: Iterable[Held]) -> None:
        """Give each socket its full Socket (addresses, queues, namespace)."""
        missing = [held for held in helds if held.socket is None]
        for held in _through_duplicates(missing, _read_socket):
            held.socket = _unknown(held)  # not ours to duplicate: what the walk knows


def _through_duplicates(helds: list[Held], read: Callable[[socket.socket, Held], None]
                        ) -> list[Held]:
    """Call read() on a duplicate of each socket's first descriptor, one pidfd per
    process; returns the sockets we were not permitted to duplicate."""
    by_pid: dict[int, list[Held]] = {}
    for held in helds:
        by_pid.setdefault(held.owners[0].pid, []).append(held)
    refused: list[Held] = []
    for pid, wanted in by_pid.items():
        try:
            with pidfd.PidFd(pid) as handle:
                for held in wanted:
                    _read_one(handle, held, read, refused)
        except pidfd.NotPermitted:
            refused.extend(wanted)
        except SockdoctorError:
            continue  # the process exited: its sockets are gone with it
    return refused


def _read_one(handle: pidfd.PidFd, held: Held, read: Callable[[socket.socket, Held], None],
              refused: list[Held]) -> None:
    try:
        dup = handle.getfd(held.owners[0].fd, held.inode)
    except pidfd.NotPermitted:
        refused.append(held)
        return
    except SockdoctorError:
        return  # closed, or the number now holds something else
    sock = socket.socket(fileno=dup) if read is _read_socket else \
        socket.socket(socket.AF_INET, socket.SOCK_STREAM, 0, dup)  # no probing: 3 syscalls less
    try:
        read(sock, held)
    except OSError:
        pass  # closed under our hands: left without a state, so left out
    finally:
        sock.close()  # our duplicate only: the program's descriptor stays open


def _read_state(sock: socket.socket, held: Held) -> None:
    info = tcpinfo.decode_struct(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO,
                                                 pidfd.TCP_INFO_LEN))
    held.state, held.segs_out = info.state or 0, info.segs_out or 0


def _read_socket(sock: socket.socket, held: Held) -> None:
    """A Socket as sock_diag would report it, from a descriptor of ours."""
    info = tcpinfo.decode_struct(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO,
                                                 pidfd.TCP_INFO_LEN))
    state = info.state or 0
    local = sock.getsockname()
    try:
        peer = sock.getpeername()
    except OSError as exc:
        if exc.errno != errno.ENOTCONN:
            raise
        peer = ("::" if sock.family == socket.AF_INET6 else "0.0.0.0", 0)
    if state == TcpState.LISTEN:  # as in ss: the accept queue and the backlog
        recv_q, send_q = info.unacked or 0, info.sacked or 0
    else:
        recv_q, send_q = _ioctl_int(sock, termios.FIONREAD), _ioctl_int(sock, SIOCOUTQ)
    cookie = struct.unpack("=Q", sock.getsockopt(socket.SOL_SOCKET, SO_COOKIE, 8))[0]
    sk = Socket(_netns_of(sock, held.owners[0].pid), sock.family, state, local[0], local[1],
                peer[0], peer[1], held.inode, cookie, os.fstat(sock.fileno()).st_uid, recv_q,
                send_q)
    sk.info = info
    held.socket, held.state, held.segs_out = sk, state, info.segs_out or 0


def _unknown(held: Held) -> Socket:
    owner = held.owners[0]
    return Socket(procfs.netns_inode(owner.pid), socket.AF_INET, held.state, "0.0.0.0", 0,
                  "0.0.0.0", 0, held.inode, 0, -1, 0, 0)


def _netns_of(sock: socket.socket, pid: int) -> int:
    """The namespace the socket lives in: not always its holder's (a thread may have
    made it inside another namespace). Without CAP_NET_ADMIN, the holder's."""
    try:
        nsfd = fcntl.ioctl(sock.fileno(), SIOCGSKNS)
    except OSError:
        return procfs.netns_inode(pid)
    try:
        return os.fstat(nsfd).st_ino
    finally:
        os.close(nsfd)


def _ioctl_int(sock: socket.socket, request: int) -> int:
    try:
        return struct.unpack("=i", fcntl.ioctl(sock.fileno(), request, b"\0" * 4))[0]
    except OSError:
        return 0  # not meaningful in this state (e.g. CLOSE)


def _from_dump(refused: list[Held]) -> None:
    """Sockets we may not duplicate, found in one sock_diag dump of our namespace.

    A socket in another namespace is not in it and stays without a state (so
    it is left out); one in no table at all is dead (its connection is over,
    the descriptor still open).
    """
    own = procfs.netns_inode(os.getpid())
    nl = sockdiag.open_socket()
    try:
        dumped = {sk.inode: sk for sk in sockdiag.dump(nl, sockdiag.DumpOptions(ALL_STATES_MASK),
                                                        netns=own)}
    finally:
        nl.close()
    for held in refused:
        if procfs.netns_inode(held.owners[0].pid) != own:
            continue
        sk = dumped.get(held.inode)
        if sk is None:
            held.state, held.segs_out = TcpState.CLOSE, 1  # in no table while held: finished
            held.socket = _unknown(held)
        else:
            held.state, held.socket = sk.state, sk
