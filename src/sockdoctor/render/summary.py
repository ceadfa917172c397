"""`ls --summary`: who holds which sockets, on one screen.

Sockets are counted by (namespace, state, owning process, service). The
service is the local port for a server-side socket and the peer address:port
for a client-side one, so ten thousand client sockets toward one database
collapse into a single line instead of ten thousand ephemeral ports.
"""

from __future__ import annotations

import socket
from collections import Counter
from collections.abc import Iterator

import msgspec

from ..model import ACCEPT_QUEUE_OWNER, NO_OWNER, Snapshot, Socket, TcpState
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


def _process_label(sk: Socket, snapshot: Snapshot, comms: dict[int, str]) -> str:
    """`nginx(42)`, or several holders; `comms` holds the names already escaped."""
    if not sk.owners:
        if not snapshot.owners_scanned:
            return "-"
        return ACCEPT_QUEUE_OWNER if sk.queued else NO_OWNER
    owners = sk.owners
    if len(owners) == 1:
        pid = owners[0].pid
        return f"{comms.get(pid, '?')}({pid})"
    return ",".join([f"{comms.get(pid, '?')}({pid})" for pid in sorted({o.pid for o in owners})])


def rows(snapshot: Snapshot) -> list[SummaryRow]:
    """Counts by namespace, state, process and service, biggest first (text escaped)."""
    names = fmt.shown_netns_names(snapshot)
    comms = fmt.shown_comms(snapshot.processes)
    listening = {(sk.netns, sk.local_port) for sk in snapshot.sockets
                 if sk.state == TcpState.LISTEN}
    counts: Counter[tuple[str, str, str, str]] = Counter()
    for sk in snapshot.sockets:
        if _is_server_side(sk, listening):
            service = f":{sk.local_port}"
        else:
            service = "-> " + fmt.endpoint(sk.peer_addr, sk.peer_port, sk.family, peer=True)
        key = (names.get(sk.netns, str(sk.netns)), fmt.state_name(sk.state),
               _process_label(sk, snapshot, comms), service)
        counts[key] += 1
    return [SummaryRow(*key, count=n) for key, n in counts.most_common()]


def by_state(snapshot: Snapshot) -> Counter[str]:
    return Counter(fmt.state_name(sk.state) for sk in snapshot.sockets)


def render(snapshot: Snapshot, limit: int = MAX_ROWS) -> Iterator[str]:
    totals = by_state(snapshot)
    parts = ", ".join(f"{name} {n}" for name, n in totals.most_common())
    yield fmt.plural(len(snapshot.sockets), "TCP socket") + (f": {parts}" if parts else "")
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


def _ss_counts(snapshot: Snapshot) -> dict[str, int]:
    """ss -s's inputs over the scanned namespaces (/proc/net/sockstat{,6}, snmp).

    The kernel keeps `orphan` and `alloc` for the whole host (every namespace
    shows the same numbers, as ss does): those are taken once, the others summed.
    """
    total: Counter[str] = Counter()
    for ns in snapshot.namespaces:
        c = ns.counters
        tcp = c.get("sockstat.TCP", {})
        total.update({"socks": c.get("sockstat.sockets", {}).get("used", 0),
                      "tcp4": tcp.get("inuse", 0),
                      "tcp6": c.get("sockstat.TCP6", {}).get("inuse", 0),
                      "tw": tcp.get("tw", 0), "estab": c.get("Tcp", {}).get("CurrEstab", 0)})
        for host_wide in ("orphan", "alloc"):
            total[host_wide] = max(total[host_wide], tcp.get(host_wide, 0))
    return total


def render_ss(snapshot: Snapshot) -> Iterator[str]:
    """`ls -s`: ss -s's layout with its TCP rows, then the selected sockets by state and family.

    The numbers come from the kernel's counters as in ss (so a filter does not
    change them); the rows for RAW, UDP, INET and FRAG are left out.
    """
    if not any(ns.counters for ns in snapshot.namespaces):  # e.g. an old snapshot file
        yield "(no kernel counters in this snapshot: ss's Total and TCP lines are unknown)"
        yield ""
        yield from _by_family(snapshot.sockets)
        return
    n = _ss_counts(snapshot)
    hashed = n["tcp4"] + n["tcp6"]
    yield f"Total: {n['socks']}"
    yield (f"TCP:   {n['alloc'] + n['tw']} (estab {n['estab']}, closed "
           f"{n['alloc'] - (hashed - n['tw'])}, orphaned {n['orphan']}, timewait {n['tw']})")
    yield ""
    yield "Transport Total     IP        IPv6"
    # ss prints "TCP\t  ": spaces to the same column, no control character in our output
    yield f"TCP       {hashed:<9d} {n['tcp4']:<9d} {n['tcp6']:<9d}".rstrip()
    where = (f" in {fmt.plural(len(snapshot.namespaces), 'network namespace')}"
             if len(snapshot.namespaces) > 1 else "")
    yield (f"(sockdoctor is TCP only: it leaves out ss's RAW, UDP, INET and FRAG rows; "
           f"counts{where} from the kernel's counters, where `orphaned` and the total "
           f"are the whole host's, as in ss)")
    yield ""
    yield from _by_family(snapshot.sockets)


def _by_family(socks: list[Socket]) -> Iterator[str]:
    """The listed sockets (after any filter) by state and address family."""
    by_family = Counter((fmt.state_name(sk.state), sk.family) for sk in socks)
    names = sorted({name for name, _ in by_family}, key=lambda n: -sum(
        by_family[(n, f)] for f in (socket.AF_INET, socket.AF_INET6)))
    yield f"{'State':<12} {'Total':>7} {'IPv4':>7} {'IPv6':>7}"
    for name in names:
        v4, v6 = by_family[(name, socket.AF_INET)], by_family[(name, socket.AF_INET6)]
        yield f"{name:<12} {v4 + v6:>7} {v4:>7} {v6:>7}"
    v4 = sum(1 for sk in socks if sk.family == socket.AF_INET)
    yield f"{'TCP':<12} {len(socks):>7} {v4:>7} {len(socks) - v4:>7}"
