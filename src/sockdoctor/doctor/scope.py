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

from dataclasses import dataclass

import msgspec

from ..errors import SockdoctorError
from ..model import ALL_STATES_MASK, Netns, Snapshot, Socket, TcpState
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


def narrows(query: Query) -> bool:
    """Does the query select fewer than all sockets of its namespaces?"""
    return bool(query.states != ALL_STATES_MASK or query.expr is not None or query.ports
                or query.needs_owners or query.needs_age or query.family)


def select(snapshot: Snapshot, query: Query, *, strict: bool = True,
           ) -> tuple[Snapshot, Scope | None]:
    """The part of `snapshot` the doctor should judge for `query`.

    Namespaces are chosen by `query.netns` (Query.namespaces_in). strict: a
    --netns that names nothing in the snapshot is a NotFoundError (the
    previous sample of a trend is read leniently). Without a narrowing filter
    every socket of those namespaces is kept and the scope is None.
    """
    namespaces = (query.namespaces_in(snapshot) if strict
                  else _lenient_namespaces(snapshot, query))
    everywhere = len(namespaces) == len(snapshot.namespaces)
    inodes = {ns.inode for ns in namespaces}
    in_ns = snapshot.sockets if everywhere else [sk for sk in snapshot.sockets
                                                 if sk.netns in inodes]
    if not narrows(query):
        if everywhere:
            return snapshot, None
        return _subset(snapshot, in_ns, namespaces, _owners(in_ns)), None
    query.learn(snapshot.namespaces)
    chosen = [sk for sk in in_ns if query.selects(sk, snapshot.processes)]
    picked = {id(sk) for sk in chosen}
    kept = [sk for sk in in_ns if id(sk) in picked or sk.state == TcpState.LISTEN]
    pids = _owners(chosen)
    scope = Scope(ports=frozenset(p for sk in chosen for p in ((sk.netns, sk.local_port),
                                                               (sk.netns, sk.peer_port))),
                  pids=frozenset(pids))
    return _subset(snapshot, kept, namespaces, pids), scope


def _lenient_namespaces(snapshot: Snapshot, query: Query) -> list[Netns]:
    try:
        return query.namespaces_in(snapshot)
    except SockdoctorError:
        return []


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
