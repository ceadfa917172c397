"""`trace`'s table: one line per event, columns like `ls`."""

from __future__ import annotations

import time

from ..watch.events import LostEvent, TraceEvent
from . import fmt

HEADER = ("TIME", "CHANGE", "LOCAL", "PEER", "PROCESS", "WAS", "NETNS")
WIDTHS = (12, 24, 22, 22, 26, 7)


def header() -> str:
    return _line(HEADER)


def line(rec: TraceEvent | LostEvent) -> str:
    if isinstance(rec, LostEvent):
        count = "an unknown number of" if rec.count is None else str(rec.count)
        where = f" in {fmt.untrusted(rec.netns)}" if rec.netns else ""
        return f"{_clock(rec.time)}  !! lost {count} {rec.source} events{where}: {rec.detail}"
    change = f"destroyed in {rec.new}" if rec.event == "destroy" else f"{rec.old} -> {rec.new}"
    fam = 10 if rec.family == "ipv6" else 2
    cells = (_clock(rec.time), change, fmt.endpoint(rec.local_addr, rec.local_port, fam),
             fmt.endpoint(rec.peer_addr, rec.peer_port, fam, peer=True), _owners(rec),
             fmt.duration(None if rec.prev_state_ms is None else int(rec.prev_state_ms)),
             fmt.untrusted(rec.netns) if rec.netns else _unknown_netns(rec))
    return _line(cells)


def _line(cells: tuple[str, ...]) -> str:
    padded = [cell.ljust(width) for cell, width in zip(cells, WIDTHS, strict=False)]
    return "  ".join([*padded, *cells[len(WIDTHS):]]).rstrip()


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
