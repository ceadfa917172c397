"""Owner sources: who holds each socket (pid, fd), for inventory.Scanner.

Three sources give the same OwnerMap, each with one method, start(scope):
it begins the work (which may run while the sockets are dumped) and returns
a function that takes the dumped sockets and gives their holders.

- ProcWalk: every /proc/PID/fd, a readlink per descriptor (the reference);
- bpf.owners.KernelWalk: the iter/task_file program, every process in one
  kernel pass;
- ownercache.CachedOwners: the sampler's cache, which reads only what
  changed since the previous scan and walks fully now and then.

choose() is the one place that decides between the first two.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from operator import attrgetter
from typing import Protocol

from ..model import Process, Socket
from . import procfs
from .bpf import owners as bpf_owners
from .netns import NsRef

_INODE = attrgetter("inode")


class Found:
    """The sockets a scan found, handed to an owner source.

    complete: False when they are only part of the namespaces' sockets (a
    counting socket source, bpf/aggregate.py: the others were counted, not
    dumped); also: processes to keep up to date besides their holders.
    """

    def __init__(self, sockets: list[Socket], complete: bool = True,
                 also: frozenset[int] = frozenset()) -> None:
        self.sockets = sockets
        self.complete = complete
        self.also = also

    @cached_property
    def live(self) -> set[int]:
        """Their inodes (0 left out: queued and TIME-WAIT sockets have no file)."""
        inodes = set(map(_INODE, self.sockets))
        inodes.discard(0)
        return inodes

    def unowned(self, owner_map: procfs.OwnerMap) -> bool:
        """Whether one of them (with a file) has no holder in `owner_map`."""
        return not self.live <= owner_map.by_inode.keys()


@dataclass
class Scope:
    """The namespaces a scan dumps (selected) among those that exist (found)."""

    selected: list[NsRef]
    found: list[NsRef]

    @cached_property
    def pids(self) -> tuple[list[int], list[int]]:
        """Processes to ask for owners: those inside the scanned namespaces first.

        A socket is nearly always held by a process of its own namespace, so
        when only some namespaces are scanned the other processes are walked
        only if a socket is still without an owner afterwards. (A socket
        passed to a process in another namespace that also stays held inside
        is then listed with its inside holders only.)
        """
        pids = procfs.list_pids()
        if len(self.selected) == len(self.found):
            return pids, []
        inside = {ns.inode for ns in self.selected}
        first: list[int] = []
        rest: list[int] = []
        for pid in pids:
            (first if procfs.netns_inode(pid) in inside else rest).append(pid)
        return first, rest


Finish = Callable[[Found], procfs.OwnerMap]


class OwnerSource(Protocol):
    """Where a scan's owners come from (see the module doc)."""

    def start(self, scope: Scope) -> Finish: ...


@dataclass
class Facts:
    """Where process facts come from: /proc each time, or a cache (the sampler's).

    `process(pid, fd_count, threads)` gives one process (None if gone);
    `protocols` remembers the protocol of socket inodes already looked at, so
    that the dead-descriptor check does not ask again for the same socket.
    """

    process: Callable[[int, int, bool], Process | None] = procfs.process_info
    protocols: dict[int, str] | None = None


class ProcWalk:
    """Every /proc/PID/fd, read while the sockets are dumped (forked walkers on a big host)."""

    def start(self, scope: Scope) -> Finish:
        first, other = scope.pids
        collect = procfs.socket_owners_async(first)

        def finish(found: Found) -> procfs.OwnerMap:
            owner_map = collect()
            if other and found.unowned(owner_map):
                owner_map.update(procfs.socket_owners(other))  # held from outside the netns
            return owner_map
        return finish


def choose() -> OwnerSource:
    """The full walk for this scan: the kernel engine's when it is in use and pays off
    (bpf/owners.py: worth_it), else /proc.

    The kernel sees every process's descriptors whatever our rights over them;
    without the right to read them through /proc (a reaper without
    CAP_SYS_PTRACE) it would name owners that fin or close could never reach,
    so then the /proc walk answers, as without the engine.
    """
    if procfs.sees_every_process() and bpf_owners.worth_it():
        return bpf_owners.KernelWalk()
    return ProcWalk()
