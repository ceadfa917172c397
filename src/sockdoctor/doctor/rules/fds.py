"""fd-pressure and dead-socket-fds: descriptors running out, and descriptors of dead sockets."""

from __future__ import annotations

from collections import defaultdict

from ...model import DeadSocketFd, TcpState
from ..context import Context
from ..finding import Finding, Severity
from ..text import plural


def check(ctx: Context) -> list[Finding]:
    out = [f for pid in sorted(ctx.snap.processes) if (f := _process(ctx, pid)) is not None]
    host = _host_files(ctx)
    if host is not None:
        out.append(host)
    out.extend(_dead(ctx))
    return out


def _ratio_severity(ctx: Context, ratio: float) -> Severity | None:
    if ratio >= ctx.cfg.fd_critical_ratio:
        return "critical"
    return "warning" if ratio >= ctx.cfg.fd_warn_ratio else None


def _process(ctx: Context, pid: int) -> Finding | None:
    proc = ctx.snap.processes[pid]
    if proc.fd_limit <= 0 or proc.fd_count < ctx.cfg.fd_min:
        return None
    ratio = proc.fd_count / proc.fd_limit
    sev = _ratio_severity(ctx, ratio)
    if sev is None:
        return None
    states = {TcpState(s).ss_name: n for s, n in sorted(ctx.owned_states(pid).items())}
    close_wait = states.get("CLOSE-WAIT", 0)
    dead = sum(1 for d in ctx.snap.dead_fds if d.pid == pid) if _judgeable(ctx, pid) else 0
    lines = [f"{proc.fd_count} of {proc.fd_limit} descriptors open ({ratio:.0%}, "
             "RLIMIT_NOFILE soft limit)",
             "TCP sockets held: " + (", ".join(f"{s} {n}" for s, n in states.items())
                                     or "none"),
             f"{dead} descriptors of dead TCP sockets"]
    evidence = {"fd_count": proc.fd_count, "fd_limit": proc.fd_limit,
                "ratio": round(ratio, 3), "tcp_sockets": states, "dead_socket_fds": dead}
    prev = ctx.prev.processes.get(pid) if ctx.prev is not None else None
    if prev is not None and prev.comm == proc.comm:
        evidence["fd_growth"] = proc.fd_count - prev.fd_count
        lines.append(f"{proc.fd_count - prev.fd_count:+d} descriptors since the previous "
                     "sample")
    relief, argv = ("", [])
    if close_wait:
        relief, argv = ctx.kill(proc.netns or _netns_of(ctx, pid), ["close-wait"], pid=pid,
                                older_than_ms=ctx.cfg.stuck_age_ms)
    who = ctx.label(pid)
    return Finding(
        rule="fd-pressure", severity=sev,
        title=f"{who} uses {ratio:.0%} of its descriptor limit ({proc.fd_count}/"
              f"{proc.fd_limit})",
        netns=ctx.ns_name(proc.netns) if proc.netns else "", netns_inode=proc.netns,
        processes=ctx.refs([pid]), sockets=sum(states.values()), evidence=evidence,
        evidence_lines=lines,
        explanation=(
            f"When {who} reaches its limit, accept() and socket() fail with EMFILE (\"Too "
            "many open files\"): a server stops taking connections while its listener's "
            "queue fills, a client cannot connect. Leaked sockets (CLOSE-WAIT, dead "
            "descriptors) are the usual reason a limit that used to suffice no longer does."),
        fix=("First stop the leak (see never-closed and dead-socket-fds findings for this "
             f"process). For headroom now: `prlimit --pid {pid} --nofile=N:N`; for good: "
             "LimitNOFILE= in the systemd unit, `ulimit -n` in the start script, or nofile "
             "in /etc/security/limits.conf."),
        relief=relief, relief_argv=argv)


def _netns_of(ctx: Context, pid: int) -> int:
    for sk in ctx.snap.sockets:
        if any(o.pid == pid for o in sk.owners):
            return sk.netns
    return 0


def _host_files(ctx: Context) -> Finding | None:
    """fs.file-nr: allocated file handles against fs.file-max, host-wide."""
    try:
        allocated, _, maximum = (int(x) for x in ctx.snap.sysctls["fs.file-nr"].split())
    except (KeyError, ValueError):
        return None
    if maximum <= 0:
        return None
    ratio = allocated / maximum
    sev = _ratio_severity(ctx, ratio)
    if sev is None:
        return None
    return Finding(
        rule="fd-pressure", severity=sev,
        title=f"the host has {ratio:.0%} of its file handles allocated ({allocated}/{maximum})",
        sockets=0, evidence={"allocated": allocated, "file_max": maximum,
                             "ratio": round(ratio, 3)},
        evidence_lines=[f"fs.file-nr: {allocated} allocated, fs.file-max {maximum}"],
        explanation=("When fs.file-max is reached every process gets ENFILE on open(), "
                     "socket() and accept(): the whole host stops taking connections."),
        fix=("Find the processes with the most descriptors (leaks first); raise fs.file-max "
             "(sysctl -w fs.file-max=N, and in /etc/sysctl.d/) only once the leak is fixed."))


def _judgeable(ctx: Context, pid: int) -> bool:
    """Only a process living in a scanned namespace can be told to hold dead sockets.

    Its other sockets may sit in namespaces this scan did not dump, where they
    are alive; a process we know nothing about cannot be judged either.
    """
    proc = ctx.process(pid)
    if proc is None or not proc.netns:
        return False
    ns = ctx.snap.netns(proc.netns)
    return ns is not None and not ns.error


def _dead(ctx: Context) -> list[Finding]:
    by_pid: dict[int, list[DeadSocketFd]] = defaultdict(list)
    for d in ctx.snap.dead_fds:
        if _judgeable(ctx, d.pid):
            by_pid[d.pid].append(d)
    before = {(d.pid, d.fd, d.inode) for d in ctx.prev.dead_fds} if ctx.prev else set()
    out = []
    for pid, fds in sorted(by_pid.items()):
        persisted = sum(1 for d in fds if (d.pid, d.fd, d.inode) in before)
        sev = _dead_severity(ctx, len(fds), persisted)
        if sev is not None:
            out.append(_dead_finding(ctx, pid, fds, persisted, sev))
    return out


def _dead_severity(ctx: Context, n: int, persisted: int) -> Severity | None:
    cfg = ctx.cfg
    if n >= cfg.dead_fd_critical:
        return "critical"
    if n >= cfg.dead_fd_warn or persisted >= cfg.dead_fd_persisted_warn:
        return "warning"
    return "info" if n >= 2 or persisted else None


def _dead_finding(ctx: Context, pid: int, fds: list[DeadSocketFd], persisted: int,
                  sev: Severity) -> Finding:
    who = ctx.label(pid)
    proc = ctx.process(pid)
    numbers = sorted(d.fd for d in fds)
    shown = ", ".join(str(n) for n in numbers[:10]) + (" ..." if len(numbers) > 10 else "")
    lines = [f"{plural(len(fds), 'descriptor')} of {who} point at TCP sockets found in no "
             f"TCP table: fds {shown}"]
    evidence = {"count": len(fds), "fds": numbers[:50], "inodes": [d.inode for d in fds][:50]}
    if ctx.prev is not None:
        evidence["persisted"] = persisted
        lines.append(f"{persisted} of them were already dead in the previous sample")
    netns = proc.netns if proc else 0
    relief, argv = ctx.kill(netns or _netns_of(ctx, pid), [], pid=pid, words=["--dead-fds"])
    return Finding(
        rule="dead-socket-fds", severity=sev,
        title=f"{who} holds {plural(len(fds), 'descriptor')} of TCP sockets that are "
              "already closed (shut down or reset, never close()d)",
        netns=ctx.ns_name(netns) if netns else "", netns_inode=netns,
        processes=ctx.refs([pid]), ports=_listening_ports(ctx, pid), sockets=len(fds),
        evidence=evidence, evidence_lines=lines,
        explanation=(
            "The connection behind each of these descriptors is over — the program called "
            "shutdown() and the peer closed too, or it was reset or destroyed — but the "
            "program never called close(). shutdown() ends the conversation, not the "
            "descriptor: the file, its kernel socket and memory stay allocated until "
            "close(). A socket created but not yet connected looks the same for a moment, "
            "which is why a few are not alarming."),
        fix=("Always close() after shutdown() (shutdown then close is the right order); "
             "with Python use `with socket.socket(...)` or try/finally, and do not rely on "
             "garbage collection to close sockets. These sockets are in no TCP table, so "
             "only closing the descriptor inside the program frees them: the relief command "
             "injects close() with ptrace, as `gdb -p PID -batch -ex 'print (int)close(FD)'` "
             "would (it stops one thread for a moment; the program may later reuse the fd "
             "number)."),
        relief=relief, relief_argv=argv)


def _listening_ports(ctx: Context, pid: int) -> list[int]:
    """The services the process offers: where its dead sockets most likely came from."""
    return sorted({port for (_ns, port), socks in ctx.listeners.items()
                   if any(o.pid == pid for sk in socks for o in sk.owners)})
