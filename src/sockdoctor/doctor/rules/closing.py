"""fin-wait-2-pileup, fin-wait-1-pileup, last-ack-stuck: closes that do not finish.

The states come in pairs: our FIN-WAIT-2 faces a peer in CLOSE-WAIT (its
program has not closed), our FIN-WAIT-1 a peer that does not acknowledge our
FIN (unreachable, or not reading), our LAST-ACK a peer that never
acknowledged our FIN (gone, or its ACK is dropped). When the other end lives
in a namespace of the same snapshot, the finding names it.

FIN-WAIT-1 and LAST-ACK normally last one round trip. Their age (time since
the peer's last ACK) can be old already when they enter the state, so they
count as stuck by retransmissions (the kernel's own "no answer") or by being
seen in two samples.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from ...model import Socket, TcpState
from ..context import Context, Service, first_pid, is_loopback
from ..finding import Finding, Severity, ladder, worse
from ..text import fmt_ms, plural, top, top_line
from .common import AgeStats, age_stats

Tuple4 = tuple[str, int, str, int]
GroupKey = tuple[int, tuple[str, str, int]]


def check(ctx: Context) -> list[Finding]:
    return [*_fin_wait_2(ctx), *_fin_wait_1(ctx), *_last_ack(ctx)]


def _group(ctx: Context, socks: Iterable[Socket]
           ) -> tuple[dict[GroupKey, list[Socket]], dict[GroupKey, Service]]:
    groups: dict[GroupKey, list[Socket]] = defaultdict(list)
    services: dict[GroupKey, Service] = {}
    for sk in socks:
        svc = ctx.service(sk)
        key = (sk.netns, svc.key)
        groups[key].append(sk)
        services.setdefault(key, svc)
    return groups, services


def _pair_index(ctx: Context, states: Iterable[int]) -> dict[Tuple4, list[Socket]]:
    index: dict[Tuple4, list[Socket]] = defaultdict(list)
    for st in states:
        for sk in ctx.state(st):
            index[(sk.local_addr, sk.local_port, sk.peer_addr, sk.peer_port)].append(sk)
    return index


def _other_end(index: dict[Tuple4, list[Socket]], sk: Socket) -> Socket | None:
    """The socket on the other side of this connection, if this snapshot has it."""
    for other in index.get((sk.peer_addr, sk.peer_port, sk.local_addr, sk.local_port), ()):
        if other.netns == sk.netns or not is_loopback(sk.local_addr):
            return other
    return None


def _held_pids(socks: list[Socket]) -> list[int]:
    return [pid for pid, _ in Counter(first_pid(sk) for sk in socks if sk.owners)
            .most_common(5)]


# --- FIN-WAIT-2 ---------------------------------------------------------------

def _fin_wait_2(ctx: Context) -> list[Finding]:
    socks = ctx.state(TcpState.FIN_WAIT2)
    if not socks:
        return []
    pairs = _pair_index(ctx, (TcpState.CLOSE_WAIT,))
    groups, services = _group(ctx, socks)
    out = []
    for key, group in groups.items():
        f = _fw2_group(ctx, key[0], services[key], group, pairs)
        if f is not None:
            out.append(f)
    return out


@dataclass
class _Fw2:
    """One service's FIN-WAIT-2 sockets, and what the snapshot tells about them."""

    netns: int
    svc: Service
    socks: list[Socket]
    held: list[Socket]  # still held by a program: these never time out
    held_st: AgeStats
    peers_cw: list[Socket]  # their other ends, found in CLOSE-WAIT

    @property
    def orphans(self) -> int:
        return len(self.socks) - len(self.held)


def _fw2_group(ctx: Context, netns: int, svc: Service, socks: list[Socket],
               pairs: dict[Tuple4, list[Socket]]) -> Finding | None:
    cfg = ctx.cfg
    held = [sk for sk in socks if not sk.orphaned]
    held_st = age_stats(ctx, held, cfg.half_closed_stuck_ms)
    peers_cw = [p for p in (_other_end(pairs, sk) for sk in socks) if p is not None]
    g = _Fw2(netns, svc, socks, held, held_st, peers_cw)
    stuck_pairs = sum(1 for p in peers_cw if (ctx.age(p) or 0) >= cfg.stuck_age_ms)
    sev: Severity | None = None
    if held_st.stuck >= cfg.critical_stuck:
        sev = "critical"
    elif held_st.stuck >= cfg.warn_stuck or held_st.very_old:
        sev = "warning"
    elif held_st.stuck:
        sev = "info"
    if g.orphans >= cfg.fw2_orphan_warn:
        sev = worse(sev, "warning")
    elif g.orphans >= cfg.fw2_orphan_info:
        sev = worse(sev, "info")
    if stuck_pairs >= cfg.pair_warn:
        sev = worse(sev, "warning")
    elif stuck_pairs:
        sev = worse(sev, "info")
    if sev is None:
        return None
    return _fw2_finding(ctx, g, sev)


def _fw2_finding(ctx: Context, g: _Fw2, sev: Severity) -> Finding:
    netns, svc, socks, held, orphans = g.netns, g.svc, g.socks, g.held, g.orphans
    fin_timeout = ctx.sysctl_int(netns, "net.ipv4.tcp_fin_timeout")
    holders = _held_pids(held)
    where = f"on {svc.label}" if svc.side == "server" else f"to {svc.label}"
    peer_owner = Counter((p.netns, first_pid(p)) for p in g.peers_cw if p.owners)
    lines = [f"{plural(len(socks), 'FIN-WAIT-2 socket')} {where}: {orphans} orphaned "
             f"(closed by the program, dropped after tcp_fin_timeout={fin_timeout}s), "
             f"{len(held)} still held by a program (never time out)"]
    if held:
        lines.append(g.held_st.line("held socket") + " — held by "
                     + ", ".join(ctx.label(p) for p in holders))
    peers = top((sk.peer_addr for sk in socks), 5)
    lines.append("peers: " + top_line(peers, len(socks)))
    evidence = {"count": len(socks), "orphaned": orphans, "held": len(held),
                "held_stuck": g.held_st.stuck, "oldest_held_ms": g.held_st.oldest,
                "tcp_fin_timeout": fin_timeout, "peer_close_wait_found": len(g.peers_cw),
                "peers": peers}
    pids = list(holders) or _listener_pids(ctx, netns, svc)
    if pids and not holders:
        lines.append("closed by " + ", ".join(ctx.label(p) for p in pids)
                     + f", the listener on {svc.label}")
    peer_pids = _peer_evidence(ctx, peer_owner, lines, evidence)
    pids.extend(peer_pids)
    relief, argv = _fw2_relief(ctx, netns, svc, held, holders, peer_owner)
    return Finding(
        rule="fin-wait-2-pileup", severity=sev,
        title=f"{plural(len(socks), 'connection')} {where} wait in FIN-WAIT-2 for the "
              "peer to close" + (f" (peer: {_peers_label(ctx, peer_pids)})"
                                 if peer_pids else ""),
        netns=ctx.ns_name(netns), netns_inode=netns, processes=ctx.refs(pids),
        ports=[svc.port], peers=list(peers), sockets=len(socks), evidence=evidence,
        evidence_lines=lines, explanation=_why_fw2(ctx, held, orphans, holders, fin_timeout),
        fix=("On the peer: close the socket when recv() returns 0 (its program is in "
             "CLOSE-WAIT: see never-closed / client-pool-dead-connections). On this side, "
             "call close() after shutdown() — shutdown() is not close(); to wait for the "
             "peer's EOF, do it with a timeout and close anyway. Orphaned FIN-WAIT-2 are "
             "dropped after net.ipv4.tcp_fin_timeout; lowering it (e.g. 30) shortens "
             "their life but does not fix the peer."),
        relief=relief, relief_argv=argv)


def _peer_evidence(ctx: Context, peer_owner: Counter, lines: list[str],
                   evidence: dict) -> list[int]:
    """The programs at the other end (in CLOSE-WAIT), busiest first, in one namespace."""
    if not peer_owner:
        return []
    if len(peer_owner) == 1:  # the usual case: one program at the other end
        (pns, ppid), n = next(iter(peer_owner.items()))
        counts, pids = {ppid: n}, [ppid]
    else:
        (pns, ppid), _ = peer_owner.most_common(1)[0]
        counts = Counter({pid: n for (ns, pid), n in peer_owner.items() if ns == pns})
        pids = [pid for pid, _ in counts.most_common()]
    split = ", ".join(f"{ctx.label(p)} ×{counts[p]}" for p in pids[:5])
    more = f", +{len(pids) - 5} more" if len(pids) > 5 else ""
    lines.append(f"the other end: {sum(counts.values())} of these connections are in "
                 f"CLOSE-WAIT, held by {split}{more} (netns {ctx.ns_name(pns)})")
    evidence.update(peer_pid=ppid, peer_pids=pids[:50], peer_netns_inode=pns)
    return pids


def _peers_label(ctx: Context, pids: list[int]) -> str:
    if len(pids) == 1:
        return ctx.label(pids[0])
    proc = ctx.process(pids[0])
    return f"{proc.comm if proc else 'pid ' + str(pids[0])}, {len(pids)} processes"


def _listener_pids(ctx: Context, netns: int, svc: Service) -> list[int]:
    """Orphans have no owner: on a service port, our program is the listener's owner."""
    if svc.side != "server":
        return []
    listeners = ctx.listeners.get((netns, svc.port), [])
    return sorted({o.pid for sk in listeners for o in sk.owners})


def _why_fw2(ctx: Context, held: list[Socket], orphans: int, holders: list[int],
             fin_timeout: int | None) -> str:
    text = ("Our side sent FIN and the peer acknowledged it, but the program at the other "
            "end has not closed its side (it sits in CLOSE-WAIT). ")
    if held:
        who = ctx.label(holders[0]) if holders else "the program"
        text += (f"{who} still holds {plural(len(held), 'socket')} it shut down with "
                 "shutdown() but never close()d: a FIN-WAIT-2 socket a program holds never "
                 "times out, and keeps its descriptor and memory. ")
    if orphans:
        text += (f"The {orphans} orphaned ones were closed by our program; the kernel "
                 f"drops them after tcp_fin_timeout ({fin_timeout}s), so they churn rather "
                 "than leak — the bug is on the peer.")
    return text.strip()


def _fw2_relief(ctx: Context, netns: int, svc: Service, held: list[Socket],
                holders: list[int], peer_owner: Counter) -> tuple[str, list[str]]:
    if peer_owner:
        (pns, _), _ = peer_owner.most_common(1)[0]
        pids = sorted({pid for ns, pid in peer_owner if ns == pns})
        return ctx.kill(pns, ["close-wait"], pids=pids, port=svc.port)
    if held and holders:
        return ctx.kill(netns, ["fin-wait-2"], pids=holders[:1], port=svc.port,
                        older_than_ms=ctx.cfg.half_closed_stuck_ms)
    return ctx.kill(netns, ["fin-wait-2"], port=svc.port)


# --- FIN-WAIT-1 and LAST-ACK -----------------------------------------------------

def _stuck_closing(ctx: Context, sk: Socket) -> bool:
    return sk.retrans >= ctx.cfg.closing_min_retrans or (
        ctx.prev is not None and ctx.persisted(sk))


def _closing_groups(ctx: Context, state: int):
    stuck = [sk for sk in ctx.state(state) if _stuck_closing(ctx, sk)]
    groups, services = _group(ctx, stuck)
    for key, socks in groups.items():
        sev = ladder(len(socks), ctx.cfg.closing_critical, ctx.cfg.closing_warn,
                     ctx.cfg.closing_info)
        if sev is not None:
            yield key[0], services[key], socks, sev


def _closing_evidence(ctx: Context, socks: list[Socket], what: str) -> tuple[dict, list[str]]:
    retrans = sum(1 for sk in socks if sk.timer == 1)
    persist = sum(1 for sk in socks if sk.timer == 4)
    orphans = sum(1 for sk in socks if sk.orphaned)
    send_q = sum(sk.send_q for sk in socks)
    peers = top((sk.peer_addr for sk in socks), 5)
    oldest = max((ctx.age(sk) or 0 for sk in socks), default=0)
    evidence = {"count": len(socks), "retransmitting": retrans, "zero_window": persist,
                "orphaned": orphans, "send_q_bytes": send_q,
                "max_retrans": max(sk.retrans for sk in socks), "peers": peers}
    lines = [f"{plural(len(socks), what)} with no answer from the peer "
             f"({ctx.cfg.closing_min_retrans}+ unanswered retransmissions or seen in both "
             f"samples); peer silent up to {fmt_ms(oldest)}",
             f"{retrans} retransmitting, {persist} probing a zero window, {orphans} "
             f"orphaned; {send_q} bytes unsent or unacknowledged",
             "peers: " + top_line(peers, len(socks))]
    return evidence, lines


def _other_ends(ctx: Context, index: dict[Tuple4, list[Socket]], socks: list[Socket],
                evidence: dict, lines: list[str]) -> list[int]:
    """Describe the other ends found in the snapshot; return their owners' pids."""
    ends = [p for p in (_other_end(index, sk) for sk in socks) if p is not None]
    if not ends:
        return []
    states = Counter(p.tcp_state.ss_name for p in ends)
    evidence["peer_states"] = dict(states)
    line = "the other ends, found in this snapshot: " + ", ".join(
        f"{n} in {st}" for st, n in states.items())
    owners = Counter(first_pid(p) for p in ends if p.owners)
    if owners:
        pid = owners.most_common(1)[0][0]
        unread = sum(p.recv_q for p in ends if first_pid(p) == pid)
        line += f"; held by {ctx.label(pid)} with {unread} bytes unread"
        evidence.update(peer_pid=pid, peer_unread_bytes=unread)
    lines.append(line)
    return [pid for pid, _ in owners.most_common(1)]


@dataclass(frozen=True)
class _Story:
    """What a closing-state rule says about its sockets."""

    rule: str
    problem: str  # the title after "N connections on SERVICE stuck in STATE"
    why: str
    fix: str


@dataclass
class _Closing:
    """One service's sockets stuck in FIN-WAIT-1 or LAST-ACK, and their evidence."""

    state: TcpState
    netns: int
    svc: Service
    socks: list[Socket]
    sev: Severity
    evidence: dict
    lines: list[str]
    peer_pids: list[int]  # owners of the other ends, when this snapshot has them

    def finding(self, ctx: Context, story: _Story, pids: list[int]) -> Finding:
        svc, socks = self.svc, self.socks
        where = f"on {svc.label}" if svc.side == "server" else f"to {svc.label}"
        relief, argv = ctx.kill(self.netns, [self.state.filter_name], port=svc.port)
        return Finding(
            rule=story.rule, severity=self.sev,
            title=f"{plural(len(socks), 'connection')} {where} stuck in "
                  f"{self.state.ss_name}: {story.problem}",
            netns=ctx.ns_name(self.netns), netns_inode=self.netns, processes=ctx.refs(pids),
            ports=[svc.port], peers=list(self.evidence["peers"]), sockets=len(socks),
            evidence=self.evidence, evidence_lines=self.lines, explanation=story.why,
            fix=story.fix, relief=relief, relief_argv=argv)


def _closing_cases(ctx: Context, state: TcpState, paired_with: tuple[int, ...]
                   ) -> Iterator[_Closing]:
    """Each service's stuck sockets in `state`; their other ends are sought in `paired_with`."""
    pairs: dict[Tuple4, list[Socket]] | None = None
    for netns, svc, socks, sev in _closing_groups(ctx, state):
        if pairs is None:
            pairs = _pair_index(ctx, paired_with)
        evidence, lines = _closing_evidence(ctx, socks, f"{state.ss_name} socket")
        peer_pids = _other_ends(ctx, pairs, socks, evidence, lines)
        yield _Closing(state, netns, svc, socks, sev, evidence, lines, peer_pids)


_FIN_WAIT_1 = _Story(
    rule="fin-wait-1-pileup", problem="the peers do not acknowledge our FIN",
    why=("Our side closed (sent FIN) but the peers have not acknowledged it. Either "
         "they are unreachable (the FIN is retransmitted) or their receive window is "
         "closed because their program does not read (zero-window probes, data still "
         "queued): an overloaded or stalled peer, or a flood of clients that stop "
         "reading. Orphaned ones are retried tcp_orphan_retries times and count "
         "against tcp_max_orphans; ones a program still holds last until "
         "tcp_retries2 is exhausted."),
    fix=("Look at the peers: are they reachable, is their program reading? For a "
         "flood of peers that stop reading, lower net.ipv4.tcp_orphan_retries (e.g. "
         "3) so orphaned FIN-WAIT-1 go sooner, and bound send queues in the program. "
         "SO_LINGER {1, 0} (abortive close, RST) ends them at once but drops unsent "
         "data and any error message the peer should have seen."))

_LAST_ACK = _Story(
    rule="last-ack-stuck", problem="our FIN is not acknowledged",
    why=("The peers closed first, our program closed too and sent its FIN, but no "
         "acknowledgement comes back. The peers vanished after closing (crash, "
         "reboot, NAT or firewall state expired) or something on the path drops the "
         "packets — if the other end is already in TIME-WAIT it did answer and its "
         "ACK is lost on the way. The kernel retransmits the FIN and eventually "
         "gives up, so these clear by themselves; many of them mean the path to "
         "these peers is broken."),
    fix=("Check the network path to these peers (firewall or conntrack rules that "
         "drop packets of closing connections, an expired NAT mapping). Nothing in "
         "the program to fix; net.ipv4.tcp_orphan_retries bounds how long orphaned "
         "ones are retried."))


def _fin_wait_1(ctx: Context) -> list[Finding]:
    out = []
    for c in _closing_cases(ctx, TcpState.FIN_WAIT1,
                            (TcpState.ESTABLISHED, TcpState.CLOSE_WAIT)):
        retries = ctx.sysctl(c.netns, "net.ipv4.tcp_orphan_retries")
        max_orphans = ctx.sysctl(c.netns, "net.ipv4.tcp_max_orphans")
        c.evidence.update(tcp_orphan_retries=retries, tcp_max_orphans=max_orphans)
        c.lines.append(f"tcp_orphan_retries={_known(retries)} (0 means 8), "
                       f"tcp_max_orphans={_known(max_orphans)} (host-wide)")
        out.append(c.finding(ctx, _FIN_WAIT_1, _held_pids(c.socks) + c.peer_pids))
    return out


def _known(value: str | None) -> str:
    return "unknown (not collected)" if value is None else value


def _last_ack(ctx: Context) -> list[Finding]:
    return [c.finding(ctx, _LAST_ACK, _held_pids(c.socks))
            for c in _closing_cases(ctx, TcpState.LAST_ACK,
                                    (TcpState.TIME_WAIT, TcpState.FIN_WAIT2))]
