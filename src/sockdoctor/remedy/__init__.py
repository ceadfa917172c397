"""`kill`: end chosen connections by the safest method that works.

plan (plan.py) -> apply (methods.py) -> verify (verify.py) -> audit (audit.py).
`kill(..., dry_run=True)` stops after the plan, which is what the CLI prints
without --yes.
"""

from __future__ import annotations

import errno
import os
import platform
import socket
from collections.abc import Sequence

import msgspec

from ..errors import (
    EXIT_FINDINGS,
    EXIT_OK,
    EXIT_PERMISSION,
    EXIT_UNSUPPORTED,
    UsageError,
)
from ..linux import netns as netns_mod
from ..linux import pidfd, procfs, sockdiag
from ..model import Snapshot, Socket, TcpState, state_mask
from . import methods, verify
from .audit import DEFAULT_PATH, AuditLog
from .plan import METHODS, Capabilities, Plan, PlanItem, build, dead_fd_items
from .verify import Outcome

__all__ = ["DEFAULT_PATH", "METHODS", "KillReport", "Plan", "PlanItem", "kill", "probe"]

DEFAULT_MAX = 1000


class KillReport(msgspec.Struct, kw_only=True):
    """The plan and, once applied, what became of every socket."""

    plan: Plan
    applied: bool
    outcomes: list[Outcome] = msgspec.field(default_factory=list)
    capabilities: Capabilities | None = None

    @property
    def exit_code(self) -> int:
        """0 every selected socket is gone (or nothing was applied), 4 or 5 when every
        failure was for want of permission or of a kernel feature, else 1."""
        if not self.applied:
            return EXIT_OK
        failed = {o.outcome for o in self.outcomes if not o.success}
        if not failed:
            return EXIT_OK
        if failed == {"not-permitted"}:
            return EXIT_PERMISSION
        if failed == {"unsupported"}:
            return EXIT_UNSUPPORTED
        return EXIT_FINDINGS


def probe(need: set[str]) -> Capabilities:
    """Find out what this kernel and our privileges allow, by trying it."""
    caps = Capabilities(ptrace_close=platform.machine() == "x86_64")
    caps.pidfd = pidfd.supported() if need & {"fin", "drain", "auto"} else True
    if need & {"destroy", "auto"}:
        caps.destroy, caps.destroy_note, caps.destroy_denied = _probe_destroy()
    caps.raw = _has_capability(13)  # CAP_NET_RAW
    return caps


def _has_capability(bit: int) -> bool:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> bit & 1)
    except (OSError, ValueError):
        pass
    return os.geteuid() == 0


def _probe_destroy() -> tuple[bool, str, bool]:
    """Destroy a connection of our own over loopback and check that it really died.

    Returns (works, note, denied): denied when it failed for want of privileges.

    Trusting a silent success is how `ss -K` misleads people on kernels built
    without CONFIG_INET_DIAG_DESTROY; a socket we made ourselves is the only
    safe thing to try it on.
    """
    try:
        with socket.create_server(("127.0.0.1", 0)) as server, \
                socket.create_connection(server.getsockname(), timeout=2) as client:
            accepted, _ = server.accept()
            with accepted:
                me = _own_socket(client)
                nl = sockdiag.open_socket()
                try:
                    code = sockdiag.destroy(nl, [me])[0]
                finally:
                    nl.close()
                if code == errno.EOPNOTSUPP:
                    return False, "this kernel was built without socket destroy support", False
                if code in (errno.EPERM, errno.EACCES):
                    return False, "destroying sockets needs CAP_NET_ADMIN (run as root)", True
                try:
                    client.recv(1)
                except OSError:
                    return True, "", False
                return False, "SOCK_DESTROY was accepted but the socket survived", False
    except OSError as exc:  # no loopback here: we cannot tell, so let the kernel answer
        return True, f"not verified ({exc.strerror or exc})", False


def _own_socket(sock: socket.socket) -> Socket:
    local, peer = sock.getsockname(), sock.getpeername()
    cookie = int.from_bytes(sock.getsockopt(socket.SOL_SOCKET, methods.SO_COOKIE, 8), "little")
    return Socket(0, socket.AF_INET, TcpState.ESTABLISHED, local[0], local[1], peer[0],
                  peer[1], os.fstat(sock.fileno()).st_ino, cookie, os.getuid(), 0, 0)


def kill(target: Snapshot | Sequence[Socket], method: str = "auto", dry_run: bool = True, *,
         force: bool = False, max_count: int = DEFAULT_MAX, rate: float = 0.0,
         audit_log: str | None = DEFAULT_PATH, dead_fds: bool = False,
         pids: set[int] | None = None) -> KillReport:
    """Plan (and unless dry_run, carry out) the end of the given sockets.

    target: a Snapshot from scan() (its sockets are the selection and its
        processes name the owners) or a list of Sockets.
    dead_fds: also close descriptors of sockets that are in no TCP table any
        more (from snapshot.dead_fds, scan(evidence=True)), optionally only of `pids`.
    Raises UsageError when more than `max_count` sockets would be acted on.
    """
    if method not in METHODS:
        raise UsageError(f"unknown method '{method}' (choose from {', '.join(METHODS)})")
    snapshot = target if isinstance(target, Snapshot) else _wrap(list(target))
    _ensure_owners(snapshot)
    caps = probe({method})
    queued = _queue_namespaces(snapshot)
    listeners = _listeners(snapshot, queued) if queued else []
    plan = build(snapshot, snapshot.sockets, method=method, caps=caps, force=force,
                 listeners=listeners)
    if dead_fds:
        plan.items += dead_fd_items(snapshot, len(plan.items) + 1, pids, caps)
    if caps.destroy_note and method in ("auto", "destroy"):
        plan.notes.append(f"socket destroy: {caps.destroy_note}")
    if len(plan.actions) > max_count:
        raise UsageError(
            f"this would act on {len(plan.actions)} sockets, more than --max {max_count}; "
            "narrow the filter or raise --max")
    report = KillReport(plan=plan, applied=False, capabilities=caps)
    if dry_run or not plan.items:
        return report
    # Opened first: an unwritable log stops us before acting. With nothing to act
    # on, the report still says why each socket was left alone.
    audit = AuditLog(audit_log if plan.actions else None)
    try:
        namespaces = {ns.inode: ns for ns in netns_mod.discover()[0]}
        actions = methods.apply(plan.items, namespaces, rate)
        report.outcomes = verify.outcomes(plan.items, actions, namespaces)
        report.applied = True
        for item, outcome in zip(plan.items, report.outcomes, strict=True):
            if item.method:
                audit.write(_audit_entry(item, outcome))
    finally:
        audit.close()
    return report


def _wrap(sockets: list[Socket]) -> Snapshot:
    import time

    return Snapshot(created=time.time(), hostname=socket.gethostname(),
                    kernel=os.uname().release, sockets=sockets)


def _ensure_owners(snapshot: Snapshot) -> None:
    """Owners decide the method; a snapshot taken without them gets them now."""
    if snapshot.owners_scanned:
        return
    from ..inventory import join_owners

    join_owners(snapshot.sockets, procfs.socket_owners())
    for pid in {o.pid for sk in snapshot.sockets for o in sk.owners}:
        proc = procfs.process_info(pid)
        if proc is not None:
            snapshot.processes[pid] = proc
    snapshot.owners_scanned = True


def _queue_namespaces(snapshot: Snapshot) -> set[int]:
    """Namespaces where some selected connection may wait in an accept queue."""
    return {sk.netns for sk in snapshot.sockets if not sk.owners and sk.inode == 0
            and sk.state in (TcpState.CLOSE_WAIT, TcpState.ESTABLISHED)}


def _listeners(snapshot: Snapshot, namespaces: set[int]) -> list[Socket]:
    """Listening sockets (with owners) of those namespaces, for `drain`."""
    from ..inventory import scan
    from ..query import Query

    found: list[Socket] = []
    for ns_inode in namespaces:
        snap = scan(Query(states=state_mask(TcpState.LISTEN)), owners=True, netns=str(ns_inode))
        found.extend(snap.sockets)
        snapshot.processes.update(snap.processes)
    return found


def _audit_entry(item: PlanItem, outcome: Outcome) -> dict:
    sk = item.socket
    owner = item.owners[0] if item.owners else item.listener
    entry: dict = {
        "netns": item.netns_name, "method": item.method, "outcome": outcome.outcome,
        "detail": outcome.detail,
        "pid": owner.pid if owner else None, "comm": owner.comm if owner else None,
        "fd": owner.fd if owner else None,
    }
    if sk is not None:
        entry.update(netns_inode=sk.netns, state=TcpState(sk.state).name,
                     local=f"{sk.local_addr}:{sk.local_port}",
                     peer=f"{sk.peer_addr}:{sk.peer_port}", inode=sk.inode, cookie=sk.cookie)
    else:
        entry.update(inode=item.dead_inode, state="dead-fd")
    return entry
