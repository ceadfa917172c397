"""sysctl-audit: the TCP knobs that matter for stuck connections, per namespace.

Informational (values that differ from the kernel default, with what they do
and when to change them) unless a value is harmful on its own or in the light
of the other findings. Namespaces with identical results share one finding.
Runs last: it reads the other rules' findings.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...model import Netns
from ..context import Context
from ..finding import Finding, Severity, worse


@dataclass(frozen=True)
class Spec:
    default: str | None  # None: depends on memory or kernel version
    about: str
    advice: str


SPECS: dict[str, Spec] = {
    "net.ipv4.tcp_fin_timeout": Spec(
        "60", "seconds an orphaned FIN-WAIT-2 waits for the peer's FIN",
        "lower (e.g. 30) when orphaned FIN-WAIT-2 pile up; it never affects CLOSE-WAIT"),
    "net.ipv4.tcp_keepalive_time": Spec(
        "7200", "idle seconds before the first keepalive probe (sockets with SO_KEEPALIVE)",
        "lower (e.g. 600) to notice vanished peers sooner, or set TCP_KEEPIDLE per socket"),
    "net.ipv4.tcp_keepalive_intvl": Spec(
        "75", "seconds between keepalive probes", "lower together with keepalive_time"),
    "net.ipv4.tcp_keepalive_probes": Spec(
        "9", "unanswered keepalive probes before the connection is reset",
        "lower (e.g. 5) to give up on dead peers sooner"),
    "net.ipv4.tcp_tw_reuse": Spec(
        "2", "connect() may reuse TIME-WAIT ports older than 1 s (1: always, 2: loopback)",
        "1 when outgoing connections run out of ephemeral ports"),
    "net.ipv4.tcp_tw_recycle": Spec(
        None, "fast TIME-WAIT recycling; removed in Linux 4.12",
        "keep 0: it drops connections from clients behind NAT"),
    "net.ipv4.tcp_max_tw_buckets": Spec(
        None, "most TIME-WAIT sockets kept (default scales with memory)",
        "raise rather than lower: beyond it TIME-WAIT is skipped"),
    "net.ipv4.tcp_max_orphans": Spec(
        None, "most orphaned sockets (closed by their program, not finished)",
        "raise when orphans (FIN-WAIT-1/2, LAST-ACK, CLOSING) approach it"),
    "net.ipv4.tcp_orphan_retries": Spec(
        "0", "FIN retransmissions for orphaned sockets (0 means 8)",
        "lower (e.g. 3) when FIN-WAIT-1 pile up towards peers that stop reading"),
    "net.ipv4.tcp_retries2": Spec(
        "15", "retransmissions before an established connection is given up (~15 min)",
        "lower (e.g. 8, ~100 s) to detect dead peers with unacknowledged data sooner"),
    "net.ipv4.tcp_syn_retries": Spec("6", "SYN retransmissions of connect()", "rarely"),
    "net.ipv4.tcp_synack_retries": Spec("5", "SYN-ACK retransmissions", "rarely"),
    "net.ipv4.tcp_max_syn_backlog": Spec(None, "half-open connections per listener",
                                         "raise with somaxconn on busy servers"),
    "net.ipv4.tcp_syncookies": Spec("1", "SYN cookies when the SYN queue overflows",
                                    "keep 1"),
    "net.ipv4.tcp_abort_on_overflow": Spec(
        "0", "reset instead of drop when an accept queue is full",
        "1 only if clients should fail at once rather than retry"),
    "net.ipv4.ip_local_port_range": Spec(
        "32768 60999", "ephemeral ports for outgoing connections",
        "widen (e.g. 15000 65000) when a client runs out of ports"),
    "net.ipv4.ip_local_reserved_ports": Spec("", "ports never picked as ephemeral",
                                             "reserve your service ports"),
    "net.core.somaxconn": Spec(
        "4096", "cap on every listen() backlog (128 before Linux 5.4)",
        "raise when accept queues are full at a backlog equal to it"),
    "net.ipv4.tcp_invalid_ratelimit": Spec("500", "ms between replies to invalid segments",
                                           "rarely"),
}

Item = tuple[Severity, str, str, str]  # severity, sysctl, value, readable line


def check(ctx: Context) -> list[Finding]:
    merged: dict[tuple[Item, ...], list[Netns]] = {}
    for ns in ctx.snap.namespaces:
        if ns.error or not ns.sysctls:
            continue
        items = tuple(_items(ctx, ns))
        if items:
            merged.setdefault(items, []).append(ns)
    return [_finding(ctx, list(items), nss) for items, nss in merged.items()]


def _items(ctx: Context, ns: Netns) -> list[Item]:
    items: list[Item] = []
    for name, value in sorted(ns.sysctls.items()):
        spec = SPECS.get(name)
        if spec is None:
            continue
        harm = _harm(ctx, ns, name, value)
        if harm is not None:
            items.append((harm[0], name, value, harm[1]))
        elif spec.default is not None and " ".join(value.split()) != spec.default:
            items.append(("info", name, value,
                          f"{name} = {value} (default {spec.default or 'empty'}): "
                          f"{spec.about}; {spec.advice}"))
    items.extend(_orphans(ctx, ns))
    return items


def _rules_in(ctx: Context, netns: int) -> set[str]:
    return {f.rule for f in ctx.findings if f.netns_inode == netns}


def _harm(ctx: Context, ns: Netns, name: str, value: str) -> tuple[Severity, str] | None:
    try:
        num = int(value.split()[0])
    except (ValueError, IndexError):
        return None
    if name == "net.ipv4.tcp_tw_recycle":
        if num:
            return ("warning", f"{name} = {value}: drops connections from clients behind "
                               "NAT (their timestamps are not monotonic); the setting was "
                               "removed in Linux 4.12 for that reason — set it to 0")
        return ("info", f"{name} = 0: obsolete (removed in Linux 4.12); keep it 0 and ignore "
                        "advice to enable it")
    if name == "net.ipv4.tcp_fin_timeout" and num >= 600:
        return ("warning", f"{name} = {value}: orphaned FIN-WAIT-2 live {num} s instead of "
                           "60 s and pile up; set it back to 60 or lower")
    if name == "net.ipv4.tcp_keepalive_time" and num >= 86400 and \
            "no-keepalive" in _rules_in(ctx, ns.inode):
        return ("warning", f"{name} = {value}: even sockets that enable SO_KEEPALIVE wait "
                           f"{num // 3600} h before probing, while idle connections without "
                           "keepalive were found; use 600-7200 or TCP_KEEPIDLE per socket")
    if name == "net.core.somaxconn":
        return _somaxconn(ctx, ns, num, value)
    if name == "net.ipv4.tcp_tw_reuse" and num == 0 and \
            "time-wait-port-pressure" in _rules_in(ctx, ns.inode):
        return ("info", f"{name} = 0 while ephemeral ports are under pressure: 1 lets "
                        "connect() reuse TIME-WAIT ports older than 1 s")
    return None


def _somaxconn(ctx: Context, ns: Netns, num: int, value: str) -> tuple[Severity, str] | None:
    capped = [sk for (netns, _), socks in ctx.listeners.items() if netns == ns.inode
              for sk in socks if sk.send_q == num and sk.recv_q >= num > 0]
    if capped and num < 1024:
        ports = ", ".join(f":{sk.local_port}" for sk in capped[:5])
        return ("warning", f"net.core.somaxconn = {value} caps the backlog of full accept "
                           f"queues ({ports}); raise it (e.g. 4096) and the program's "
                           "listen() backlog, after checking the handler keeps up")
    if num < 128:
        return ("info", f"net.core.somaxconn = {value}: tiny; every listen() backlog is "
                        "capped to it (default 4096)")
    return None


def _orphans(ctx: Context, ns: Netns) -> list[Item]:
    orphans = ns.counters.get("sockstat.TCP", {}).get("orphan")
    limit = ctx.sysctl_int(ns.inode, "net.ipv4.tcp_max_orphans")
    if not orphans or not limit:
        return []
    ratio = orphans / limit
    sev: Severity | None = None
    if ratio >= ctx.cfg.orphan_critical_ratio:
        sev = "critical"
    elif ratio >= ctx.cfg.orphan_warn_ratio:
        sev = "warning"
    if sev is None:
        return []
    return [(sev, "net.ipv4.tcp_max_orphans", str(limit),
             f"{orphans} orphaned sockets against tcp_max_orphans={limit} ({ratio:.0%}): "
             "beyond it the kernel resets connections (\"too many orphaned sockets\")")]


def _finding(ctx: Context, items: list[Item], nss: list[Netns]) -> Finding:
    sev: Severity = "info"
    for item in items:
        sev = worse(sev, item[0]) or sev
    harmful = [i for i in items if i[0] != "info"]
    names = ", ".join(ns.name for ns in nss)
    title = ("TCP settings that hurt here: "
             + ", ".join(f"{name}={value}" for _, name, value, _ in harmful) if harmful else
             f"{len(items)} TCP sysctl{'s' if len(items) != 1 else ''} differ from the "
             "kernel defaults")
    return Finding(
        rule="sysctl-audit", severity=sev, title=title, netns=names, netns_inode=nss[0].inode,
        evidence={"namespaces": [ns.name for ns in nss],
                  "values": {name: value for _, name, value, _ in items}},
        evidence_lines=[line for _, _, _, line in items],
        explanation=("These kernel settings shape how long closing connections live and "
                     "when dead peers are noticed. None of them closes a CLOSE-WAIT socket: "
                     "only the program (or `sockdoctor kill`) can."),
        fix=("Change a value with `sysctl -w NAME=VALUE` (inside the namespace: "
             "`ip netns exec NS sysctl -w ...`) and persist it in /etc/sysctl.d/*.conf; "
             "each line above says which way to change it and when."))
