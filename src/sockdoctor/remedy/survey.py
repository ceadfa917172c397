"""scan_for_kill(policy) -> Snapshot: what plan_kill needs to know, collected in one go.

The sockets the policy may select (the kernel part of its one query,
Query.kernel_filter: the state mask and the ports, goes with the dump request),
with their owners and ages; the listening sockets of any namespace where a
selected connection still waits in an accept queue (`drain` takes it through
its listener); and, for --dead-fds, the evidence scan that finds descriptors
of sockets in no table.
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec

from ..model import Snapshot, TcpState, state_mask
from ..query import Query
from .policy import KillPolicy


def scan_for_kill(policy: KillPolicy, *, progress: Callable[[str], None] | None = None,
                  ) -> Snapshot:
    """A snapshot to plan `policy` on (scan() with what the kill needs)."""
    from ..inventory import ScanOptions, scan

    query = policy.query  # one state mask: the policy's, CLOSE-WAIT default applied
    snapshot = scan(query, ScanOptions(age=query.needs_age), owners=True,
                    evidence=policy.dead_fds != "no", progress=progress)
    queued = {sk.netns for sk in snapshot.sockets if sk.queued}
    return with_listeners(snapshot, queued) if queued else snapshot


def with_listeners(snapshot: Snapshot, namespaces: set[int]) -> Snapshot:
    """A copy of `snapshot` that also has the owned listeners of those namespaces."""
    from ..inventory import scan

    known = {sk.cookie for sk in snapshot.sockets}
    sockets = list(snapshot.sockets)
    processes = dict(snapshot.processes)
    for inode in sorted(namespaces):
        found = scan(Query(states=state_mask(TcpState.LISTEN)), owners=True, netns=str(inode))
        sockets += [sk for sk in found.sockets if sk.cookie not in known]
        processes.update(found.processes)
    return msgspec.structs.replace(snapshot, sockets=sockets, processes=processes)
