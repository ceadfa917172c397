"""The one door from remedy/ to the kernel and /proc.

Two halves:
- `Host`, the facts a plan needs about this machine and this run: what the
  kernel and our privileges allow, and which sockets must never be touched
  (our own and our ancestors', i.e. the operator's SSH session). `gather()`
  collects them once and destroys nothing: whether SOCK_DESTROY works is read
  from the kernel's build configuration when it is published, and otherwise
  left open until the first real destroy (`probe_destroy()`).
- every primitive that changes or inspects a live socket: pidfd duplicates
  (fin, drain, keepalive), SOCK_DESTROY, ptrace injection (close), forged
  RSTs (rst), verification look-ups, and entering a namespace.

Errors from the modules below reach the caller as the SockdoctorError family;
`status_of()` turns one into the outcome word the kill report uses.
"""

from __future__ import annotations

import errno
import fcntl
import os
import platform
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, TypeVar

import msgspec

from ..errors import PermissionDeniedError, SockdoctorError, UnsupportedError
from ..model import Snapshot, Socket, TcpState
from . import netns as netns_mod
from . import pidfd, procfs, sockdiag

if TYPE_CHECKING:  # loaded by close and rst only: a kill by fin or destroy never needs them
    from . import ptrace, rawtcp

T = TypeVar("T")
SO_COOKIE = 57
CAP_NET_ADMIN, CAP_NET_RAW = 12, 13
NO_DESTROY_BUILD = ("this kernel was built without socket destroy support "
                    "(CONFIG_INET_DIAG_DESTROY)")
NO_NET_ADMIN = "destroying sockets needs CAP_NET_ADMIN (run as root)"

SshEndpoint = tuple[str, int, str, int]  # (local addr, local port, peer addr, peer port)


class Host(msgspec.Struct, frozen=True, kw_only=True):
    """What this machine and this run allow, and what is off limits.

    A default Host (gathered=False) describes nothing: a plan made with it
    can be read, not applied.
    destroy: True or False when known, None when only trying will tell
    (probed on a connection of sockdoctor's own, right before the first
    real destroy).
    """

    gathered: bool = False
    pidfd: bool = True
    ptrace: bool = True  # syscall injection is implemented (x86_64)
    net_admin: bool = True
    net_raw: bool = True
    destroy: bool | None = None
    destroy_note: str = ""
    protected: frozenset[int] = frozenset()  # inodes of our own and our ancestors' sockets
    ssh: frozenset[SshEndpoint] = frozenset()


def gather() -> Host:
    """The facts of this host and this process, without changing anything."""
    net_admin = _has_capability(CAP_NET_ADMIN)
    destroy: bool | None = None
    note = ""
    built = _kernel_config("CONFIG_INET_DIAG_DESTROY")
    if not net_admin:
        destroy, note = False, NO_NET_ADMIN
    elif built is False:
        destroy, note = False, NO_DESTROY_BUILD
    elif built:
        destroy = True
    return Host(gathered=True, pidfd=pidfd.supported(), ptrace=_ptrace_arch(),
                net_admin=net_admin, net_raw=_has_capability(CAP_NET_RAW), destroy=destroy,
                destroy_note=note, protected=frozenset(protected_inodes()),
                ssh=frozenset(ssh_endpoints()))


def _ptrace_arch() -> bool:
    return platform.machine() in ("x86_64", "amd64")


def _has_capability(bit: int) -> bool:
    try:
        with open(f"{procfs.PROC}/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> bit & 1)
    except (OSError, ValueError):
        pass
    return os.geteuid() == 0


def _kernel_config(option: str) -> bool | None:
    """Whether the running kernel was built with `option`; None when nothing says."""
    import gzip

    paths = (f"{procfs.PROC}/config.gz", f"/boot/config-{os.uname().release}")
    for path in paths:
        try:
            opener = gzip.open if path.endswith(".gz") else open
            with opener(path, "rt", encoding="ascii", errors="replace") as f:
                for line in f:
                    if line.startswith(option + "=") or line.startswith(f"# {option} "):
                        return line.startswith(option + "=") and line.strip()[-1] in "ym"
            return False  # a complete configuration that does not mention it
        except OSError:
            continue
    return None


def protected_inodes() -> set[int]:
    """Sockets held by sockdoctor itself or by any of its ancestors (the SSH session).

    Walking up the parent chain finds the sshd (or terminal server) process
    holding the operator's own connection, whatever the environment says.
    """
    pids = []
    pid = os.getpid()
    while pid > 1 and len(pids) < 64:
        pids.append(pid)
        pid = _parent(pid)
    return set(procfs.socket_owners(pids).by_inode)


def _parent(pid: int) -> int:
    try:
        with open(f"{procfs.PROC}/{pid}/stat", encoding="ascii", errors="replace") as f:
            stat = f.read()
        return int(stat[stat.rfind(")") + 2:].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


def ssh_endpoints() -> set[SshEndpoint]:
    """(local addr, local port, peer addr, peer port) of $SSH_CONNECTION, if any."""
    parts = os.environ.get("SSH_CONNECTION", "").split()
    if len(parts) != 4 or not parts[1].isdigit() or not parts[3].isdigit():
        return set()
    client, cport, server, sport = parts
    return {(server, int(sport), client, int(cport))}


def with_owners(snapshot: Snapshot) -> Snapshot:
    """A copy of a snapshot taken without owners, with each socket's holders joined.

    For `kill()` on a bare list of sockets: owners decide the method.
    """
    if snapshot.owners_scanned:
        return snapshot
    by_inode = procfs.socket_owners().by_inode
    sockets = [msgspec.structs.replace(sk, owners=list(by_inode.get(sk.inode, ())))
               if sk.inode else sk for sk in snapshot.sockets]
    processes = dict(snapshot.processes)
    for pid in {o.pid for sk in sockets for o in sk.owners} - processes.keys():
        proc = procfs.process_info(pid)
        if proc is not None:
            processes[pid] = proc
    return msgspec.structs.replace(snapshot, sockets=sockets, processes=processes,
                                   owners_scanned=True)


# --- errors, as outcome words ---------------------------------------------------

def status_of(exc: BaseException) -> str:
    """The outcome word for an error raised by a primitive."""
    if isinstance(exc, (pidfd.ProcessGone, pidfd.FdGone)):
        return "already-gone"
    if isinstance(exc, pidfd.IdentityChanged):
        return "identity-changed"
    if isinstance(exc, (PermissionDeniedError, PermissionError)):
        return "not-permitted"
    if isinstance(exc, UnsupportedError):
        return "unsupported"
    return "failed"


def describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and not isinstance(exc, SockdoctorError):
        return exc.strerror or str(exc)
    return str(exc)


Errors = (SockdoctorError, OSError)


# --- one actor at a time ------------------------------------------------------------

ACT_LOCK = "/run/sockdoctor/act.lock"
LOCK_POLL_S = 0.01


@contextmanager
def acting(stop: threading.Event | None = None, path: str = ACT_LOCK) -> Iterator[bool]:
    """Hold the host-wide lock every sockdoctor takes around a batch of actions.

    Between reading a socket's state and acting on it, another sockdoctor
    (a second `kill --yes`, `reap --apply`) could end it: then both would
    claim it. Under this lock, a method's "it was still CLOSE-WAIT, I sent
    the FIN" is provable among sockdoctors. The file is readable by all
    (flock needs no write access), so root's `kill` and the reaper's dynamic
    user share it. Yields True once held; False if `stop` was set while
    waiting (then nothing may be done). Without a lock file we may create or
    read (not root, no /run/sockdoctor), batches go unlocked: such a run can
    only reach its own user's processes.
    """
    try:
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
        fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError:
        yield True
        return
    try:
        while True:  # polled, so that a stop (Ctrl-C, SIGTERM) ends the wait
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if stop is not None and stop.wait(LOCK_POLL_S):
                    yield False
                    return
                if stop is None:
                    time.sleep(LOCK_POLL_S)
        yield True
    finally:
        os.close(fd)  # releases the lock


# --- namespaces -----------------------------------------------------------------

class NamespaceGone(pidfd.ProcessGone):
    """The network namespace of a planned socket no longer exists."""


class Namespaces:
    """Entering the namespaces of a plan, discovered once and only if needed."""

    def __init__(self) -> None:
        self._refs: dict[int, netns_mod.NsRef] | None = None
        self._own = netns_mod.current_inode()

    def run_in(self, inode: int, fn: Callable[[], T]) -> T:
        """fn() inside namespace `inode`; NamespaceGone if it does not exist any more."""
        if inode == self._own:
            return fn()
        if self._refs is None:
            self._refs = {ns.inode: ns for ns in netns_mod.discover()[0]}
        ref = self._refs.get(inode)
        if ref is None:
            raise NamespaceGone("its network namespace is gone")
        return netns_mod.run_in(ref, fn)


# --- fin, drain, keepalive: through a pidfd_getfd duplicate -----------------------

def open_process(pid: int) -> pidfd.PidFd:
    """A pidfd to borrow descriptors of `pid` (a context manager)."""
    return pidfd.PidFd(pid)


def shutdown(handle: pidfd.PidFd, fd: int, inode: int,
             only_from: frozenset[TcpState] | None = None) -> TcpState:
    """Method fin: shutdown(SHUT_RDWR) the process's socket; its TCP state before
    (read through the same duplicate: not shut down unless it was in `only_from`)."""
    return handle.shutdown(fd, inode, only_from=only_from)


class Drained(msgspec.Struct):
    taken: list[int]  # cookies of the planned connections accepted and closed
    foreign: list[str] = msgspec.field(default_factory=list)  # never expected: see below
    refused: str = ""  # why nothing was accepted (the queue was not provably ours)


def drain_queue(listener: tuple[int, int, int], holders: list[int], cookies: set[int],
                queued_now: Callable[[], set[int]], go_on: Callable[[], bool]) -> Drained:
    """Accept the planned connections from a listener's queue and close them: only those.

    listener: (pid, fd, inode) to borrow it from; holders: every process that
    holds it. accept() hands out the oldest connection first and nothing can
    give one back, so it is only called when the queue provably holds planned
    connections only: with every holder stopped (ptrace, no accept of theirs
    can interleave), the queue length the kernel reports (tcp_info of the
    listener) must equal the number of planned connections still waiting in
    it (`queued_now()`, looked up by cookie). New arrivals join at the tail,
    so exactly that many accepts return exactly them. Otherwise nothing is
    accepted and `refused` says why.
    """
    from . import ptrace

    pid, fd, inode = listener
    with pidfd.PidFd(pid) as handle, handle.borrow(fd, inode) as sock:
        return ptrace.while_frozen(holders or [pid], lambda: _drain_frozen(
            sock, cookies, queued_now, go_on))


def _drain_frozen(sock: socket.socket, cookies: set[int], queued_now: Callable[[], set[int]],
                  go_on: Callable[[], bool]) -> Drained:
    waiting = queued_now() & cookies
    length = pidfd.listen_queue(sock)
    if length != len(waiting):
        return Drained(taken=[], refused=(
            f"the accept queue holds {length} connection(s), {len(waiting)} of them planned: "
            "accept() hands out the oldest first, so draining could take one that is not "
            "planned; left alone"))
    out = Drained(taken=[])
    # O_NONBLOCK lives on the open file the owner shares with our duplicate: give it
    # back as it was before the owner runs again, or its blocking accept() fails EAGAIN.
    blocking = sock.getblocking()
    sock.setblocking(False)
    try:
        for _ in range(length):
            if not go_on():
                break
            conn, _addr = sock.accept()
            with conn:
                cookie = int.from_bytes(conn.getsockopt(socket.SOL_SOCKET, SO_COOKIE, 8),
                                        "little")
                if cookie in waiting:
                    out.taken.append(cookie)
                else:  # cannot happen with every holder stopped; if it does, say so loudly
                    out.foreign.append(_conn_name(conn, cookie))
                    conn.shutdown(socket.SHUT_RDWR)
    finally:
        sock.setblocking(blocking)
    return out


def _conn_name(conn: socket.socket, cookie: int) -> str:
    try:
        peer = conn.getpeername()
    except OSError:
        peer = ("?", 0)
    return f"{peer[0]}:{peer[1]} (cookie {cookie})"


KEEPALIVE_OPTIONS = (  # (name, level, option) as read back after arming
    ("keepalive", socket.SOL_SOCKET, socket.SO_KEEPALIVE),
    ("idle_s", socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
    ("interval_s", socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
    ("count", socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
    ("user_timeout_ms", socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT),
)


def arm_keepalive(handle: pidfd.PidFd, fd: int, inode: int, wanted: dict[str, int],
                  ) -> tuple[dict[str, int], dict[str, int]]:
    """Set keepalive options on the process's socket `fd`: (options before, read back after).

    `wanted` maps names of KEEPALIVE_OPTIONS to values. Through a duplicate,
    the program's own socket changes. TCP_KEEPIDLE goes last: setting it
    re-arms the timer from the time the connection has already been idle, so
    a connection silent for longer than `idle_s` is probed at once.
    """
    with handle.borrow(fd, inode) as sock:
        before = _keepalive_options(sock)
        for name, level, option in sorted(KEEPALIVE_OPTIONS, key=lambda o: o[0] == "idle_s"):
            if name in wanted:
                sock.setsockopt(level, option, wanted[name])
        return before, _keepalive_options(sock)


def arm_keepalive_kernel(sockets: list[Socket], wanted: dict[str, int]
                         ) -> list[tuple[int, dict[str, int], dict[str, int]] | None]:
    """Arm keepalive on sockets of the current namespace with the kernel engine
    (bpf_setsockopt from one iter/tcp pass): (errno, before, after) each, None for a
    socket it did not settle (or all None when the engine is not in use)."""
    from .bpf import keepalive as bpf_keepalive  # ctypes and libbpf only for keepalive

    if not bpf_keepalive.usable():
        return [None] * len(sockets)
    return bpf_keepalive.arm(sockets, wanted)


def _keepalive_options(sock: socket.socket) -> dict[str, int]:
    return {name: sock.getsockopt(level, option) for name, level, option in KEEPALIVE_OPTIONS}


# --- destroy ---------------------------------------------------------------------

def destroy(sockets: list[Socket]) -> list[int]:
    """SOCK_DESTROY each socket of the current namespace: an errno each (0: destroyed)."""
    nl = sockdiag.open_socket()
    try:
        return sockdiag.destroy(nl, sockets)
    finally:
        nl.close()


def states_now(sockets: list[Socket]) -> list[int | None]:
    """Each socket's TCP state now, by its exact id (None: gone); current namespace."""
    nl = sockdiag.open_socket()
    try:
        return sockdiag.states_now(nl, sockets)
    finally:
        nl.close()


def destroy_in_kernel(sockets: list[Socket], states: list[int]
                      ) -> list[tuple[int, int] | None]:
    """The kernel engine's destroy (bpf_sock_destroy from one iter/tcp pass) on sockets of
    the current namespace: (errno, state met) each, None for a socket it did not settle
    (all None when the engine is not in use). `states[i]`: the mask of states sockets[i]
    may still be ended in (0: any); one that left them is EALREADY, untouched."""
    from .bpf import destroy as bpf_destroy  # ctypes and libbpf only for a kill

    if not bpf_destroy.usable():
        return [None] * len(sockets)
    return bpf_destroy.destroy(sockets, states)


def probe_destroy() -> tuple[bool, str]:
    """Destroy a loopback connection of our own and check that it died: (works, note).

    Trusting a silent success is how `ss -K` misleads people on kernels built
    without CONFIG_INET_DIAG_DESTROY; a socket we made ourselves is the only
    safe thing to try it on.
    """
    try:
        with socket.create_server(("127.0.0.1", 0)) as server, \
                socket.create_connection(server.getsockname(), timeout=2) as client:
            accepted, _ = server.accept()
            with accepted:
                code = destroy([own_socket(client)])[0]
                if code == errno.EOPNOTSUPP:
                    return False, NO_DESTROY_BUILD
                if code in (errno.EPERM, errno.EACCES):
                    return False, NO_NET_ADMIN
                try:
                    client.recv(1)
                except OSError:
                    return True, ""
                return False, "SOCK_DESTROY was accepted but the socket survived"
    except OSError as exc:  # no loopback here: we cannot tell, so let the kernel answer
        return True, f"not verified ({exc.strerror or exc})"


def own_socket(sock: socket.socket) -> Socket:
    """A model Socket for a connected socket of this process."""
    local, peer = sock.getsockname(), sock.getpeername()
    cookie = int.from_bytes(sock.getsockopt(socket.SOL_SOCKET, SO_COOKIE, 8), "little")
    return Socket(0, sock.family, TcpState.ESTABLISHED, local[0], local[1], peer[0],
                  peer[1], os.fstat(sock.fileno()).st_ino, cookie, os.getuid(), 0, 0)


# --- close, rst --------------------------------------------------------------------

def close_fds(pid: int, targets: list[tuple[int, int]], placeholder: bool,
              ) -> list[ptrace.CloseResult | SockdoctorError]:
    """Method close for (fd, inode) pairs of one process, in one ptrace stop."""
    from . import ptrace

    return ptrace.inject_close_many(pid, targets, placeholder=placeholder)


def is_close_result(result: object) -> bool:
    from . import ptrace

    return isinstance(result, ptrace.CloseResult)


@contextmanager
def rst_killer() -> Iterator[rawtcp.RstKiller]:
    """Forged-RST machinery for the current namespace (raw sockets, capture)."""
    from . import rawtcp

    with rawtcp.RstKiller() as killer:
        yield killer


# --- verification -------------------------------------------------------------------

def look(sockets: list[Socket]) -> dict[int, Socket | None]:
    """Each socket (of the current namespace) as the kernel has it now, by cookie.

    Many at once: one dump, cut down in the kernel to their ports; a few:
    one exact request each.
    """
    nl = sockdiag.open_socket()
    try:
        if len(sockets) > 64:
            ports = {sk.local_port for sk in sockets}
            program = sockdiag.port_filter(ports) \
                if len(ports) <= sockdiag.MAX_FILTER_PORTS else b""
            live = {sk.cookie: sk for sk in sockdiag.dump(
                nl, sockdiag.DumpOptions(sockdiag.ALL_STATES, bytecode=program))}
            return {sk.cookie: live.get(sk.cookie) for sk in sockets}
        return {sk.cookie: sockdiag.lookup(nl, sk) for sk in sockets}
    finally:
        nl.close()


def fd_points_at(pid: int, fd: int, inode: int) -> bool:
    """Whether descriptor `fd` of `pid` still names socket `inode`."""
    try:
        return os.readlink(f"{procfs.PROC}/{pid}/fd/{fd}") == f"socket:[{inode}]"
    except OSError:
        return False
