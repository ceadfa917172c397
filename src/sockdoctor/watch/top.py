"""What `top` shows, as plain data: groups of sockets, how they change, the findings.

Rows are groups of sockets by network namespace x process x state x service
(as `ls --summary` counts them: the local port on the server side, the peer
address:port on the client side), each with its count, the change since the
last sample and since the first, the oldest socket's age and the Recv-Q
waiting in it. No I/O and no terminal here: the full-screen app
(render/topapp.py) and the one-frame printer (render/topframe.py) both show
a TopModel, which is updated with each sample of the shared sampler.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .. import words
from ..doctor import Finding
from ..errors import UsageError
from ..model import ACCEPT_QUEUE_OWNER, NO_OWNER, Snapshot, Socket, TcpState
from ..query import Query

SORTS = ("count", "growth", "age")
GroupKey = tuple[int, tuple[int, ...], int, str]  # netns, pids, state, service
# The "pids" of a group of sockets waiting in an accept queue (no process holds them yet).
QUEUED: tuple[int, ...] = (-1,)


@dataclass(slots=True)
class Group:
    """Sockets of one namespace, process (set of owner pids), state and service."""

    netns: int
    netns_name: str
    pids: tuple[int, ...]
    process: str  # "comm(pid)", "(accept queue)", "(no owner)", ...
    state: int
    service: str  # ":8000" or "-> 10.0.0.5:5432"
    port: int  # the local port (server side) or the peer port (client side)
    sockets: list[Socket] = field(default_factory=list)  # those listed (not counted)
    counted: int = 0  # sockets counted in the kernel, not listed (Sampler.group_in_kernel)
    oldest_ms: int | None = None
    recv_q: int = 0
    delta: int = 0  # change in count since the previous sample
    growth: int = 0  # change since the first sample

    @property
    def key(self) -> GroupKey:
        return (self.netns, self.pids, self.state, self.service)

    @property
    def count(self) -> int:
        return len(self.sockets) + self.counted

    @property
    def state_name(self) -> str:
        return words.state_name(self.state)


class TopModel:
    """Groups of the latest sample, sorted and filtered; remembers counts between samples."""

    def __init__(self, query: Query | None = None, sort: str = "count") -> None:
        self.query = query or Query.build(())
        self.filter_text = self.query.text
        self.sort = sort
        self.sample: Any = None
        self.groups: list[Group] = []
        self._first: dict[GroupKey, int] | None = None
        self._last: dict[GroupKey, int] = {}
        self._before_last: dict[GroupKey, int] = {}

    @property
    def findings(self) -> list[Finding]:
        report = getattr(self.sample, "report", None)
        return list(report.findings) if report is not None else []

    def update(self, sample: Any) -> None:
        """A new sample: regroup, and move the 'previous' counts on."""
        if sample.snapshot is None:  # a failed sample: keep showing the last good one
            self.sample = dataclasses.replace(self.sample, error=sample.error) \
                if self.sample is not None else sample
            return
        # top never looks back: the sample before last can go (this sampler is top's own,
        # and at 143k sockets a snapshot is ~100 MB)
        sample.previous = None
        self.sample = sample
        self._before_last = self._last
        self._regroup()
        counts = {g.key: g.count for g in self.groups}
        if self._first is None:
            self._first = counts
        self._last = counts
        self._apply_deltas()

    def set_filter(self, text: str) -> None:
        """A new filter in ss syntax (`state close-wait sport = :8000`); UsageError if bad."""
        query = Query.build(text)
        if query.netns != "all":
            raise UsageError("top's filter selects sockets; choose namespaces with --netns")
        self.query = dataclasses.replace(query, pids=self.query.pids,
                                         process=self.query.process,
                                         _process_match=self.query._process_match)
        self.filter_text = text
        # other sockets are counted now: the changes start again from here
        self._first, self._before_last = None, {}
        if self.sample is not None:
            self._regroup()
            self._first = self._last = {g.key: g.count for g in self.groups}
            self._apply_deltas()

    def set_sort(self, sort: str) -> None:
        if sort not in SORTS:
            raise UsageError(f"sort by one of {', '.join(SORTS)}")
        self.sort = sort
        self.groups = self._sorted(self.groups)

    def _regroup(self) -> None:
        snap: Snapshot = self.sample.snapshot
        # the sampler chose the namespaces (--netns): the query picks sockets in them
        sockets = dataclasses.replace(self.query, netns="all").select(snap)
        # a grouped sample's counted groups are every socket's: not with a narrowing filter
        counted = getattr(self.sample, "tallies", None) if not self.query.narrows else None
        self.groups = self._sorted(group(snap, sockets, self.sample, counted))

    def _apply_deltas(self) -> None:
        first, before = self._first or {}, self._before_last
        for g in self.groups:
            g.delta = g.count - before.get(g.key, 0) if before else 0
            g.growth = g.count - first.get(g.key, 0)

    def _sorted(self, groups: list[Group]) -> list[Group]:
        if self.sort == "growth":
            return sorted(groups, key=lambda g: (-g.growth, -g.count))
        if self.sort == "age":
            return sorted(groups, key=lambda g: (-(g.oldest_ms or -1), -g.count))
        return sorted(groups, key=lambda g: (-g.count, g.netns_name, g.process))

    def relief(self, g: Group) -> str:
        """The command that relieves this group: the doctor's if it has one, else a kill plan.

        Printed for the operator to read and run, never run by top. Without
        --yes, `sockdoctor kill` only shows its plan.
        """
        for f in self.findings:
            pids = {p.pid for p in f.processes}
            if f.relief and f.netns_inode in (0, g.netns) and g.port in f.ports \
                    and (not g.pids or pids & set(g.pids)):
                return f.relief
        args = ["sockdoctor", "kill", "--netns", g.netns_name]
        args += [f"--pid {pid}" for pid in g.pids if pid > 0]
        args += ["--port", str(g.port), "--state", TcpState(g.state).filter_name]
        return " ".join(args)


def group(snap: Snapshot, sockets: list[Socket], sample: Any,
          counted: dict[int, Any] | None = None) -> list[Group]:
    """Sockets grouped by namespace x process x state x service, with oldest age and Recv-Q.

    counted: a grouped sample's tallies (netns -> groups.GroupPass), whose
    groups of ESTABLISHED sockets counted in the kernel join the listed ones.

    The hot loop of every refresh (143k sockets a second on a big host), so
    each socket only gets its group key here; names, sums and ages are made
    once per group afterwards.
    """
    listening = {(sk.netns, sk.local_port) for sk in snap.sockets
                 if sk.state == TcpState.LISTEN}
    buckets: dict[tuple, list[Socket]] = {}
    for sk in sockets:
        owners = sk.owners
        pids = (QUEUED if sk.queued else ()) if not owners else (owners[0].pid,) \
            if len(owners) == 1 else tuple(sorted({o.pid for o in owners}))
        port, peer = sk.local_port, sk.peer_port
        if peer == 0 or (sk.netns, port) in listening or (not listening and port <= peer):
            key = (sk.netns, pids, sk.state, port, None)  # server side: its local port
        else:  # client side: where it connects to
            key = (sk.netns, pids, sk.state, peer, sk.peer_addr, sk.family)
        bucket = buckets.get(key)
        if bucket is None:
            buckets[key] = [sk]
        else:
            bucket.append(sk)
    extra = _counted(counted or {}, buckets)
    names = words.netns_names(snap)
    return [_group(key, members, names, snap, sample, extra.get(key, ()))
            for key, members in buckets.items()]


def _counted(counted: dict[int, Any], buckets: dict[tuple, list[Socket]]
             ) -> dict[tuple, list[Any]]:
    """The kernel's groups by the key of group(): each gets a bucket, maybe empty."""
    extra: dict[tuple, list[Any]] = {}
    for netns, found in counted.items():
        for c in getattr(found, "groups", ()):
            key = (netns, c.pids, TcpState.ESTABLISHED, c.port, None) if c.peer is None \
                else (netns, c.pids, TcpState.ESTABLISHED, c.port, *c.peer)
            extra.setdefault(key, []).append(c)
            buckets.setdefault(key, [])
    return extra


def _group(key: tuple, members: list[Socket], names: dict[int, str], snap: Snapshot,
           sample: Any, counted: Any = ()) -> Group:
    netns, pids, state, port = key[:4]
    service = f":{port}" if key[4] is None else \
        "-> " + words.endpoint(key[4], port, key[5], peer=True)
    g = Group(netns, names.get(netns, str(netns)), pids, _process(pids, snap), state, service,
              port, members, sum(c.count for c in counted))
    if state != TcpState.LISTEN:  # a listener has no age: it is not waiting for anything
        g.recv_q = sum(sk.recv_q for sk in members) + sum(c.recv_q for c in counted)
        g.oldest_ms = _oldest(members, sample, counted)
    return g


def _oldest(members: list[Socket], sample: Any, counted: Any = ()) -> int | None:
    """The largest of the sampler's ages (Sample.age_ms) over the group, computed in bulk.

    max over sockets of max(tcp_info age, time since first seen) is the max of
    the two maxima, so neither needs a call per socket; the kernel's groups
    bring both maxima of their sockets.
    """
    ages = [a for a in (sk.age_ms for sk in members) if a is not None]
    tcp = max(ages + [c.oldest_ms for c in counted if c.oldest_ms is not None], default=None)
    first_seen = getattr(sample, "first_seen", None) or {}
    firsts = [t for t in map(first_seen.get, (sk.cookie for sk in members)) if t is not None]
    firsts += [c.since for c in counted]
    seen = int((sample.started - min(firsts)) * 1000) if firsts else None
    if tcp is None:
        return seen or None
    return max(tcp, seen or 0)


def _process(pids: tuple[int, ...], snap: Snapshot) -> str:
    if pids == QUEUED:
        return ACCEPT_QUEUE_OWNER
    if not pids:
        return NO_OWNER if snap.owners_scanned else "-"
    comms = [(snap.processes[p].comm if p in snap.processes else "?") for p in pids]
    return ",".join(f"{words.untrusted(c)}({p})" for c, p in zip(comms, pids, strict=True))
