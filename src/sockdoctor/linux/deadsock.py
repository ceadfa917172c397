"""What a dead TCP socket still tells, read through a pidfd_getfd duplicate.

A "dead" descriptor points at a TCP socket that is in no TCP table: the
connection is over (reset, timed out, or shut down and finished) but the
program never called close(). The socket object keeps what the doctor needs
to name the cause and the service, and a duplicate of the descriptor
(pidfd_getfd, as for `kill --method fin`) reads it without disturbing the
program:

- the peer: getpeername() refuses a socket in CLOSE (ENOTCONN), but
  getsockopt(SO_PEERNAME) asks the same getname() without that check and
  still answers after a reset (verified on Linux 6.18; the option wants a
  buffer no longer than the address);
- whether an error is pending (a reset or a timeout the program has not read
  yet): poll() reports POLLERR without touching it, where
  getsockopt(SO_ERROR) would consume it and the program's next recv() would
  see EOF instead of ECONNRESET;
- TCP_INFO: state, retransmissions, bytes sent and acknowledged (whether our
  FIN was acknowledged, i.e. a graceful close), idle times.
"""

from __future__ import annotations

import select
import socket
import struct
from collections import defaultdict

import msgspec

from ..errors import SockdoctorError
from ..model import DeadSocketFd
from . import tcpinfo
from .pidfd import TCP_INFO_LEN, PidFd

SO_PEERNAME = 28
_ADDR_LEN = {socket.AF_INET: 16, socket.AF_INET6: 28}


def inspect_all(dead: list[DeadSocketFd]) -> list[DeadSocketFd]:
    """The same descriptors with what their sockets still know (as much as we may read)."""
    by_pid: dict[int, list[DeadSocketFd]] = defaultdict(list)
    for d in dead:
        by_pid[d.pid].append(d)
    out: list[DeadSocketFd] = []
    for pid, fds in by_pid.items():
        try:
            with PidFd(pid) as pidfd:
                out.extend(_inspect(pidfd, d) for d in fds)
        except (SockdoctorError, OSError):
            out.extend(fds)  # gone, or not ours to look into: as the walk found them
    return out


def _inspect(pidfd: PidFd, dead: DeadSocketFd) -> DeadSocketFd:
    try:
        sock = pidfd.borrow(dead.fd, dead.inode)
    except (SockdoctorError, OSError):
        return dead
    with sock:
        try:
            info = tcpinfo.decode_struct(
                sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCP_INFO_LEN))
        except OSError:
            return dead
        local = _name(sock.getsockname)
        peer = _peer(sock)
        return msgspec.structs.replace(
            dead, family=int(sock.family), local_addr=local[0], local_port=local[1],
            peer_addr=peer[0], peer_port=peer[1], error_pending=_error_pending(sock),
            info=info)


def _error_pending(sock: socket.socket) -> bool:
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLERR)
    return any(events & select.POLLERR for _, events in poller.poll(0))


def _peer(sock: socket.socket) -> tuple[str, int]:
    """The peer's address, also after a reset (SO_PEERNAME); ("", 0) if it never had one."""
    size = _ADDR_LEN.get(sock.family)
    if size is None:
        return "", 0
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERNAME, size)
    except OSError:  # ENOTCONN: never connected
        return "", 0
    family, port = struct.unpack_from("=HH", raw)
    addr = raw[4:8] if family == socket.AF_INET else raw[8:24]
    return socket.inet_ntop(family, addr), socket.ntohs(port)


def _name(getname) -> tuple[str, int]:
    try:
        addr = getname()
    except OSError:
        return "", 0
    return (addr[0], addr[1]) if isinstance(addr, tuple) else ("", 0)
