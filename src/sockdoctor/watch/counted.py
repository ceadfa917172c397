"""The exporter's steady samples from the kernel engine: counts, not sockets.

A sample of the sock_diag path brings every socket into Python, though the
exporter only counts most of them (per namespace and state, and the local
ports in use). With the kernel engine, linux/bpf/aggregate.py counts them in
the kernel and sends up only the sockets the metrics break down by owner,
side and port: CLOSE-WAIT (with their ages) and LISTEN (accept queues).
Their owners come from the sampler's OwnerCache, rechecked for just their
processes. The Sampler asks for such a sample only when that is all its
consumer needs (Sampler._counted); any doubt (an emitted socket the cache
cannot place, a namespace that fails, the program refused) gives None, and
the sample is taken the usual way.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from .. import inventory
from ..linux.bpf import BpfError, aggregate
from ..linux.netns import NsRef
from ..linux.ownercache import OwnerCache, ProcessCache
from ..model import Netns, Snapshot, TcpState
from ..query import Query

log = logging.getLogger("sockdoctor.watch")
EMITTED = (TcpState.CLOSE_WAIT, TcpState.LISTEN)  # what watch/metrics.py breaks down


@dataclass
class Counted:
    """A counted sample: the emitted sockets as a snapshot, every socket as tallies."""

    snapshot: Snapshot  # CLOSE-WAIT and LISTEN only, with owners and processes
    tallies: dict[int, aggregate.Pass]  # netns inode -> its counts and ports in use
    readlinks: int
    denied_pids: int


@dataclass
class Inputs:
    """What the sampler keeps that a counted sample reads (and the owner cache updates)."""

    owners: OwnerCache
    facts: ProcessCache
    unowned: set[int]  # inodes a full walk found no owner for
    extra_pids: set[int]  # processes the metrics name besides the owners (findings)
    names: dict[int, str]  # netns inode -> the name it was first given
    host_sysctls: dict[str, str]


class KernelCounts:
    """The loaded counting program, kept while its sampler lives."""

    def __init__(self) -> None:
        self._agg = aggregate.Aggregator(EMITTED)
        self.off = ""  # why it is no longer tried (the kernel refused it)

    def usable(self) -> bool:
        return not self.off and aggregate.usable()

    def close(self) -> None:
        self._agg.close()

    def take(self, namespaces: list[NsRef], given: Inputs, started: float,
             warnings: list[str]) -> Counted | None:
        """One counted sample of these namespaces, or None (see the module doc)."""
        passes = self._passes(namespaces)
        if passes is None:
            return None
        emitted = [sk for found in passes for sk in found.emitted]
        readlinks = _place(given, {sk.inode for sk in emitted if sk.inode})
        if readlinks is None:
            return None
        owner_map = given.owners.owner_map()
        inventory.warn_denied(owner_map, warnings)
        records = [Netns(inode=found.netns, name=given.names.setdefault(found.netns, ns.name),
                         kind=ns.kind, pid=ns.pid, sysctls=found.sysctls)
                   for ns, found in zip(namespaces, passes, strict=True)]
        joined = inventory.attach_owners(
            emitted, emitted, owner_map, Query(), records, evidence=False,
            facts=inventory.Facts(given.facts.process), threads=set())
        for pid in given.extra_pids - joined.processes.keys():
            proc = given.facts.process(pid, owner_map.fd_counts.get(pid, 0), False)
            if proc is not None:
                joined.processes[pid] = proc
        snap = inventory.assemble(joined, records, warnings, owners=True, info=False,
                                  age=True, evidence=True, created=started,
                                  host_sysctls=given.host_sysctls)
        for found in passes:
            found.emitted = []  # they live on in the snapshot
        return Counted(snap, {found.netns: found for found in passes}, readlinks,
                       owner_map.denied_pids)

    def _passes(self, namespaces: list[NsRef]) -> list[aggregate.Pass] | None:
        try:
            results = self._agg.run_all(namespaces)
        except BpfError as exc:
            results = [exc]
        failed = [r for r in results if isinstance(r, BaseException)]
        if not failed:
            return results  # type: ignore[return-value]
        if any(isinstance(r, BpfError) for r in failed):
            self.off = str(next(r for r in failed if isinstance(r, BpfError)))
            log.warning("counting in the kernel failed (%s): sampling through sock_diag",
                        self.off)
            self.close()
        return None  # a namespace that failed: the usual path reports it its way


def _place(given: Inputs, inodes: set[int]) -> int | None:
    """Owners for these inodes in the cache: their holders rechecked, then every cached
    process if one is missing. None: still one the cache cannot place."""
    owners = given.owners
    pids = set(given.extra_pids)
    for holders in filter(None, map(owners.owner_map().by_inode.get, inodes)):
        pids.update(o.pid for o in holders)
    readlinks = owners.recheck(pids)
    missing = inodes - owners.owner_map().by_inode.keys() - given.unowned
    if missing:
        readlinks += owners.recheck(owners.pids())
        if inodes - owners.owner_map().by_inode.keys() - given.unowned:
            return None
    return readlinks
