"""Borrow another process's socket with pidfd_getfd(2): the `fin` method.

pidfd_getfd gives us a second descriptor for the very socket object the
program holds. shutdown(SHUT_RDWR) on that duplicate acts on the socket, not
on a descriptor: our FIN goes out (CLOSE_WAIT -> LAST_ACK), threads blocked
on it wake up, and the program's own descriptor stays valid (its next read
returns 0), so no descriptor number is freed behind its back. Closing our
duplicate afterwards only drops our reference.

Needs Linux >= 5.6 and the right to ptrace the owner (same user, or root).
The duplicate is checked against the inode the caller saw before anything
is done to it, which protects against a reused pid or descriptor number.
"""

from __future__ import annotations

import ctypes
import errno
import os
import select
import socket
import stat
from collections.abc import Iterator
from contextlib import contextmanager

from ..errors import (
    NotFoundError,
    PermissionDeniedError,
    SockdoctorError,
    UnsupportedError,
    UsageError,
)
from ..model import TcpState
from . import tcpinfo

# Same numbers in the x86_64 table and in the generic table (aarch64, riscv...).
SYS_PIDFD_GETFD = 438
TCP_INFO_LEN = 512


class ProcessGone(NotFoundError):
    """The owning process does not exist (any more)."""


class FdGone(NotFoundError):
    """The process no longer has that file descriptor open."""


class IdentityChanged(SockdoctorError):
    """The descriptor now points at something other than the socket we planned for."""


class NotPermitted(PermissionDeniedError):
    """No right to reach into that process (ptrace access mode check failed)."""


class Unsupported(UnsupportedError):
    """The running kernel (or CPU architecture) lacks what this method needs."""


class ListenerRefused(UsageError):
    """A listening socket: shutting it down would stop the program accepting."""


_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long


def _kernel_error(exc: OSError, pid: int, what: str) -> SockdoctorError | OSError:
    """Map an errno from pidfd_open/pidfd_getfd to the error a user understands."""
    code = exc.errno
    if code == errno.ESRCH:
        return ProcessGone(f"process {pid} does not exist (any more)")
    if code == errno.EPERM:
        return NotPermitted(f"not allowed to {what} of process {pid} "
                            "(needs root or the same user, and ptrace rights)")
    if code == errno.ENOSYS:
        return Unsupported(f"this kernel ({os.uname().release}) lacks pidfd_getfd(2): "
                           "method `fin` needs Linux >= 5.6")
    if code == errno.EINVAL:
        return ProcessGone(f"{pid} is not a process id (a thread id?)")
    return exc


def is_exited(pidfd: int) -> bool:
    """True once the process behind a pidfd has exited (its pidfd becomes readable)."""
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(0))


class PidFd:
    """An open pidfd, to borrow any number of one process's descriptors.

    Use it as a context manager; one pidfd_open serves many sockets.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        try:
            self.fd = os.pidfd_open(pid)
        except OSError as exc:
            raise _kernel_error(exc, pid, "open") from exc

    def __enter__(self) -> PidFd:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def getfd(self, fd: int, inode: int | None = None) -> int:
        """A new descriptor of ours for the process's `fd`, checked against `inode`.

        The caller owns (and must close) the returned descriptor.
        """
        dup = _syscall(ctypes.c_long(SYS_PIDFD_GETFD), ctypes.c_long(self.fd),
                       ctypes.c_long(fd), ctypes.c_long(0))
        if dup < 0:
            code = ctypes.get_errno()
            if code == errno.EBADF:
                if is_exited(self.fd):
                    raise ProcessGone(f"process {self.pid} has exited")
                raise FdGone(f"process {self.pid} has no file descriptor {fd} (any more)")
            raise _kernel_error(OSError(code, os.strerror(code)), self.pid,
                                f"borrow file descriptor {fd}")
        if inode is not None:
            try:
                _check_identity(dup, inode, self.pid, fd)
            except BaseException:
                os.close(dup)
                raise
        return dup

    def borrow(self, fd: int, inode: int | None = None) -> socket.socket:
        """The process's socket `fd` as a socket object of ours (close it when done)."""
        dup = self.getfd(fd, inode)
        try:
            return socket.socket(fileno=dup)
        except OSError as exc:
            os.close(dup)
            raise IdentityChanged(
                f"file descriptor {fd} of process {self.pid} is not a socket") from exc

    def shutdown(self, fd: int, inode: int, *, allow_listen: bool = False,
                 only_from: frozenset[TcpState] | None = None) -> TcpState:
        """shutdown(SHUT_RDWR) the process's socket `fd`; returns its TCP state before.

        A socket already in CLOSE (reset, or never connected), or in a state
        not in `only_from` when given, is left as it is.
        """
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, 0, self.getfd(fd, inode))
        try:
            state = _tcp_state(sock, self.pid, fd)
            if state == TcpState.LISTEN and not allow_listen:
                raise ListenerRefused(f"file descriptor {fd} of process {self.pid} is a "
                                      "listening socket: refusing to shut it down")
            if state != TcpState.CLOSE and (only_from is None or state in only_from):
                sock.shutdown(socket.SHUT_RDWR)
            return state
        finally:
            sock.close()

    def tcp_info(self, fd: int, inode: int | None = None) -> dict[str, int]:
        """Decoded tcp_info of the process's socket `fd` ("state" is a TcpState value)."""
        dup = self.getfd(fd, inode)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, 0, dup)
        try:
            return tcpinfo.decode(_raw_tcp_info(sock, self.pid, fd))
        finally:
            sock.close()


def _check_identity(dup: int, inode: int, pid: int, fd: int) -> None:
    st = os.fstat(dup)
    if not stat.S_ISSOCK(st.st_mode):
        raise IdentityChanged(f"file descriptor {fd} of process {pid} is not a socket any more")
    if st.st_ino != inode:
        raise IdentityChanged(f"file descriptor {fd} of process {pid} now holds socket inode "
                              f"{st.st_ino}, not {inode}: left alone")


def _raw_tcp_info(sock: socket.socket, pid: int, fd: int) -> bytes:
    try:
        return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCP_INFO_LEN)
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.ENOPROTOOPT):
            raise IdentityChanged(
                f"file descriptor {fd} of process {pid} is not a TCP socket") from exc
        raise


def listen_queue(sock: socket.socket) -> int:
    """How many connections wait in a listening socket's accept queue now (the kernel's
    sk_ack_backlog, which tcp_info reports as tcpi_unacked for a listener)."""
    raw = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCP_INFO_LEN)
    return tcpinfo.decode(raw)["unacked"]


def _tcp_state(sock: socket.socket, pid: int, fd: int) -> TcpState:
    return TcpState(_raw_tcp_info(sock, pid, fd)[0])


def graceful_shutdown(pid: int, fd: int, inode: int, *, allow_listen: bool = False) -> TcpState:
    """Method `fin`: send our FIN on a socket another process holds, keep its fd valid.

    Returns the socket's TCP state just before. Raises ProcessGone, FdGone,
    IdentityChanged (nothing done), NotPermitted, Unsupported, ListenerRefused.
    """
    with PidFd(pid) as pidfd:
        return pidfd.shutdown(fd, inode, allow_listen=allow_listen)


@contextmanager
def duplicate(pid: int, fd: int, inode: int | None = None) -> Iterator[socket.socket]:
    """A socket object of ours for process `pid`'s descriptor `fd`, closed on exit."""
    with PidFd(pid) as pidfd:
        sock = pidfd.borrow(fd, inode)
    with sock:
        yield sock


def tcp_info(pid: int, fd: int, inode: int | None = None) -> dict[str, int]:
    """tcp_info of a socket another process holds, read through a duplicate."""
    with PidFd(pid) as pidfd:
        return pidfd.tcp_info(fd, inode)


def supported() -> bool:
    """True if this kernel has pidfd_getfd(2) (tried on a descriptor of our own)."""
    probe = os.open(os.devnull, os.O_RDONLY)
    try:
        with PidFd(os.getpid()) as pidfd:
            os.close(pidfd.getfd(probe))
        return True
    except Unsupported:
        return False
    finally:
        os.close(probe)
