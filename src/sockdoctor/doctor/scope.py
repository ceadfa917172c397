"""Diagnosing part of a snapshot: what a filter selects, with listeners as context.

`doctor state close-wait` or `doctor --pid 42` narrows the sockets the rules
judge, but the rules still need every listener of the namespaces concerned:
a socket is on the server side when its local port is a listening port, and
accept queues are read from listeners. So the narrowed snapshot keeps those
LISTEN sockets as context, and findings that are only about context (a
backlogged listener on a port the filter left out, a process the filter did
not select) are dropped afterwards.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import msgspec

from ..model import Netns, Snapshot, Socket, TcpState
from ..query import Query
from .finding import Finding


@dataclass(frozen=True)
class Scope:
    """What a filter selected: findings must concern it to be reported."""

    ports: frozenset[tuple[int, int]]  # (netns inode, port) at either end of a selected socket
    pids: frozenset[int]  # processes holding a selected socket

    def covers(self, f: Finding) -> bool:
        if f.ports:
            return any((f.netns_inode, port) in self.ports for port in f.ports)
        if f.processes:
            return any(p.pid in self.pids for p in f.processes)
        return True  # about a whole namespace (sysctls, counters): --netns chose it


def select(snapshot: Snapshot, query: Query, *, strict: bool = True,
           ) -> tuple[Snapshot, Scope | None]:
    """The part of `snapshot` the doctor should judge for `query`.

    Namespaces are chosen by `query.netns` (Query.namespaces). strict: a
    --netns that names nothing in the snapshot is a NotFoundError (the
    previous sample of a trend is read leniently). Without a narrowing filter
    (Query.narrows) every socket of those namespaces is kept and the scope is
    None; with one, the sockets are Query.select's.
    """
    namespaces = query.namespaces(snapshot, strict=strict)
    everywhere = len(namespaces) == len(snapshot.namespaces)
    inodes = {ns.inode for ns in namespaces}
    in_ns = snapshot.sockets if everywhere else [sk for sk in snapshot.sockets
                                                 if sk.netns in inodes]
    if not query.narrows:
        if everywhere:
            return snapshot, None
        return _subset(snapshot, in_ns, namespaces, _owners(in_ns)), None
    anywhere = dataclasses.replace(query, netns="all")  # the namespaces are chosen above
    chosen = anywhere.select(snapshot, sockets=in_ns)
    picked = {id(sk) for sk in chosen}
    kept = [sk for sk in in_ns if id(sk) in picked or sk.state == TcpState.LISTEN]
    pids = _owners(chosen)
    scope = Scope(ports=frozenset(p for sk in chosen for p in ((sk.netns, sk.local_port),
                                                               (sk.netns, sk.peer_port))),
                  pids=frozenset(pids))
    return _subset(snapshot, kept, namespaces, pids), scope


def _owners(sockets: list[Socket]) -> set[int]:
    return {o.pid for sk in sockets for o in sk.owners}


def _subset(snapshot: Snapshot, sockets: list[Socket], namespaces: list[Netns],
            dead_fd_pids: set[int]) -> Snapshot:
    """Keep these sockets and namespaces, their owners, and dead descriptors of `dead_fd_pids`."""
    dead = [d for d in snapshot.dead_fds if d.pid in dead_fd_pids]
    pids = _owners(sockets) | {d.pid for d in dead}
    processes = {pid: p for pid, p in snapshot.processes.items() if pid in pids}
    return msgspec.structs.replace(snapshot, sockets=sockets, namespaces=namespaces,
                                   processes=processes, dead_fds=dead)
