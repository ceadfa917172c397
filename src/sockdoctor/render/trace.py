"""`trace`'s table: one line per event, columns like `ls`; and its summary blocks."""

from __future__ import annotations

import time
from collections.abc import Iterator

from ..watch.events import LostEvent, TraceEvent
from ..watch.tracesummary import Period
from . import fmt

HEADER = ("TIME", "CHANGE", "LOCAL", "PEER", "PROCESS", "WAS", "NETNS")
WIDTHS = (12, 24, 22, 22, 26, 7)
SUMMARY_ROWS = 30


class Table:
    """The lines of one trace: a column that meets a longer cell (an IPv6 or v4-mapped
    address, say) widens from then on, so the columns after it stay aligned."""

    def __init__(self) -> None:
        self.widths = list(WIDTHS)

    def header(self) -> str:
        return self._line(HEADER)

    def line(self, rec: TraceEvent | LostEvent) -> str:
        if isinstance(rec, LostEvent):
            count = "an unknown number of" if rec.count is None else str(rec.count)
            where = f" in {fmt.untrusted(rec.netns)}" if rec.netns else ""
            return (f"{_clock(rec.time)}  !! lost {count} {rec.source} events{where}: "
                    f"{rec.detail}")
        change = f"destroyed in {rec.new}" if rec.event == "destroy" else \
            f"{rec.old} -> {rec.new}"
        fam = 10 if rec.family == "ipv6" else 2
        cells = (_clock(rec.time), change, fmt.endpoint(rec.local_addr, rec.local_port, fam),
                 fmt.endpoint(rec.peer_addr, rec.peer_port, fam, peer=True), _owners(rec),
                 fmt.duration(None if rec.prev_state_ms is None else int(rec.prev_state_ms)),
                 fmt.untrusted(rec.netns) if rec.netns else _unknown_netns(rec))
        return self._line(cells)

    def _line(self, cells: tuple[str, ...]) -> str:
        widths = self.widths
        for i, cell in enumerate(cells[:len(widths)]):
            if len(cell) > widths[i]:
                widths[i] = len(cell)
        padded = [cell.ljust(width) for cell, width in zip(cells, widths, strict=False)]
        return "  ".join([*padded, *cells[len(widths):]]).rstrip()


_DEFAULT = Table()


def header() -> str:
    return _DEFAULT.header()


def line(rec: TraceEvent | LostEvent) -> str:
    return _DEFAULT.line(rec)


def _clock(when: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(when)) + f".{int(when * 1000) % 1000:03d}"


def _owners(rec: TraceEvent) -> str:
    if not rec.owners:
        return "?" if rec.event == "state" else "-"
    parts = []
    for o in rec.owners:
        fd = f" fd {o.fd}" if o.fd is not None else ""
        parts.append(f"{fmt.untrusted(o.comm) or '?'}({o.pid}){fd}")
    return ",".join(parts)


def _unknown_netns(rec: TraceEvent) -> str:
    if rec.netns_candidates:
        return "one of " + ",".join(fmt.untrusted(n) for n in rec.netns_candidates)
    return "?"


def summary(period: Period, limit: int = SUMMARY_ROWS) -> Iterator[str]:
    """One period as a title line and a table of transitions, biggest first (text escaped)."""
    seconds = max(period.end - period.start, 1e-9)
    clock = time.strftime("%H:%M:%S", time.localtime(period.end))
    yield (f"--- {clock}  last {seconds:.1f}s: {period.changes} state changes "
           f"({period.changes / seconds:.1f}/s), {period.destroyed} destroyed, "
           f"{period.lost} lost")
    if not period.rows:
        return
    head = ("COUNT", "PER-S", "CHANGE", "PROCESS", "SERVICE", "NETNS")
    body = [(str(r.count), f"{r.per_s:.1f}", r.change, fmt.untrusted(r.process),
             fmt.untrusted(r.service), fmt.untrusted(r.netns)) for r in period.rows[:limit]]
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    for row in (head, *body):
        yield "  ".join(c.rjust(widths[i]) if i < 2 else c.ljust(widths[i])
                        for i, c in enumerate(row)).rstrip()
    if len(period.rows) > limit:
        rest = sum(r.count for r in period.rows[limit:])
        yield f"... {len(period.rows) - limit} more groups ({rest} events); --ndjson for all"
