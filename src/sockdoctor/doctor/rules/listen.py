"""accept-queue-not-drained and backlog-or-slow-handler: what waits in accept queues.

A connection the kernel has completed but the program has not accept()ed yet
has no file (inode 0) and sits in its listener's queue; ss shows the queue
length as the listener's Recv-Q and the backlog as its Send-Q. When clients
give up and close, those queued sockets turn CLOSE-WAIT with no owner.

Which rule fires depends on what the listener's owner is doing: idle in its
event loop, stopped or gone means nobody calls accept() (not drained); busy
means accept() is called, too slowly (slow handler). Between two samples a
queue whose old entries left it is being drained, however slowly.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from ...model import Socket, TcpState
from .. import procstate
from ..context import Context
from ..finding import Finding, Severity, worse
from ..text import fmt_ms, plural
from .common import AgeStats, age_stats

PortKey = tuple[int, int]  # netns, local port
_QUEUED_STATES = (TcpState.ESTABLISHED, TcpState.CLOSE_WAIT)


@dataclass
class ListenerView:
    netns: int
    port: int
    listeners: list[Socket]
    queued: list[Socket]
    pids: list[int]
    activity: str
    all: AgeStats
    closed: AgeStats  # queued ones already closed by their clients (CLOSE-WAIT)
    drained: int | None  # previous sample's queued sockets that left the queue
    churn: int  # young CLOSE-WAIT the program holds on this port

    @property
    def qlen(self) -> int:
        return sum(sk.recv_q for sk in self.listeners)

    @property
    def backlog(self) -> int:
        return sum(sk.send_q for sk in self.listeners)

    @property
    def full(self) -> bool:
        return self.backlog > 0 and self.qlen >= self.backlog


def check(ctx: Context) -> list[Finding]:
    findings: list[Finding] = []
    pressured: set[int] = set()
    for view in _views(ctx):
        if _stalled(ctx, view):
            findings.append(_not_drained(ctx, view))
            continue
        f = _backlog(ctx, view)
        if f is not None:
            findings.append(f)
            ctx.backlogged.add((view.netns, view.port))
            pressured.add(view.netns)
    findings.extend(_overflows_elsewhere(ctx, pressured))
    return findings


# --- building the views ---------------------------------------------------

def _views(ctx: Context) -> list[ListenerView]:
    queued = _queued(ctx.state(TcpState.ESTABLISHED), ctx.state(TcpState.CLOSE_WAIT))
    churn = _churn(ctx)
    prev = _previous_queues(ctx)
    views = []
    for key, listeners in ctx.listeners.items():
        q = queued.get(key, [])
        if not q and not any(sk.recv_q for sk in listeners) and churn.get(key, 0) < \
                ctx.cfg.churn_min:
            continue
        views.append(_view(ctx, key, listeners, q, prev.get(key), churn.get(key, 0)))
    return views


def _queued(*groups: list[Socket]) -> dict[PortKey, list[Socket]]:
    out: dict[PortKey, list[Socket]] = defaultdict(list)
    for socks in groups:
        for sk in socks:
            if sk.queued:
                out[(sk.netns, sk.local_port)].append(sk)
    return out


def _churn(ctx: Context) -> dict[PortKey, int]:
    """Young CLOSE-WAIT held by a program on a listening port: clients hanging up mid-request."""
    out: dict[PortKey, int] = defaultdict(int)
    for sk in ctx.state(TcpState.CLOSE_WAIT):
        if sk.queued or (sk.netns, sk.local_port) not in ctx.listeners:
            continue
        age = ctx.age(sk)
        if age is not None and age < ctx.cfg.stuck_age_ms:
            out[(sk.netns, sk.local_port)] += 1
    return out


def _previous_queues(ctx: Context) -> dict[PortKey, set[int]]:
    out: dict[PortKey, set[int]] = defaultdict(set)
    for st in _QUEUED_STATES:
        for sk in ctx.prev_by_state.get(st, ()):
            if sk.queued:
                out[(sk.netns, sk.local_port)].add(sk.cookie)
    return out


def _view(ctx: Context, key: PortKey, listeners: list[Socket], queued: list[Socket],
          prev_cookies: set[int] | None, churn: int) -> ListenerView:
    busy = [sk for sk in listeners if sk.recv_q] or listeners
    pids = sorted({o.pid for sk in busy for o in sk.owners})
    activity = procstate.combined_activity([ctx.process(p) for p in pids])
    threshold = ctx.cfg.queue_stale_ms
    drained = None
    if ctx.prev is not None:
        still = {sk.cookie for sk in queued}
        drained = len((prev_cookies or set()) - still)
    closed = [sk for sk in queued if sk.state == TcpState.CLOSE_WAIT]
    return ListenerView(
        netns=key[0], port=key[1], listeners=listeners, queued=queued, pids=pids,
        activity=activity, all=age_stats(ctx, queued, threshold),
        closed=age_stats(ctx, closed, threshold), drained=drained, churn=churn)


# --- deciding -------------------------------------------------------------

def _closed_signal(ctx: Context, v: ListenerView) -> bool:
    """Queued connections their clients gave up on, and not just a moment ago."""
    if v.closed.stuck:
        return True
    return not v.all.known and v.closed.count >= ctx.cfg.queue_closewait_unknown_age


def _stalled(ctx: Context, v: ListenerView) -> bool:
    if v.drained:
        return False  # old entries left the queue: accept() runs
    if v.activity not in procstate.NOT_ACCEPTING:
        return False
    if v.activity == procstate.UNKNOWN:
        return _closed_signal(ctx, v)
    return _closed_signal(ctx, v) or v.all.stuck > 0


class _Owners(str):
    """The listener's owners as a sentence's subject, with the verb forms it takes."""

    many: bool = False

    def verb(self, one: str, several: str) -> str:
        """'accepts' for one process, 'accept' for 'X and 2 other processes'."""
        return several if self.many else one


def _owners_text(ctx: Context, pids: list[int]) -> _Owners:
    if not pids:
        return _Owners("its owner (not visible)")
    if len(pids) == 1:
        return _Owners(ctx.label(pids[0]))
    who = _Owners(ctx.label(pids[0]) + " and "
                  + plural(len(pids) - 1, "other process", "other processes"))
    who.many = True
    return who


def _listener_evidence(ctx: Context, v: ListenerView) -> tuple[dict, list[str]]:
    evidence = {
        "accept_queue": v.qlen, "backlog": v.backlog,
        "somaxconn": ctx.sysctl_int(v.netns, "net.core.somaxconn"),
        "queued": v.all.count, "queued_close_wait": v.closed.count,
        "queued_established": v.all.count - v.closed.count,
        "oldest_queued_ms": v.all.oldest, "listener_pids": v.pids,
        "owner_activity": v.activity,
    }
    lines = [f"listener :{v.port} Recv-Q {v.qlen} (accept queue) / Send-Q {v.backlog} "
             f"(backlog)",
             f"{plural(v.all.count, 'connection')} waiting to be accepted: "
             f"{v.closed.count} already closed by their clients (CLOSE-WAIT), "
             f"{v.all.count - v.closed.count} still open; oldest waiting "
             f"{fmt_ms(v.all.oldest)}"]
    if v.drained is not None:
        evidence["left_queue_since_previous"] = v.drained
        lines.append(f"{v.drained} of the previous sample's queued connections have left "
                     "the queue since")
    for pid in v.pids[:3]:
        proc = ctx.process(pid)
        if proc is None:
            lines.append(f"{ctx.label(pid)}: gone")
            continue
        lines.append(f"{ctx.label(pid)}: {procstate.threads_summary(proc)}")
        lines.extend("  " + t for t in procstate.thread_lines(proc))
        evidence[f"threads_{pid}"] = [procstate.thread_doing(t) for t in proc.threads or []]
    return evidence, lines


def _not_drained(ctx: Context, v: ListenerView) -> Finding:
    who = _owners_text(ctx, v.pids)
    evidence, lines = _listener_evidence(ctx, v)
    sev: Severity = "warning"
    idle_for_long = v.activity == procstate.IDLE and (v.all.oldest or 0) >= \
        ctx.cfg.queue_dead_ms
    if v.activity in (procstate.STOPPED, procstate.ZOMBIE, procstate.GONE) or v.full \
            or v.all.stuck >= ctx.cfg.queue_critical or idle_for_long:
        sev = "critical"
    waiting = (f"{plural(v.closed.count, 'connection')} closed by their clients"
               if v.closed.count else plural(v.all.count, "connection"))
    relief, argv = ctx.kill(v.netns, ["close-wait"], words=["sport", "=", f":{v.port}"])
    return Finding(
        rule="accept-queue-not-drained", severity=sev,
        title=f"{who} {who.verb('does', 'do')} not accept() on :{v.port}: {waiting} wait "
              f"in its accept queue ({v.qlen}/{v.backlog})",
        netns=ctx.ns_name(v.netns), netns_inode=v.netns, processes=ctx.refs(v.pids),
        ports=[v.port], peers=sorted({sk.peer_addr for sk in v.queued})[:10],
        sockets=len(v.queued), evidence=evidence, evidence_lines=lines,
        explanation=_why_not_drained(who, v),
        fix=("With an edge-triggered (EPOLLET) listening socket, call accept() in a loop "
             "until it fails with EAGAIN/EWOULDBLOCK — after rejecting or closing an "
             "over-limit connection `continue`, never `return` or `break` — or register "
             "the listening fd level-triggered. Make sure the accept loop cannot block on "
             "anything else (locks, a full worker queue). A stopped process resumes with "
             "`kill -CONT PID`. Killing the queued sockets frees the queue, but new "
             "connections pile up again until the accept loop is fixed."),
        relief=relief, relief_argv=argv)


def _why_not_drained(who: _Owners, v: ListenerView) -> str:
    common = ("These connections completed the handshake but were never accept()ed; "
              "their clients gave up and closed them, and nobody will ever close our "
              "side: no process owns them (lsof shows nothing) and they count against "
              "the backlog. ")
    if v.activity == procstate.IDLE:
        return common + (f"{who} {who.verb('sits', 'sit')} idle (epoll_wait/poll or a lock) "
                         "while its listener has a non-empty queue, so it is not being told "
                         "about them: the classic cause is an edge-triggered listener whose "
                         "accept loop stops before accept() returns EAGAIN, so the queue "
                         "never produces another event.")
    if v.activity == procstate.STOPPED:
        return common + (f"{who} {who.verb('is', 'are')} stopped (SIGSTOP, job control or a "
                         "debugger).")
    if v.activity in (procstate.ZOMBIE, procstate.GONE):
        gone = who.verb("has exited or is a zombie", "have exited or are zombies")
        return common + (f"{who} {gone} while something still holds the listening socket.")
    return common + (f"What {who} {who.verb('is', 'are')} doing was not collected (scan "
                     f"with thread states to see it); {who.verb('it is', 'they are')} not "
                     "calling accept() on this listener.")


def _backlog(ctx: Context, v: ListenerView) -> Finding | None:
    cfg = ctx.cfg
    sev = _queue_severity(ctx, v)
    ovf = ctx.counter_delta(v.netns, "TcpExt", "ListenOverflows")
    drops = ctx.counter_delta(v.netns, "TcpExt", "ListenDrops")
    pressure = v.full or v.qlen >= cfg.queue_min
    if pressure and ovf:
        sev = worse(sev, _overflow_severity(ctx, ovf))
        if v.full and v.all.oldest is not None and v.all.oldest >= cfg.queue_wait_ms:
            sev = "critical"
    if v.churn >= cfg.churn_min:
        sev = worse(sev, "info")
    if sev is None:
        return None
    who = _owners_text(ctx, v.pids)
    evidence, lines = _listener_evidence(ctx, v)
    evidence.update(listen_overflows_delta=ovf, listen_drops_delta=drops,
                    young_close_wait=v.churn)
    if ovf is not None:
        lines.append(f"ListenOverflows +{ovf}, ListenDrops +{drops} in "
                     f"{fmt_ms(ctx.interval_ms)} (namespace-wide)")
    if v.churn:
        lines.append(f"{v.churn} young CLOSE-WAIT held by the program on :{v.port}: "
                     "clients hang up while their request is handled")
    relief, argv = ("", [])
    if v.closed.count:
        relief, argv = ctx.kill(v.netns, ["close-wait"], words=["sport", "=", f":{v.port}"])
    return Finding(
        rule="backlog-or-slow-handler", severity=sev,
        title=f"{who} {who.verb('accepts and handles', 'accept and handle')} connections on "
              f":{v.port} too slowly: accept queue {v.qlen}/{v.backlog}, oldest waiting "
              f"{fmt_ms(v.all.oldest)}",
        netns=ctx.ns_name(v.netns), netns_inode=v.netns, processes=ctx.refs(v.pids),
        ports=[v.port], sockets=len(v.queued) + v.churn, evidence=evidence,
        evidence_lines=lines, explanation=_WHY_SLOW, fix=_fix_slow(ctx, v),
        relief=relief, relief_argv=argv)


def _queue_severity(ctx: Context, v: ListenerView) -> Severity | None:
    cfg = ctx.cfg
    sev: Severity | None = None
    oldest = v.all.oldest
    near = v.backlog > 0 and v.qlen >= cfg.queue_near_ratio * v.backlog \
        and v.qlen >= cfg.queue_min
    waited = oldest is not None and oldest >= cfg.queue_wait_ms
    if v.full:
        unknown_big = not v.all.known and v.qlen >= cfg.queue_full_warn
        sev = "warning" if waited or unknown_big else "info"
        if waited and v.closed.stuck:
            sev = "critical"
    elif near:
        sev = "warning" if waited else "info"
    if _closed_signal(ctx, v) or (oldest is not None and oldest >= cfg.queue_stale_ms):
        sev = worse(sev, "warning")
    elif waited:
        sev = worse(sev, "info")
    return sev


def _overflow_severity(ctx: Context, delta: int) -> Severity | None:
    if delta >= ctx.cfg.overflow_critical:
        return "critical"
    if delta >= ctx.cfg.overflow_warn:
        return "warning"
    return "info" if delta > 0 else None


_WHY_SLOW = (
    "Connections arrive faster than the program accepts and answers them. They wait in "
    "the accept queue; clients whose timeout expires close them before they are even "
    "accepted (CLOSE-WAIT in the queue) or while they are handled (young CLOSE-WAIT), "
    "and when the queue is full the kernel drops new handshakes (ListenOverflows), which "
    "clients see as connect delays of a second or more. A bigger backlog only hides this: "
    "connections wait longer and are more often dead when finally accepted.")


def _fix_slow(ctx: Context, v: ListenerView) -> str:
    somax = ctx.sysctl_int(v.netns, "net.core.somaxconn")
    cap_note = f" (listen(backlog) is capped by net.core.somaxconn={somax})" if somax else ""
    return ("Find what the handler waits on (thread states above: a lock, a slow "
            "database, sleep) and make it faster or add workers; make client timeouts and "
            "server response times agree; size the backlog to what the server can absorb "
            f"within the clients' timeout{cap_note}; before expensive work, check the "
            "client is still there (a read returning 0 means it left) and close at once; "
            "shed load early (fail fast, HTTP 503) instead of queueing.")


def _overflows_elsewhere(ctx: Context, pressured: set[int]) -> list[Finding]:
    """ListenOverflows rose in a namespace where no listener is under pressure now."""
    out: list[Finding] = []
    if ctx.prev is None:
        return out
    for ns in ctx.snap.namespaces:
        if ns.inode in pressured:
            continue
        ovf = ctx.counter_delta(ns.inode, "TcpExt", "ListenOverflows")
        sev = _overflow_severity(ctx, ovf or 0)
        if sev is None or ovf is None:
            continue
        drops = ctx.counter_delta(ns.inode, "TcpExt", "ListenDrops")
        out.append(Finding(
            rule="backlog-or-slow-handler", severity=sev,
            title=f"{ovf} connection attempts overflowed a full accept queue in "
                  f"{fmt_ms(ctx.interval_ms)}",
            netns=ns.name, netns_inode=ns.inode, sockets=0,
            evidence={"listen_overflows_delta": ovf, "listen_drops_delta": drops,
                      "interval_ms": ctx.interval_ms},
            evidence_lines=[f"TcpExt ListenOverflows +{ovf}, ListenDrops +{drops} in "
                            f"{fmt_ms(ctx.interval_ms)}; no listener is full right now "
                            "(the bursts come and go)"],
            explanation=_WHY_SLOW,
            fix=("Watch `ss -ltn` during the bursts to find the listener whose Recv-Q "
                 "reaches its Send-Q; then as above: faster handling, more workers, a "
                 "backlog sized to what the server absorbs within the clients' timeout.")))
    return out
