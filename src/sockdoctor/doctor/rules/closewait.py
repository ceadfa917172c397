"""never-closed and client-pool-dead-connections: CLOSE-WAIT sockets a program holds.

CLOSE-WAIT means the peer sent FIN, the kernel acknowledged it, and the
program has not called close(); the kernel never times it out. Sockets still
in a listener's accept queue (inode 0) belong to the listener rules. The rest
are split by which side the program is on: a service port of ours
(never-closed) or an ephemeral port towards a remote service (a client, most
often a connection pool, client-pool-dead-connections).
"""

from __future__ import annotations

from collections import Counter, defaultdict

from ...model import Process, Socket, TcpState
from ..context import Context, Service, first_pid, is_plain
from ..finding import Finding, Severity, cap
from ..runtimes import ClientAdvice, Unread, client_advice, describe, never_closed_fix
from ..text import fmt_ms, host, plural, top, top_line
from .clients import pool_knobs, service_name
from .common import AgeStats, age_stats, growth_line, recv_q_counts, stuck_severity

# netns, holder (("pid", P) on the client side, ("program", ...) on a service
# port: the workers of one server are one group), service key
GroupKey = tuple[int, tuple[str, str], tuple[str, str, int]]
# Many workers: name them by --process in the relief command instead of one --pid each.
MAX_RELIEF_PIDS = 6
# A CLOSE-WAIT whose EOF is still unread this long is worth a note, however young.
UNREAD_NOTE_MS = 100


def check(ctx: Context) -> list[Finding]:
    groups, services = _group(ctx, ctx.state(TcpState.CLOSE_WAIT))
    before = _previous_counts(ctx)
    live: dict[tuple[int, int, str, int], int] | None = None
    findings: list[Finding] = []
    young: list[tuple[int, str]] = []
    for key, socks in groups.items():
        netns, _, _ = key
        svc = services[key]
        pids = _pids(socks)
        st = age_stats(ctx, socks, ctx.cfg.stuck_age_ms)
        prev_n = before.get(key, 0) if ctx.prev is not None else None
        growth = None if prev_n is None else len(socks) - prev_n
        sev = _severity(ctx, netns, svc, st, growth)
        if sev is None:
            note = _young(ctx, netns, pids, svc, st, socks)
            if note is not None:
                young.append(note)
            continue
        if svc.side == "server":
            f = _never_closed(ctx, netns, pids, svc, socks, st)
        else:
            live = live if live is not None else _live_connections(ctx)
            f = _client_pool(ctx, netns, pids[0], svc, socks, st,
                             live.get((netns, pids[0], svc.addr, svc.port), 0))
        f.severity = sev
        _add_trend(ctx, f, len(socks), prev_n, st, growth)
        findings.append(f)
    ctx.notes.extend(text for _, text in sorted(young, reverse=True))
    return findings


def _severity(ctx: Context, netns: int, svc: Service, st: AgeStats,
              growth: int | None) -> Severity | None:
    sev = stuck_severity(ctx, st, growth)
    if svc.side == "server" and (netns, svc.port) in ctx.backlogged \
            and st.stuck < ctx.cfg.critical_stuck and not st.very_old:
        return cap(sev, "info")  # probably requests still in the slow handler's hands
    return sev


def _group(ctx: Context, socks: list[Socket]
           ) -> tuple[dict[GroupKey, list[Socket]], dict[GroupKey, Service]]:
    groups: dict[GroupKey, list[Socket]] = {}
    services: dict[GroupKey, Service] = {}
    holders = _Holders(ctx, ctx.snap.processes)
    for sk in socks:
        if sk.queued:
            continue  # in an accept queue: the listener rules look at those
        svc_key = ctx.service_key(sk)
        key = (sk.netns, holders.of(sk, svc_key), svc_key)
        group = groups.get(key)
        if group is None:
            groups[key] = group = []
            services[key] = ctx.service(sk)
        group.append(sk)
    return groups, services


class _Holders:
    """Who a CLOSE-WAIT socket counts against: its process, or on a service port its program.

    The workers of a prefork server (apache, php-fpm, gunicorn, uwsgi) each
    hold a few of the service's connections: they are one program when they
    share the name of the listener's owner or are its children. Decided once
    per (namespace, port, pid): a leak has thousands of sockets and few of those.
    """

    def __init__(self, ctx: Context, processes: dict[int, Process]) -> None:
        self.ctx = ctx
        self.processes = processes
        self.known: dict[tuple[int, int, int], tuple[str, str]] = {}

    def of(self, sk: Socket, svc_key: tuple[str, str, int]) -> tuple[str, str]:
        pid = first_pid(sk)
        if svc_key[0] != "server" or pid == 0:
            return ("pid", str(pid))
        key = (sk.netns, svc_key[2], pid)
        holder = self.known.get(key)
        if holder is None:
            holder = self.known[key] = self._program(sk.netns, svc_key[2], pid)
        return holder

    def _program(self, netns: int, port: int, pid: int) -> tuple[str, str]:
        listener_pids = self.ctx.listener_pids(netns, port)
        proc = self.processes.get(pid)
        comms = {self.processes[p].comm for p in listener_pids if p in self.processes}
        if listener_pids and (pid in listener_pids or (proc is not None and (
                proc.ppid in listener_pids or proc.comm in comms))):
            return ("program", f"listener:{min(listener_pids)}")
        return ("program", f"comm:{proc.comm}") if proc is not None else ("pid", str(pid))


def _pids(socks: list[Socket]) -> list[int]:
    """The processes of a group, the one with the most sockets first (0: none seen)."""
    counts = Counter(first_pid(sk) for sk in socks)
    return sorted(counts, key=lambda pid: (-counts[pid], pid))


def _previous_counts(ctx: Context) -> dict[GroupKey, int]:
    if ctx.prev is None:
        return {}
    counts: dict[GroupKey, int] = defaultdict(int)
    holders = _Holders(ctx, ctx.prev.processes)
    for sk in ctx.prev_by_state.get(TcpState.CLOSE_WAIT, ()):
        if not sk.queued:
            svc_key = ctx.service_key(sk)
            counts[(sk.netns, holders.of(sk, svc_key), svc_key)] += 1
    return counts


def _young(ctx: Context, netns: int, pids: list[int], svc: Service, st: AgeStats,
           socks: list[Socket]) -> tuple[int, str] | None:
    """A note for CLOSE-WAIT not yet old (or many) enough to count: (count, text).

    Very young ones (under a tenth of --stuck-after) are a close in flight and
    not mentioned, unless the program has not even read the peer's EOF
    (Recv-Q > 0) for UNREAD_NOTE_MS: `doctor` run right after a leak says so.
    """
    where = f"on {svc.label}" if svc.side == "server" else f"to {svc.label}"
    who = _who(ctx, pids)
    ns = f" [netns {ctx.ns_name(netns)}]" if len(ctx.snap.namespaces) > 1 else ""
    head = f"{plural(st.count, 'CLOSE-WAIT socket')} of {who} {where}{ns}"
    if not st.known:
        return (st.count, f"{head}, age unknown: without ages they count from "
                          f"{ctx.cfg.unknown_age_info} sockets; `sockdoctor doctor --interval "
                          "10s` tells whether they stay")
    oldest = st.oldest or 0
    unread = sum(1 for sk in socks if sk.recv_q > 0)
    if oldest < ctx.cfg.stuck_age_ms // 10 and not (unread and oldest >= UNREAD_NOTE_MS):
        return None  # a healthy program's close in flight: not worth a line
    wait = fmt_ms(max(0, st.threshold - oldest))
    eof = (f", {unread} of them with the peer's close not yet read (Recv-Q > 0)"
           if unread and oldest < ctx.cfg.stuck_age_ms // 10 else "")
    return (st.count, f"{head}{eof}, oldest {fmt_ms(oldest)}: they count as stuck at "
                      f"{fmt_ms(st.threshold)} (--stuck-after), in {wait} if they stay")


def _who(ctx: Context, pids: list[int]) -> str:
    seen = [p for p in pids if p > 0]
    if not seen:
        return "a process that could not be seen"
    if len(seen) == 1:
        return ctx.label(seen[0])
    proc = ctx.process(seen[0])
    name = proc.comm if proc else "a program"
    shown = ", ".join(str(p) for p in seen[:4]) + (", ..." if len(seen) > 4 else "")
    return f"{name} ({len(seen)} processes: pid {shown})"


def _add_trend(ctx: Context, f: Finding, n: int, prev_n: int | None, st: AgeStats,
               growth: int | None) -> None:
    line = growth_line(ctx, n, prev_n, st.persisted)
    if line is None:
        return
    f.evidence.update(previous_count=prev_n, growth=growth, persisted=st.persisted,
                      interval_ms=ctx.interval_ms)
    f.evidence_lines.append(line)


def _common_evidence(ctx: Context, pids: list[int], socks: list[Socket], st: AgeStats,
                     what: str) -> tuple[dict, list[str]]:
    zero, one, more = recv_q_counts(socks)
    mine = set(pids)
    fds = sorted(o.fd for sk in socks for o in sk.owners if o.pid in mine)
    evidence = {"count": st.count, "stuck": st.stuck, "stuck_age_ms": st.threshold,
                "oldest_age_ms": st.oldest, "ages_known": bool(st.known),
                "recv_q_zero": zero, "recv_q_one": one, "recv_q_more": more,
                "fds": fds[:20]}
    lines = [st.line(what), _recv_q_line(zero, one, more)]
    proc = ctx.process(pids[0])
    if len(pids) > 1:
        lines.append(_split_line(ctx, pids, socks, evidence))
    elif proc is not None and fds:
        limit = f", limit {proc.fd_limit}" if proc.fd_limit else ""
        lines.append(f"fds {_fd_list(fds)} ({proc.fd_count} open{limit})")
        evidence.update(fd_count=proc.fd_count, fd_limit=proc.fd_limit)
    if proc is not None and proc.runtime is not None:
        evidence["runtime"] = describe(proc.runtime)
        lines.append(f"owner: {evidence['runtime']}")
    others = sorted({o.pid for sk in socks for o in sk.owners} - mine)
    if others:
        evidence["also_held_by"] = others
        lines.append("also held by " + ", ".join(ctx.label(p) for p in others[:5]))
    return evidence, lines


def _split_line(ctx: Context, pids: list[int], socks: list[Socket], evidence: dict) -> str:
    """Per-process counts of a service's CLOSE-WAIT held by several workers."""
    counts = Counter(first_pid(sk) for sk in socks)
    evidence["per_process"] = {str(p): counts[p] for p in pids[:50]}
    parents = {ctx.process(p).ppid for p in pids if ctx.process(p) is not None}
    parent = f" (children of {ctx.label(next(iter(parents)))})" if len(parents) == 1 \
        and next(iter(parents)) > 1 else ""
    shown = ", ".join(f"{p} ×{counts[p]}" for p in pids[:8])
    more = f", +{len(pids) - 8} more" if len(pids) > 8 else ""
    return f"held by {len(pids)} processes{parent}: pid {shown}{more}"


def _recv_q_line(zero: int, one: int, more: int) -> str:
    parts = [f"{n} with {label}" for n, label in (
        (zero, "Recv-Q 0 (read up to EOF, never closed)"),
        (one, "Recv-Q 1 (the EOF itself never read)"),
        (more, "Recv-Q > 1 (data and EOF never read)")) if n]
    return ", ".join(parts)


def _fd_list(fds: list[int]) -> str:
    shown = ", ".join(str(fd) for fd in fds[:8])
    return shown + (f", ... ({len(fds)} in all)" if len(fds) > 8 else "")


def _never_closed(ctx: Context, netns: int, pids: list[int], svc: Service,
                  socks: list[Socket], st: AgeStats) -> Finding:
    pid = pids[0]
    who = _who(ctx, pids)
    evidence, lines = _common_evidence(ctx, pids, socks, st, "CLOSE-WAIT socket")
    peers = top((sk.peer_addr for sk in socks), 5)
    evidence["peers"] = peers
    lines.append("peers: " + top_line(peers, len(socks)))
    oldest = f" (oldest {fmt_ms(st.oldest)})" if st.oldest is not None else ""
    title = (f"{who} holds {plural(len(socks), 'CLOSE-WAIT socket')} on :{svc.port}{oldest}"
             if pid else
             f"{plural(len(socks), 'CLOSE-WAIT socket')} on :{svc.port} held by a process "
             f"that could not be seen{oldest}")
    relief, argv = ctx.kill(netns, ["close-wait"], port=svc.port,
                            older_than_ms=ctx.cfg.stuck_age_ms, **_relief_holders(ctx, pids))
    return Finding(
        rule="never-closed", severity="info", title=title, netns=ctx.ns_name(netns),
        netns_inode=netns, processes=ctx.refs(pids[:20]), ports=[svc.port],
        peers=list(peers), sockets=len(socks), evidence=evidence, evidence_lines=lines,
        explanation=_why_never_closed(who, evidence, ctx, pid),
        fix=_fix_never_closed(ctx, pid), relief=relief, relief_argv=argv)


def _relief_holders(ctx: Context, pids: list[int]) -> dict:
    """--pid for each worker, or --process NAME when there are many of one name."""
    seen = [p for p in pids if p > 0]
    comms = {ctx.process(p).comm for p in seen if ctx.process(p) is not None}
    if len(seen) > MAX_RELIEF_PIDS and len(comms) == 1 and is_plain(next(iter(comms))):
        return {"process": next(iter(comms))}
    return {"pids": seen}


def _why_never_closed(who: str, ev: dict, ctx: Context, pid: int) -> str:
    if pid == 0:
        lead = ("The peers closed these connections and the kernel acknowledged their FIN, "
                "but the program holding them (not visible to this scan: another user's "
                "process, or owners were not collected) never called close().")
    elif ev["recv_q_zero"] >= ev["recv_q_one"] + ev["recv_q_more"]:
        lead = (f"The peers closed these connections and {who} has read everything up to "
                "the end-of-file (Recv-Q 0: recv() returned 0, or will on the next call) but "
                "never called close(): the EOF or error path forgets to close, or an "
                "exception skips it.")
    else:
        lead = (f"The peers closed these connections but {who} never even read the "
                "end-of-file (Recv-Q is not 0): it stopped reading these sockets — lost "
                "track of them, never registered them with its poller, or the thread that "
                "owns them is stuck — so it never learns they are closed.")
    return (lead + " The kernel never times out CLOSE-WAIT: each one keeps a file "
            "descriptor and kernel memory until the program closes it or exits.")


FIX_NEVER_CLOSED = (
    "Close the socket as soon as recv()/read() returns 0 (the peer closed) and in every "
    "error path (read() < 0 with an errno other than EAGAIN/EINTR, exceptions, early "
    "returns): Python `with socket.socket(...) as s:` or try/finally: s.close(); Java "
    "try-with-resources; Go `defer conn.Close()`; C++ RAII.")
FIX_NEVER_CLOSED_ALWAYS = (
    " Keep every accepted socket registered with the event loop until it is closed, and "
    "add an idle timeout that closes sockets without activity. SO_KEEPALIVE does not fix "
    "this: it only turns a dead connection into a closed socket, and the descriptor still "
    "leaks until close().")


def _fix_never_closed(ctx: Context, pid: int) -> str:
    """The owner's runtime's way first; every language's only when it is unknown."""
    proc = ctx.process(pid)
    own = never_closed_fix(proc.runtime if proc is not None else None)
    return (own or FIX_NEVER_CLOSED) + FIX_NEVER_CLOSED_ALWAYS


def _client_pool(ctx: Context, netns: int, pid: int, svc: Service, socks: list[Socket],
                 st: AgeStats, live: int) -> Finding:
    who = ctx.label(pid)
    name = service_name(svc.port)
    target = f"{svc.label} ({name})" if name else svc.label
    evidence, lines = _common_evidence(ctx, [pid], socks, st, "CLOSE-WAIT socket")
    lo, hi = ctx.port_range(netns)
    evidence.update(peer=svc.label, service=name, live_connections=live,
                    local_port_range=f"{lo}-{hi}")
    lines.append(f"local ports in the ephemeral range {lo}-{hi}; {live} ESTABLISHED "
                 f"connections of the same process to {svc.label}")
    proc = ctx.process(pid)
    unread = Unread(len(socks), evidence["recv_q_one"] + evidence["recv_q_more"],
                    evidence["recv_q_more"])
    advice = client_advice(proc.runtime if proc is not None else None, svc.port, unread)
    if advice is not None and advice.signature:
        evidence["signature"] = advice.signature
    relief, argv = ctx.kill(netns, ["close-wait"], pids=[pid], port=svc.port,
                            older_than_ms=ctx.cfg.stuck_age_ms,
                            words=["dst", host(svc.addr)])
    title, why = _client_story(who, target, svc, len(socks), advice)
    return Finding(
        rule="client-pool-dead-connections", severity="info", title=title,
        netns=ctx.ns_name(netns), netns_inode=netns, processes=ctx.refs([pid]),
        ports=[svc.port], peers=[svc.label], sockets=len(socks), evidence=evidence,
        evidence_lines=lines, explanation=why, fix=_client_fix(svc.port, advice),
        relief=relief, relief_argv=argv)


# Responses nobody finished (doctor/runtimes.py's signatures): title and explanation.
_UNFINISHED = {
    "go-body-not-closed": (
        "never closed the response bodies of",
        "Every connection {who} has to {peer} is in CLOSE-WAIT, none is ESTABLISHED, and "
        "each still holds unread bytes (Recv-Q: the tail of the response and the EOF). That "
        "is the signature of a Go program that never closed (or read to the end) resp.Body: "
        "net/http cannot reuse or close a connection whose body is still open, so when the "
        "server closes it after its own timeout the socket stays in CLOSE-WAIT with its "
        "descriptor and ephemeral port, one more for each such request. Go's transport "
        "closes idle pooled connections by itself; these are not idle, they belong to "
        "responses nobody finished."),
    "node-response-not-consumed": (
        "never consumed the responses of",
        "Every connection {who} has to {peer} is in CLOSE-WAIT, none is ESTABLISHED, and "
        "each still holds the unread rest of a response and the EOF (Recv-Q). A Node.js "
        "response that nobody reads pauses its socket, so the program never sees the "
        "server's FIN: the agent cannot reuse or free the connection, and its keepalive "
        "probes keep the server's side answering (which also keeps tcp_info's last ACK "
        "young)."),
}


def _client_story(who: str, target: str, svc: Service, n: int,
                  advice: ClientAdvice | None) -> tuple[str, str]:
    """The title and the explanation: responses nobody finished, or an idle pool."""
    unfinished = _UNFINISHED.get(advice.signature) if advice is not None else None
    if unfinished is not None:
        verb, why = unfinished
        return (f"{who} {verb} {plural(n, 'connection')} to {target}: the server closed "
                "them (CLOSE-WAIT)", why.format(who=who, peer=svc.label))
    return (f"{who} keeps {plural(n, 'connection')} to {target} that the server closed "
            "(CLOSE-WAIT)",
            f"The server at {svc.label} (or a load balancer or proxy in between) closed "
            "these connections, typically because they sat idle longer than its idle "
            f"timeout; {who} acknowledged the FIN but keeps the sockets, most likely "
            "parked in a connection pool that has not noticed. The next request on one "
            "of them fails, and each one holds an ephemeral port and a descriptor until "
            "the client closes it. Without a pool, the client code itself forgets to "
            "close when the server hangs up.")


def _client_fix(port: int, advice: ClientAdvice | None) -> str:
    if advice is not None:
        return advice.fix if advice.signature else advice.fix + "."
    return ("Make the pool retire connections before the server does and check them "
            "before use: " + pool_knobs(port) + ". Code without a pool: close the "
            "socket when recv() returns 0 and on every error path.")


def _live_connections(ctx: Context) -> dict[tuple[int, int, str, int], int]:
    """ESTABLISHED sockets per (netns, pid, peer address, peer port): the pool's live part."""
    counts: dict[tuple[int, int, str, int], int] = defaultdict(int)
    for sk in ctx.state(TcpState.ESTABLISHED):
        if sk.owners:
            counts[(sk.netns, first_pid(sk), sk.peer_addr, sk.peer_port)] += 1
    return counts
