"""time-wait-port-pressure: ephemeral ports used up towards one destination.

connect() needs a 4-tuple nobody else uses, so towards one (remote address,
remote port) from one local address the usable local ports are the size of
net.ipv4.ip_local_port_range. Every state holds its port, TIME-WAIT (60 s
after an active close) included: a client that opens a connection per
request runs out at range / 60 s connections per second.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

from ...model import Socket, TcpState
from ..context import Context, is_loopback
from ..finding import Finding, ladder
from ..text import endpoint, fmt_ms, host, plural

TIME_WAIT_MS = 60_000  # TCP_TIMEWAIT_LEN: fixed in the kernel, not tcp_fin_timeout
ASSUMED_PEER_RANGE = 60999 - 32768 + 1
_SKIP = (TcpState.LISTEN, TcpState.CLOSE, TcpState.NEW_SYN_RECV, TcpState.BOUND_INACTIVE)

FIX = (
    "Reuse connections (HTTP keep-alive, a connection pool) instead of opening one per "
    "request: the side that closes first keeps each port in TIME-WAIT for 60 s; where the "
    "protocol allows, let the server close first. net.ipv4.tcp_tw_reuse=1 lets connect() "
    "reuse a TIME-WAIT port older than 1 s (needs TCP timestamps; the default 2 does it for "
    "loopback only). If the program bind()s a source address before connect(), set "
    "IP_BIND_ADDRESS_NO_PORT on the socket so the port is picked per destination at "
    "connect(). Spread connections over more source addresses (or destination addresses "
    "and ports), and widen net.ipv4.ip_local_port_range. Do not turn to "
    "net.ipv4.tcp_tw_recycle: it broke clients behind NAT and was removed in Linux 4.12; "
    "advice to enable it is obsolete.")


@dataclass
class _Dest:
    states: Counter = field(default_factory=Counter)
    reusable_tw: int = 0
    pids: Counter = field(default_factory=Counter)


def check(ctx: Context) -> list[Finding]:
    dests, per_source = _client_usage(ctx)
    out = [f for key, d in dests.items()
           if (f := _client_finding(ctx, key, d, per_source)) is not None]
    out.extend(_server_side(ctx))
    out.extend(_bucket_overflow(ctx))
    return out


def _client_usage(ctx: Context) -> tuple[dict[tuple[int, str, str, int], _Dest],
                                         Counter]:
    dests: dict[tuple[int, str, str, int], _Dest] = defaultdict(_Dest)
    per_source: Counter = Counter()
    reuse: dict[int, int] = {}
    is_client = ctx.is_client
    for st, socks in ctx.by_state.items():
        if st in _SKIP:
            continue
        for sk in socks:
            if not sk.peer_port or not is_client(sk):
                continue
            d = dests[(sk.netns, sk.local_addr, sk.peer_addr, sk.peer_port)]
            d.states[st] += 1
            if st == TcpState.TIME_WAIT:
                if sk.netns not in reuse:
                    reuse[sk.netns] = _tw_reuse(ctx, sk.netns)
                d.reusable_tw += _tw_reusable(sk, reuse[sk.netns])
            if sk.owners:
                d.pids[sk.owners[0].pid] += 1
            per_source[(sk.netns, sk.local_addr)] += 1
    return dests, per_source


def _tw_reuse(ctx: Context, netns: int) -> int:
    value = ctx.sysctl_int(netns, "net.ipv4.tcp_tw_reuse")
    return 2 if value is None else value  # 2, loopback only, is the default since 4.20


def _tw_reusable(sk: Socket, reuse: int) -> bool:
    """tcp_tw_reuse lets connect() take over a TIME-WAIT port older than one second."""
    if reuse == 0 or (reuse == 2 and not is_loopback(sk.peer_addr)):
        return False
    return TIME_WAIT_MS - sk.expires_ms > 1000


def capacity(ctx: Context, netns: int) -> int:
    lo, hi = ctx.port_range(netns)
    reserved = _reserved_in(ctx.sysctl(netns, "net.ipv4.ip_local_reserved_ports"), lo, hi)
    return max(1, hi - lo + 1 - reserved)


def _reserved_in(value: str | None, lo: int, hi: int) -> int:
    total = 0
    for part in (value or "").replace(" ", "").split(","):
        if not part:
            continue
        a, _, b = part.partition("-")
        try:
            start, end = int(a), int(b or a)
        except ValueError:
            continue
        total += max(0, min(end, hi) - max(start, lo) + 1)
    return total


def _client_finding(ctx: Context, key: tuple[int, str, str, int], d: _Dest,
                    per_source: Counter) -> Finding | None:
    netns, laddr, raddr, rport = key
    used = sum(d.states.values())
    cap = capacity(ctx, netns)
    effective = used - d.reusable_tw
    cfg = ctx.cfg
    sev = ladder(effective / cap, cfg.port_critical_ratio, cfg.port_warn_ratio,
                 cfg.port_info_ratio)
    if sev is None:
        return None
    tw = d.states.get(TcpState.TIME_WAIT, 0)
    lo, hi = ctx.port_range(netns)
    dest = endpoint(raddr, rport)
    by_state = {TcpState(s).ss_name: n for s, n in d.states.most_common()}
    pids = [pid for pid, _ in d.pids.most_common(3)]
    lines = [f"{used} of {cap} usable local ports ({lo}-{hi}) from {laddr} to {dest} are "
             f"taken ({used / cap:.0%}); {tw} of them in TIME-WAIT ({tw / used:.0%})",
             "by state: " + ", ".join(f"{s} {n}" for s, n in by_state.items()),
             f"{per_source[(netns, laddr)]} ephemeral ports in use from {laddr} towards "
             "all destinations (what bind()-before-connect() competes for)"]
    if d.reusable_tw:
        lines.append(f"{d.reusable_tw} TIME-WAIT ports are reusable now (tcp_tw_reuse)")
    if pids:
        lines.append("connections opened by " + ", ".join(ctx.label(p) for p in pids))
    relief, argv = ctx.kill(netns, ["time-wait"], port=rport, words=["dst", host(raddr)])
    return Finding(
        rule="time-wait-port-pressure", severity=sev,
        title=f"{used / cap:.0%} of the ephemeral ports from {laddr} to {dest} are in use "
              f"({used}/{cap}, {tw} in TIME-WAIT)",
        netns=ctx.ns_name(netns), netns_inode=netns, processes=ctx.refs(pids), ports=[rport],
        peers=[dest], sockets=used,
        evidence={"used": used, "capacity": cap, "ratio": round(used / cap, 3),
                  "effective_ratio": round(effective / cap, 3), "time_wait": tw,
                  "reusable_time_wait": d.reusable_tw, "by_state": by_state,
                  "local_address": laddr, "source_total": per_source[(netns, laddr)],
                  "tcp_tw_reuse": ctx.sysctl(netns, "net.ipv4.tcp_tw_reuse"),
                  "ip_local_port_range": f"{lo} {hi}"},
        evidence_lines=lines,
        explanation=(
            f"Every connection from {laddr} to {dest} needs its own local port, and a port "
            "stays taken for 60 s in TIME-WAIT after the side that closes first closed it. "
            "When the range runs out, connect() fails with EADDRNOTAVAIL (\"Cannot assign "
            "requested address\") and bind() with EADDRINUSE. Many TIME-WAIT mean "
            "a connection per request; many CLOSE-WAIT or ESTABLISHED mean leaked or "
            "pooled connections hold the ports."),
        fix=FIX, relief=relief, relief_argv=argv)


def _server_side(ctx: Context) -> list[Finding]:
    """One remote address (NAT, a load balancer) with many TIME-WAIT on our service port."""
    counts: Counter = Counter()
    for sk in ctx.state(TcpState.TIME_WAIT):
        if ctx.is_listening(sk.netns, sk.local_port):
            counts[(sk.netns, sk.local_port, sk.peer_addr)] += 1
    out = []
    limit = ctx.cfg.port_info_ratio * ASSUMED_PEER_RANGE
    for (netns, port, peer), n in counts.items():
        if n < limit:
            continue
        out.append(Finding(
            rule="time-wait-port-pressure", severity="info",
            title=f"{plural(n, 'TIME-WAIT socket')} on :{port} from the single address "
                  f"{peer} (a NAT or load balancer?)",
            netns=ctx.ns_name(netns), netns_inode=netns, ports=[port], peers=[peer],
            sockets=n, evidence={"time_wait": n, "assumed_peer_range": ASSUMED_PEER_RANGE},
            evidence_lines=[f"{n} TIME-WAIT towards {peer}; its own port range is "
                            f"typically {ASSUMED_PEER_RANGE} ports"],
            explanation=(
                "Our server closes first, so each connection leaves a TIME-WAIT here for "
                "60 s. When all clients come through one address, that address's ports are "
                "what limits the connection rate; a new connection reusing a port still in "
                "TIME-WAIT here is accepted only with newer TCP timestamps."),
            fix="Keep TCP timestamps on; " + FIX))
    return out


def _bucket_overflow(ctx: Context) -> list[Finding]:
    out = []
    for ns in ctx.snap.namespaces:
        tw = ns.counters.get("sockstat.TCP", {}).get("tw")
        limit = ctx.sysctl_int(ns.inode, "net.ipv4.tcp_max_tw_buckets")
        if not tw or not limit or tw < ctx.cfg.tw_bucket_ratio * limit:
            continue
        out.append(Finding(
            rule="time-wait-port-pressure", severity="warning",
            title=f"{tw} TIME-WAIT sockets: the limit tcp_max_tw_buckets={limit} is "
                  "(almost) reached",
            netns=ns.name, netns_inode=ns.inode, sockets=tw,
            evidence={"time_wait": tw, "tcp_max_tw_buckets": limit},
            evidence_lines=[f"sockstat TCP tw {tw}, net.ipv4.tcp_max_tw_buckets {limit}"],
            explanation=(
                "Beyond the limit the kernel logs \"TCP: time wait bucket table overflow\" "
                f"and skips TIME-WAIT for new closes ({fmt_ms(TIME_WAIT_MS)} of protection "
                "against late segments of an old connection are lost)."),
            fix=FIX))
    return out
