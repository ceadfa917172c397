"""fd-pressure: descriptors running out, per process and host-wide."""

from __future__ import annotations

from ...model import TcpState
from ..context import Context
from ..finding import Finding, Severity
from .deadfds import judgeable


def check(ctx: Context) -> list[Finding]:
    out = [f for pid in sorted(ctx.snap.processes) if (f := _process(ctx, pid)) is not None]
    host = _host_files(ctx)
    if host is not None:
        out.append(host)
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
    dead = sum(1 for d in ctx.snap.dead_fds if d.pid == pid) if judgeable(ctx, pid) else 0
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
        relief, argv = ctx.kill(proc.netns or _netns_of(ctx, pid), ["close-wait"], pids=[pid],
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
