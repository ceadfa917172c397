"""`trace --summary` / `--every T`: transitions counted, for hosts too busy to read line by line.

Each state change counts once under (namespace, process, service, from -> to);
a destroyed socket under "STATE -> destroyed". The service is as in
`ls --summary`: the local port on the server side (a port something listens
on), the peer address:port on the client side. A period's rows come with
their rate over the period.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable

import msgspec

from .events import LostEvent, TraceEvent

GroupKey = tuple[str, str, str, str]  # netns, process, service, change


class TransitionRow(msgspec.Struct, kw_only=True):
    netns: str
    process: str  # "comm(pid)", several joined by ",", or "?" when not known
    service: str  # ":8080" or "-> 10.0.0.5:5432"
    change: str  # "ESTAB -> CLOSE-WAIT", "CLOSE-WAIT -> destroyed"
    count: int
    per_s: float


class Period(msgspec.Struct, kw_only=True):
    """What happened between `start` and `end` (--ndjson prints it as one object)."""

    event: str = "summary"
    start: float
    end: float
    changes: int  # state changes counted (after the filter)
    destroyed: int
    lost: int  # events the kernel could not keep (as far as it says)
    rows: list[TransitionRow]


def _process(rec: TraceEvent) -> str:
    if not rec.owners:
        return "?"
    return ",".join(sorted({f"{o.comm or '?'}({o.pid})" for o in rec.owners}))


def _endpoint(addr: str, port: int) -> str:
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


class Transitions:
    """Counts records by group until take() closes the period."""

    def __init__(self, started: float, is_server: Callable[[TraceEvent], bool]) -> None:
        self.start = started
        self.is_server = is_server  # does the local port of this socket serve?
        self.counts: Counter[GroupKey] = Counter()
        self.changes = self.destroyed = self.lost = 0

    def add(self, records: Iterable[TraceEvent | LostEvent]) -> None:
        counts = self.counts
        for rec in records:
            if isinstance(rec, LostEvent):
                self.lost += rec.count or 0
                continue
            if rec.event == "destroy":
                self.destroyed += 1
                change = f"{rec.new} -> destroyed"
            else:
                self.changes += 1
                change = f"{rec.old} -> {rec.new}"
            service = f":{rec.local_port}" if self.is_server(rec) else \
                "-> " + _endpoint(rec.peer_addr, rec.peer_port)
            counts[(rec.netns or "?", _process(rec), service, change)] += 1

    def take(self, now: float) -> Period:
        """The period up to `now`, biggest groups first; counting starts again from zero."""
        seconds = max(now - self.start, 1e-9)
        rows = [TransitionRow(netns=ns, process=proc, service=service, change=change,
                              count=n, per_s=round(n / seconds, 3))
                for (ns, proc, service, change), n in self.counts.most_common()]
        period = Period(start=self.start, end=now, changes=self.changes,
                        destroyed=self.destroyed, lost=self.lost, rows=rows)
        self.start, self.counts = now, Counter()
        self.changes = self.destroyed = self.lost = 0
        return period
