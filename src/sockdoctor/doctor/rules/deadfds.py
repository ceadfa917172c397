"""dead-socket-fds: descriptors of TCP sockets that are over but were never close()d.

A dead descriptor points at a socket in no TCP table. What the socket still
says (linux/deadsock.py: peer, pending error, TCP_INFO) names the cause and
the service, so findings group by process x remote service x cause, like
client-pool-dead-connections:

- reset: the peer sent RST (a server or load balancer closing idle
  connections abortively); the program, usually its pool, never noticed;
- timeout: retransmissions or keepalive probes went unanswered;
- shutdown: shutdown() without close(); the connection ended gracefully
  (our FIN was acknowledged);
- unconnected: created and never connected (a moment's state, or a failed
  connect path that forgets to close);
- unknown: not inspected (no ptrace rights, or an older snapshot).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from ...model import DeadSocketFd, TcpInfo
from ..context import Context
from ..finding import Finding, Severity
from ..text import endpoint, fmt_ms, plural, top
from .clients import pool_knobs, service_name

# A timeout is tcp_write_err after this many unanswered retransmissions or probes.
TIMEOUT_TRIES = 3


@dataclass(frozen=True)
class Group:
    pid: int
    side: str  # "client": towards a remote service; "server": on our port; "" unknown
    service: str  # "10.0.0.9:3306", ":8080" or ""
    port: int
    cause: str


def check(ctx: Context) -> list[Finding]:
    groups: dict[Group, list[DeadSocketFd]] = defaultdict(list)
    for d in ctx.snap.dead_fds:
        if judgeable(ctx, d.pid):
            groups[_group(ctx, d)].append(d)
    before = {(d.pid, d.fd, d.inode) for d in ctx.prev.dead_fds} if ctx.prev else set()
    out = []
    for group, fds in sorted(groups.items(), key=lambda kv: (kv[0].pid, -len(kv[1]))):
        persisted = sum(1 for d in fds if (d.pid, d.fd, d.inode) in before)
        sev = _severity(ctx, len(fds), persisted)
        if sev is not None:
            out.append(_finding(ctx, group, fds, persisted, sev))
    return out


def judgeable(ctx: Context, pid: int) -> bool:
    """Only a process living in a scanned namespace can be told to hold dead sockets.

    Its other sockets may sit in namespaces this scan did not dump, where they
    are alive; a process we know nothing about cannot be judged either.
    """
    proc = ctx.process(pid)
    if proc is None or not proc.netns:
        return False
    ns = ctx.snap.netns(proc.netns)
    return ns is not None and not ns.error


def _group(ctx: Context, d: DeadSocketFd) -> Group:
    if d.error_pending is None or d.info is None:
        return Group(d.pid, "", "", 0, "unknown")
    if not d.peer_port:
        return Group(d.pid, "", "", 0, "unconnected")
    proc = ctx.process(d.pid)
    server = proc is not None and ctx.is_listening(proc.netns, d.local_port)
    side, service, port = (("server", f":{d.local_port}", d.local_port) if server else
                           ("client", endpoint(d.peer_addr, d.peer_port), d.peer_port))
    return Group(d.pid, side, service, port, cause(d, client=not server))


def cause(d: DeadSocketFd, client: bool) -> str:
    """reset, timeout or shutdown, from a socket's pending error and TCP_INFO."""
    info = d.info or TcpInfo()
    if d.error_pending:
        tries = max(info.retransmits or 0, info.probes or 0)
        return "timeout" if tries >= TIMEOUT_TRIES else "reset"
    # No error left to read: either the connection ended gracefully (our FIN was
    # acknowledged: one sequence number beyond the data, two for a client, whose
    # SYN counts too) or the program already read the reset and kept the fd.
    if info.bytes_acked is None or info.bytes_sent is None:
        return "unknown"
    unique_sent = info.bytes_sent - (info.bytes_retrans or 0)
    return "shutdown" if info.bytes_acked - unique_sent >= (2 if client else 1) else "reset"


def _severity(ctx: Context, n: int, persisted: int) -> Severity | None:
    cfg = ctx.cfg
    if n >= cfg.dead_fd_critical:
        return "critical"
    if n >= cfg.dead_fd_warn or persisted >= cfg.dead_fd_persisted_warn:
        return "warning"
    return "info" if n >= 2 or persisted else None


def _finding(ctx: Context, g: Group, fds: list[DeadSocketFd], persisted: int,
             sev: Severity) -> Finding:
    who = ctx.label(g.pid)
    proc = ctx.process(g.pid)
    netns = proc.netns if proc else 0
    evidence, lines = _evidence(ctx, g, fds, who)
    if ctx.prev is not None:
        evidence["persisted"] = persisted
        lines.append(f"{persisted} of them were already dead in the previous sample")
    title, why, fix = _texts(g, who, len(fds))
    relief, argv = ctx.kill(netns, [], pids=[g.pid], words=["--dead-fds"])
    return Finding(
        rule="dead-socket-fds", severity=sev, title=title,
        netns=ctx.ns_name(netns) if netns else "", netns_inode=netns,
        processes=ctx.refs([g.pid]), ports=[g.port] if g.port else _listening_ports(ctx, g.pid),
        peers=[g.service] if g.side == "client" else list(evidence.get("peers", {})),
        sockets=len(fds), evidence=evidence, evidence_lines=lines, explanation=why,
        fix=fix + " " + _CLOSE_NOW, relief=relief, relief_argv=argv)


def _evidence(ctx: Context, g: Group, fds: list[DeadSocketFd], who: str
              ) -> tuple[dict, list[str]]:
    numbers = sorted(d.fd for d in fds)
    shown = ", ".join(str(n) for n in numbers[:10]) + (" ..." if len(numbers) > 10 else "")
    lines = [f"{plural(len(fds), 'descriptor')} of {who} point at TCP sockets found in no "
             f"TCP table: fds {shown}"]
    evidence: dict = {"count": len(fds), "fds": numbers[:50],
                      "inodes": [d.inode for d in fds][:50], "cause": g.cause}
    if g.cause == "unknown":
        return evidence, lines
    unread = sum(1 for d in fds if d.error_pending)
    idle = max((d.info.last_data_recv or 0 for d in fds if d.info), default=0)
    evidence.update(service=g.service, side=g.side, error_unread=unread, idle_ms=idle)
    if g.side == "server":
        evidence["peers"] = top((d.peer_addr for d in fds), 5)
    where = f"to {g.service}" if g.side == "client" else f"on {g.service}" if g.service else ""
    state = "CLOSE (tcp_info)" if all(d.info and d.info.state == 7 for d in fds) else "mixed"
    lines.append(f"{_CAUSE_LINE[g.cause]} {where}".rstrip() + f"; state {state}, "
                 f"{unread} with the error still unread by the program, last data received "
                 f"up to {fmt_ms(idle)} ago")
    return evidence, lines


_CAUSE_LINE = {
    "reset": "reset by the peer (RST)",
    "timeout": "timed out: retransmissions or keepalive probes went unanswered",
    "shutdown": "ended gracefully after shutdown(): our FIN was acknowledged",
    "unconnected": "never connected: no peer address",
}

_CLOSE_NOW = (
    "These sockets are in no TCP table, so only closing the descriptor inside the program "
    "frees them: the relief command injects close() with ptrace, as `gdb -p PID -batch "
    "-ex 'print (int)close(FD)'` would (it stops one thread for a moment; the program may "
    "later reuse the fd number).")


def _texts(g: Group, who: str, n: int) -> tuple[str, str, str]:
    """(title, explanation, fix) for a group's cause."""
    many = plural(n, "connection")
    name = service_name(g.port) if g.side == "client" else ""
    target = f"{g.service} ({name})" if name else g.service
    if g.cause == "reset":
        return (f"{who} keeps {many} to {target} that the peer reset, never close()d "
                "(dead descriptors)",
                f"The peer at {g.service or 'the other end'} (or a load balancer or proxy in "
                "between) reset these connections: a server that closes idle connections "
                "abortively (SO_LINGER 0, or an idle timeout enforced with RST) sends RST "
                f"instead of FIN. {who} never closed the descriptors — typically they sit in "
                "a connection pool that has not noticed, or the error path forgets close() — "
                "so each keeps a file descriptor and kernel memory, and the next request on "
                "one fails with ECONNRESET or EPIPE.",
                "Make the pool retire connections before the server does and check them "
                "before use (pool recycle shorter than the server's idle timeout, pre-ping "
                "or test-on-borrow): " + pool_knobs(g.port) + ". Close the socket on every "
                "error (ECONNRESET, EPIPE, ETIMEDOUT).")
    if g.cause == "timeout":
        return (f"{who} keeps {many} to {target} that timed out, never close()d "
                "(dead descriptors)",
                "The kernel gave up on these connections (unanswered retransmissions or "
                f"keepalive probes: the peer vanished) and reported the error, but {who} "
                "never closed the descriptors.",
                "Close the socket when a call fails with ETIMEDOUT (or any error), and let "
                "the pool discard connections that fail.")
    if g.cause == "unconnected":
        return (f"{who} holds {plural(n, 'TCP socket')} that never connected, never "
                "close()d",
                "These sockets have no peer: created and never connected, or a connect() "
                "that failed on a path that forgets close(). A few for a moment are normal "
                "(a connect in progress).",
                "Close the socket when connect() fails, with `with socket.socket(...)` or "
                "try/finally.")
    where = f" ({'to' if g.side == 'client' else 'on'} {g.service})" if g.service else ""
    return (f"{who} holds {plural(n, 'descriptor')} of TCP sockets that are already closed "
            f"(shut down or reset, never close()d){where}",
            "The connection behind each of these descriptors is over — the program called "
            "shutdown() and the peer closed too, or it was reset or destroyed — but the "
            "program never called close(). shutdown() ends the conversation, not the "
            "descriptor: the file, its kernel socket and memory stay allocated until "
            "close(). A socket created but not yet connected looks the same for a moment, "
            "which is why a few are not alarming.",
            "Always close() after shutdown() (shutdown then close is the right order); "
            "with Python use `with socket.socket(...)` or try/finally, and do not rely on "
            "garbage collection to close sockets.")


def _listening_ports(ctx: Context, pid: int) -> list[int]:
    """The services the process offers: where its dead sockets most likely came from."""
    return sorted({port for (_ns, port), socks in ctx.listeners.items()
                   if any(o.pid == pid for sk in socks for o in sk.owners)})
