"""Network namespaces: find them all, name them, run code inside one.

Code runs inside a namespace on a fresh thread that calls setns(2) and then
ends, so the main thread never leaves its own namespace and no pooled thread
is ever left behind in a foreign one. Sockets opened on that thread stay bound
to the namespace after the thread is gone.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from . import procfs
from .oserrors import os_edge, user_error

CLONE_NEWNET = 0x40000000
NETNS_RUN_DIRS = ("/run/netns", "/var/run/docker/netns")
T = TypeVar("T")

_libc = ctypes.CDLL(None, use_errno=True)


@dataclass(frozen=True, slots=True)
class NsRef:
    """How to enter one namespace, and what to call it."""

    inode: int
    name: str
    kind: str  # host | named | container | process | current
    path: str  # a file that setns(2) accepts
    pid: int = 0


def can_enter_others() -> bool:
    """setns(2) into another network namespace needs CAP_SYS_ADMIN."""
    return procfs.has_capabilities(procfs.CAP_SYS_ADMIN)


def setns(fd: int, nstype: int = CLONE_NEWNET) -> None:
    if _libc.setns(fd, nstype) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def current_inode() -> int:
    return os.stat(f"{procfs.PROC}/thread-self/ns/net").st_ino


def host_inode() -> int | None:
    """The initial namespace, which is what an operator calls "the host".

    PID 1 lives there, and so does kthreadd (PID 2), which helps when PID 1
    refuses inspection (some init systems are not dumpable).
    """
    for pid in (1, 2):
        try:
            return os.stat(f"{procfs.PROC}/{pid}/ns/net").st_ino
        except OSError:
            continue
    return None


def named() -> list[str]:
    """The names `ip netns` (and docker) give namespaces: no root needed (completion)."""
    names: list[str] = []
    for run_dir in NETNS_RUN_DIRS:
        try:
            names += sorted(os.listdir(run_dir))
        except OSError:
            continue
    return list(dict.fromkeys(names))


def names_by_inode() -> dict[int, str]:
    """The name `ip netns` (or docker) gives each bind-mounted namespace, by inode."""
    names: dict[int, str] = {}
    for name, _path, inode in _bound():
        names.setdefault(inode, name)
    return names


def _bound() -> Iterator[tuple[str, str, int]]:
    """(name, path, inode) of each namespace bind-mounted under NETNS_RUN_DIRS."""
    for run_dir in NETNS_RUN_DIRS:
        try:
            names = sorted(os.listdir(run_dir))
        except OSError:
            continue
        for name in names:
            path = f"{run_dir}/{name}"
            try:
                yield name, path, os.stat(path).st_ino
            except OSError:
                continue


def default_scope() -> str:
    """What --netns means when it is not given, as ss decides it.

    Inside a network namespace other than the host's (`ip netns exec X`, a
    container): "self", that namespace only. On the host: "all". When the
    host's namespace cannot be read (/proc/1 and /proc/2 refused: not root,
    or hidepid) it is "all" too: without that right other namespaces cannot
    be entered either, so the scan covers the current one and says so.
    """
    host = host_inode()
    return "self" if host is not None and current_inode() != host else "all"


def discover() -> tuple[list[NsRef], int]:
    """Every network namespace reachable through a process or a bind mount.

    Returns the namespaces and how many processes could not be inspected
    (without root, other users' namespaces are invisible).
    """
    host = host_inode()
    found: dict[int, NsRef] = {}
    for name, path, inode in _bound():
        if inode != host and inode not in found:
            found[inode] = NsRef(inode, name, "named", path)
    own = current_inode()
    # Without root PID 1 and 2 are not inspectable: the namespace we run in is
    # then the best guess at "the host" (unless `ip netns` names it).
    host = own if host is None else host
    denied = 0
    with os_edge():  # no /proc at all: sockdoctor's error, not an OSError
        pids = procfs.list_pids()
    for pid in pids:
        path = f"{procfs.PROC}/{pid}/ns/net"
        try:
            inode = os.stat(path).st_ino
        except PermissionError:
            denied += 1
            continue
        except OSError:
            continue
        if inode in found:
            continue
        if inode == host:
            found[inode] = NsRef(inode, "host", "host", path, pid)
        else:
            found[inode] = _process_ns(inode, pid, path)
    if own not in found:
        kind = "host" if own == host else "current"
        found[own] = NsRef(own, kind, kind, f"{procfs.PROC}/thread-self/ns/net", os.getpid())
    ordered = sorted(found.values(), key=lambda ns: (ns.kind != "host", ns.name))
    return ordered, denied


def _process_ns(inode: int, pid: int, path: str) -> NsRef:
    info = procfs.process_info(pid)
    if info and info.container:
        return NsRef(inode, f"container:{info.container}", "container", path, pid)
    comm = info.comm if info else "?"
    return NsRef(inode, f"pid:{pid}({comm})", "process", path, pid)


def select(namespaces: list[NsRef], wanted: str) -> list[NsRef]:
    """Narrow the list to what `--netns` names (selectors.select_netns: all, host, self,
    a name, an inode, container:ID or a PID inside it)."""
    from ..selectors import select_netns

    chosen = select_netns(namespaces, wanted, own=current_inode(), netns_of_pid=_pid_netns)
    if chosen or not wanted.strip().isdigit():
        return chosen
    inode = _pid_netns(int(wanted))  # a namespace discover() missed (it just appeared)
    return [_process_ns(inode, int(wanted), f"{procfs.PROC}/{int(wanted)}/ns/net")] if inode else []


def _pid_netns(pid: int) -> int | None:
    try:
        return os.stat(f"{procfs.PROC}/{pid}/ns/net").st_ino
    except OSError:
        return None


def run_in(ns: NsRef, fn: Callable[[], T]) -> T:
    """Call fn() inside the namespace and return its result (or raise its exception).

    Failing to enter the namespace is sockdoctor's error (oserrors.user_error);
    what fn() raises is fn's own.
    """
    if ns.inode == current_inode():
        return fn()
    result = run_many([(ns, fn)])[0]
    if isinstance(result, BaseException):
        raise result
    return result


def run_many(jobs: Iterable[tuple[NsRef, Callable[[], T]]], parallel: int = 4) -> list[T]:
    """Run each job inside its namespace, a few at a time, results in order.

    A job that fails yields its exception as the result (not raised), so one
    unreachable namespace does not hide the others. Failing to enter one
    gives sockdoctor's error (oserrors.user_error); fn's exceptions are its own.
    """
    jobs = list(jobs)
    results: list = [None] * len(jobs)
    own = current_inode()

    def worker(index: int, ns: NsRef, fn: Callable[[], T]) -> None:
        try:
            if ns.inode != own:
                _enter(ns)
        except OSError as exc:
            results[index] = user_error(exc)
            return
        try:
            results[index] = fn()
        except BaseException as exc:
            results[index] = exc

    for start in range(0, len(jobs), parallel):
        threads = [threading.Thread(target=worker, args=(i, ns, fn), daemon=True)
                   for i, (ns, fn) in enumerate(jobs[start:start + parallel], start)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    return results


def _enter(ns: NsRef) -> None:
    """setns(2) this thread into the namespace (for good: the thread then ends)."""
    fd = os.open(ns.path, os.O_RDONLY)
    try:
        setns(fd)
    finally:
        os.close(fd)
