"""no-keepalive: long-silent ESTABLISHED connections with no timer at all.

A socket with SO_KEEPALIVE shows the keepalive timer (timer 2) while idle; a
retransmit or persist timer means data is outstanding, and the kernel will
notice a dead peer by itself. Timer 0 on a connection the peer has not
spoken on for a long time means nothing would ever notice if the peer had
vanished without FIN or RST (power loss, crash, a removed link, a NAT entry
expired). Without ages (tcp_info) idleness is unknown, so the rule is silent.
"""

from __future__ import annotations

from collections import defaultdict

from ...model import Socket, TcpState
from ..context import Context, Service, first_pid
from ..finding import Finding, Severity
from ..text import fmt_ms, plural, top, top_line

_RECIPE = (
    "Enable TCP keepalive on these sockets with explicit timings: "
    "setsockopt(SOL_SOCKET, SO_KEEPALIVE, 1), TCP_KEEPIDLE=60, TCP_KEEPINTVL=10, "
    "TCP_KEEPCNT=5 (a vanished peer is noticed after about 110 s). Python: "
    "s.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1); "
    "s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 60); "
    "s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 10); "
    "s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 5). Java: "
    "socket.setKeepAlive(true) plus ExtendedSocketOptions.TCP_KEEPIDLE/KEEPINTERVAL/"
    "KEEPCOUNT; Go: net.Dialer/ListenConfig KeepAlive (on by default, 15 s). Or an "
    "application heartbeat with an idle timeout that closes silent connections. "
    "TCP_USER_TIMEOUT bounds how long sent data may stay unacknowledged.")


def check(ctx: Context) -> list[Finding]:
    if not ctx.ages_known:
        return []
    groups: dict[tuple[int, int, tuple[str, str, int]], list[Socket]] = defaultdict(list)
    services: dict[tuple[int, int, tuple[str, str, int]], Service] = {}
    idle_ms = ctx.cfg.idle_ms
    for sk in ctx.state(TcpState.ESTABLISHED):
        if sk.timer != 0 or sk.queued:
            continue  # a timer runs, or it still waits in an accept queue
        age = ctx.age(sk)
        if age is None or age < idle_ms:
            continue
        svc = ctx.service(sk)
        key = (sk.netns, first_pid(sk), svc.key)
        groups[key].append(sk)
        services.setdefault(key, svc)
    return [_finding(ctx, key[0], key[1], services[key], socks)
            for key, socks in groups.items()]


def _severity(ctx: Context, socks: list[Socket]) -> Severity:
    cfg = ctx.cfg
    long_idle = sum(1 for sk in socks if (ctx.age(sk) or 0) >= cfg.idle_warn_ms)
    return "warning" if long_idle >= cfg.idle_warn_count else "info"


def _finding(ctx: Context, netns: int, pid: int, svc: Service, socks: list[Socket]) -> Finding:
    who = ctx.label(pid)
    oldest = max(ctx.age(sk) or 0 for sk in socks)
    sysctls = {name: ctx.sysctl(netns, f"net.ipv4.tcp_keepalive_{name}")
               for name in ("time", "intvl", "probes")}
    peers = top((sk.peer_addr for sk in socks), 5)
    where = f"on {svc.label}" if svc.side == "server" else f"to {svc.label}"
    # Armed live through the owner's descriptors: the dead ones end by themselves,
    # the live ones are left alone (a kill could not tell them apart).
    relief, argv = ctx.keepalive(netns, pid=pid, port=svc.port, idle_ms=ctx.cfg.idle_ms)
    ka = ", ".join(f"tcp_keepalive_{k}={v}" for k, v in sysctls.items() if v is not None)
    return Finding(
        rule="no-keepalive", severity=_severity(ctx, socks),
        title=f"{who} has {plural(len(socks), 'connection')} {where} silent for over "
              f"{fmt_ms(ctx.cfg.idle_ms)} with no keepalive (oldest {fmt_ms(oldest)})",
        netns=ctx.ns_name(netns), netns_inode=netns, processes=ctx.refs([pid]),
        ports=[svc.port], peers=list(peers), sockets=len(socks),
        evidence={"count": len(socks), "idle_threshold_ms": ctx.cfg.idle_ms,
                  "oldest_idle_ms": oldest, "peers": peers,
                  **{f"tcp_keepalive_{k}": v for k, v in sysctls.items()}},
        evidence_lines=[
            f"{plural(len(socks), 'ESTABLISHED socket')} with timer off, the peer silent "
            f"for >= {fmt_ms(ctx.cfg.idle_ms)}, oldest {fmt_ms(oldest)}",
            "peers: " + top_line(peers, len(socks)),
            f"host defaults (used only by sockets that enable SO_KEEPALIVE): {ka or '?'}"],
        explanation=(
            f"Nothing has been heard from these peers for a long time and {who} has not "
            "enabled keepalive on the sockets. That is harmless while the peers are alive, "
            "but if a peer crashed, lost power or its network vanished without sending FIN "
            "or RST, the connection stays ESTABLISHED forever: nothing is sent, so nothing "
            "can fail, and the program waits for data that will never come."),
        fix=_RECIPE + " The net.ipv4.tcp_keepalive_* sysctls only set defaults for sockets "
            "that enable SO_KEEPALIVE. The relief command below arms keepalive on these "
            "very sockets now, through their owner's descriptors (no restart): live peers "
            "answer the probes and notice nothing, vanished ones are reset within three "
            "probe intervals and the program's next read fails with ETIMEDOUT.",
        relief=relief, relief_argv=argv)
