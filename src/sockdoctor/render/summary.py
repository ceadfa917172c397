"""`ls --summary`: who holds which sockets, on one screen.

Sockets are counted by (namespace, state, owning process, service). The
service is the local port for a server-side socket and the peer address:port
for a client-side one, so ten thousand client sockets toward one database
collapse into a single line instead of ten thousand ephemeral ports.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import msgspec

from ..model import Snapshot, Socket, TcpState
from . import fmt

MAX_ROWS = 40


class SummaryRow(msgspec.Struct):
    netns: str
    state: str
    process: str
    service: str
    count: int


def _is_server_side(sk: Socket, listening: set[tuple[int, int]]) -> bool:
    if (sk.netns, sk.local_port) in listening:
        return True
    if sk.peer_port == 0:
        return True
    return not listening and sk.local_port <= sk.peer_port


def _process_label(sk: Socket, snapshot: Snapshot) -> str:
    if not sk.owners:
        if not snapshot.owners_scanned:
            return "-"
        return "(no owner)"
    labels = []
    for pid in sorted({o.pid for o in sk.owners}):
        proc = snapshot.processes.get(pid)
        labels.append(f"{proc.comm if proc else '?'}({pid})")
    return ",".join(labels)


def rows(snapshot: Snapshot) -> list[SummaryRow]:
    names = fmt.netns_names(snapshot)
    listening = {(sk.netns, sk.local_port) for sk in snapshot.sockets
                 if sk.state == TcpState.LISTEN}
    counts: Counter[tuple[str, str, str, str]] = Counter()
    for sk in snapshot.sockets:
        if _is_server_side(sk, listening):
            service = f":{sk.local_port}"
        else:
            service = "-> " + fmt.endpoint(sk.peer_addr, sk.peer_port, sk.family, peer=True)
        key = (names.get(sk.netns, str(sk.netns)), fmt.state_name(sk.state),
               _process_label(sk, snapshot), service)
        counts[key] += 1
    return [SummaryRow(*key, count=n) for key, n in counts.most_common()]


def by_state(snapshot: Snapshot) -> Counter[str]:
    return Counter(fmt.state_name(sk.state) for sk in snapshot.sockets)


def render(snapshot: Snapshot, limit: int = MAX_ROWS) -> Iterator[str]:
    totals = by_state(snapshot)
    parts = ", ".join(f"{name} {n}" for name, n in totals.most_common())
    yield f"{len(snapshot.sockets)} TCP sockets" + (f": {parts}" if parts else "")
    table = rows(snapshot)
    if not table:
        return
    yield ""
    header = ("COUNT", "STATE", "PROCESS", "SERVICE", "NETNS")
    body = [(str(r.count), r.state, r.process, r.service, r.netns) for r in table[:limit]]
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(header)]
    for line in (header, *body):
        yield "  ".join(cell.rjust(widths[0]) if i == 0 else cell.ljust(widths[i])
                        for i, cell in enumerate(line)).rstrip()
    if len(table) > limit:
        rest = sum(r.count for r in table[limit:])
        yield f"... {len(table) - limit} more groups ({rest} sockets); use --json for all"
