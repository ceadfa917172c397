"""Carrying out a plan: each method applied in batches, every identity re-checked.

Each method checks, at the moment it acts, that it still has the same socket:
fin/drain/close compare the descriptor's inode (pidfd_getfd + fstat, or
readlink in the stopped process), destroy and rst send the cookie, which the
kernel compares itself. Results are per item: "done" means the action was
carried out; verify.py then looks at what became of the socket.
"""

from __future__ import annotations

import errno
import select
import socket
import time
from collections import defaultdict
from collections.abc import Callable, Iterable

import msgspec

from ..errors import SockdoctorError
from ..linux import netns as netns_mod
from ..linux import pidfd, ptrace, rawtcp, sockdiag
from .plan import PlanItem

SO_COOKIE = 57


class Action(msgspec.Struct, kw_only=True):
    """What happened when one item was acted on."""

    index: int
    status: str  # done | already-gone | identity-changed | not-permitted | unsupported | failed
    detail: str = ""


def _status_of(exc: BaseException) -> str:
    if isinstance(exc, (pidfd.ProcessGone, pidfd.FdGone)):
        return "already-gone"
    if isinstance(exc, pidfd.IdentityChanged):
        return "identity-changed"
    if isinstance(exc, (pidfd.NotPermitted, PermissionError)):
        return "not-permitted"
    if isinstance(exc, pidfd.Unsupported):
        return "unsupported"
    return "failed"


_ERRNO_STATUS = {
    0: "done", errno.ENOENT: "already-gone", errno.ESTALE: "identity-changed",
    errno.EPERM: "not-permitted", errno.EACCES: "not-permitted",
    errno.EOPNOTSUPP: "unsupported",
}


class Pacer:
    """Spaces actions out to at most `rate` per second (0: as fast as possible)."""

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self.next = time.monotonic()

    def batch_size(self, default: int) -> int:
        return 1 if self.interval else default

    def wait(self) -> None:
        if not self.interval:
            return
        now = time.monotonic()
        if now < self.next:
            time.sleep(self.next - now)
        self.next = max(now, self.next) + self.interval


def apply(items: list[PlanItem], namespaces: dict[int, netns_mod.NsRef], rate: float = 0.0,
          ) -> list[Action]:
    """Carry out every planned item; one Action per item, in item order."""
    pacer = Pacer(rate)
    by_method: dict[str, list[PlanItem]] = defaultdict(list)
    for item in items:
        if item.method:
            by_method[item.method].append(item)
    actions: list[Action] = []
    runners: dict[str, Callable[[list[PlanItem]], list[Action]]] = {
        "fin": lambda batch: _fin(batch, pacer),
        "drain": lambda batch: _drain(batch, pacer),
        "close": lambda batch: _close(batch, pacer),
        "destroy": lambda batch: _per_netns(batch, namespaces, lambda b: _destroy(b, pacer)),
        "rst": lambda batch: _per_netns(batch, namespaces, lambda b: _rst(b, pacer)),
    }
    for method in ("fin", "drain", "close", "destroy", "rst"):
        if by_method.get(method):
            actions.extend(runners[method](by_method[method]))
    return sorted(actions, key=lambda a: a.index)


def _group_by_pid(items: Iterable[PlanItem], key: Callable[[PlanItem], int]
                  ) -> dict[int, list[PlanItem]]:
    groups: dict[int, list[PlanItem]] = defaultdict(list)
    for item in items:
        groups[key(item)].append(item)
    return groups


def _fin(items: list[PlanItem], pacer: Pacer) -> list[Action]:
    actions = []
    for pid, group in _group_by_pid(items, lambda i: i.owners[0].pid).items():
        try:
            handle = pidfd.PidFd(pid)
        except SockdoctorError as exc:
            actions.extend(Action(index=i.index, status=_status_of(exc), detail=str(exc))
                           for i in group)
            continue
        with handle:
            for item in group:
                pacer.wait()
                actions.append(_fin_one(handle, item))
    return actions


def _fin_one(handle: pidfd.PidFd, item: PlanItem) -> Action:
    sk = item.socket
    assert sk is not None
    fd = next(o.fd for o in item.owners if o.pid == handle.pid)
    try:
        state = handle.shutdown(fd, sk.inode)
    except SockdoctorError as exc:
        return Action(index=item.index, status=_status_of(exc), detail=str(exc))
    except OSError as exc:
        return Action(index=item.index, status=_status_of(exc), detail=exc.strerror or str(exc))
    return Action(index=item.index, status="done", detail=f"shut down (was {state.name})")


def _close(items: list[PlanItem], pacer: Pacer) -> list[Action]:
    """Inject shutdown+close for every descriptor of each socket, one stop per process."""
    targets: dict[int, list[tuple[int, int, int]]] = defaultdict(list)  # pid -> (fd, ino, idx)
    for item in items:
        inode = item.socket.inode if item.socket else item.dead_inode
        for owner in item.owners:
            targets[owner.pid].append((owner.fd, inode, item.index))
    status: dict[int, Action] = {}
    for pid, group in targets.items():
        pacer.wait()
        try:
            results = ptrace.inject_close_many(pid, [(fd, ino) for fd, ino, _ in group])
        except SockdoctorError as exc:
            for _, _, index in group:
                status.setdefault(index, Action(index=index, status=_status_of(exc),
                                                detail=str(exc)))
            continue
        for (fd, _, index), result in zip(group, results, strict=True):
            status[index] = _close_action(index, fd, result, status.get(index))
    return [status[item.index] for item in items]


def _close_action(index: int, fd: int, result: object, previous: Action | None) -> Action:
    if isinstance(result, SockdoctorError):
        action = Action(index=index, status=_status_of(result), detail=str(result))
    elif isinstance(result, ptrace.CloseResult) and result.close_rc == 0:
        note = f"; the interrupted {result.interrupted} {result.after}" \
            if result.interrupted else ""
        action = Action(index=index, status="done", detail=f"fd {fd} closed{note}")
    else:
        rc = getattr(result, "close_rc", -errno.EIO)
        action = Action(index=index, status="failed",
                        detail=f"close({fd}) returned {errno.errorcode.get(-rc, rc)}")
    if previous is not None and previous.status != "done":
        return previous  # one failed descriptor of a socket is what counts
    return action


def _per_netns(items: list[PlanItem], namespaces: dict[int, netns_mod.NsRef],
               run: Callable[[list[PlanItem]], list[Action]]) -> list[Action]:
    groups: dict[int, list[PlanItem]] = defaultdict(list)
    for item in items:
        assert item.socket is not None
        groups[item.socket.netns].append(item)
    actions = []
    for ns_inode, group in groups.items():
        ns = namespaces.get(ns_inode)
        if ns is None:
            actions.extend(Action(index=i.index, status="already-gone",
                                  detail="its network namespace is gone") for i in group)
            continue
        try:
            actions.extend(netns_mod.run_in(ns, lambda g=group: run(g)))
        except (SockdoctorError, OSError) as exc:
            actions.extend(Action(index=i.index, status=_status_of(exc), detail=str(exc))
                           for i in group)
    return actions


def _destroy(items: list[PlanItem], pacer: Pacer) -> list[Action]:
    sock = sockdiag.open_socket()
    actions = []
    try:
        size = pacer.batch_size(256)
        for start in range(0, len(items), size):
            pacer.wait()
            batch = items[start:start + size]
            codes = sockdiag.destroy(sock, [i.socket for i in batch])  # type: ignore[misc]
            for item, code in zip(batch, codes, strict=True):
                status = _ERRNO_STATUS.get(code, "failed")
                detail = "destroyed" if code == 0 else errno.errorcode.get(code, str(code))
                if code == errno.EOPNOTSUPP:
                    detail = "this kernel was built without INET_DIAG_DESTROY"
                elif code == errno.ENOENT:  # the kernel compares the cookie too
                    detail = "no such socket any more (closed, or its 4-tuple now belongs " \
                             "to another socket, which was left alone)"
                actions.append(Action(index=item.index, status=status, detail=detail))
    finally:
        sock.close()
    return actions


def _rst(items: list[PlanItem], pacer: Pacer) -> list[Action]:
    actions = []
    with rawtcp.RstKiller() as killer:
        for item in items:
            pacer.wait()
            sk = item.socket
            assert sk is not None
            result = killer.kill((sk.local_addr, sk.local_port), (sk.peer_addr, sk.peer_port),
                                 sk.family, cookie=sk.cookie)
            status = {"killed": "done", "not-found": "already-gone",
                      "gone": "already-gone"}.get(result.outcome, "failed")
            detail = result.outcome + ("; " + "; ".join(result.notes) if result.notes else "")
            actions.append(Action(index=item.index, status=status, detail=detail))
    return actions


def _drain(items: list[PlanItem], pacer: Pacer) -> list[Action]:
    """Accept queued connections through a duplicate of the listener, close ours.

    accept() takes the oldest connection first; each one taken is identified
    by its cookie. One we did not plan (a live client that arrived meanwhile)
    is closed gracefully and reported, since it cannot be given back.
    """
    groups: dict[tuple[int, int, int], list[PlanItem]] = defaultdict(list)
    for item in items:
        assert item.listener is not None
        groups[(item.listener.pid, item.listener.fd, item.listener_inode)].append(item)
    actions = []
    for (pid, fd, inode), group in groups.items():
        try:
            with pidfd.PidFd(pid) as handle, handle.borrow(fd, inode) as listener:
                actions.extend(_drain_listener(listener, group, pacer))
        except SockdoctorError as exc:
            actions.extend(Action(index=i.index, status=_status_of(exc), detail=str(exc))
                           for i in group)
    return actions


def _drain_listener(listener: socket.socket, group: list[PlanItem],
                    pacer: Pacer) -> list[Action]:
    wanted = {i.socket.cookie: i for i in group if i.socket is not None}
    done: dict[int, Action] = {}
    foreign = 0
    poller = select.poll()
    poller.register(listener.fileno(), select.POLLIN)
    # Never more accepts than planned sockets: anything beyond is somebody's live client.
    for _ in range(len(wanted)):
        if not poller.poll(0):
            break  # queue empty (the program may have accepted them itself)
        pacer.wait()
        conn, _addr = listener.accept()
        with conn:
            cookie = int.from_bytes(conn.getsockopt(socket.SOL_SOCKET, SO_COOKIE, 8), "little")
            item = wanted.get(cookie)
            if item is None:
                foreign += 1
                conn.shutdown(socket.SHUT_RDWR)
                continue
            done[item.index] = Action(index=item.index, status="done",
                                      detail="accepted from the queue and closed")
    note = (f"; {foreign} live connection(s) that arrived meanwhile were taken from the "
            "queue and closed" if foreign else "")
    return [done.get(i.index) or Action(
        index=i.index, status="already-gone" if not note else "failed",
        detail="no longer in the accept queue" + note) for i in group]
