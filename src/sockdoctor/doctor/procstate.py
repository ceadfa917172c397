"""What a process is doing, from its state letter and its threads' wait channels.

Used to tell "nobody calls accept()" (idle in epoll_wait, stopped, gone) from
"accept() is called, but too slowly" (busy handling requests).
"""

from __future__ import annotations

from collections import Counter

from ..model import Process, ThreadInfo

# Waiting for events on many fds: a program idling in its event loop.
POLL_SYSCALLS = frozenset({"epoll_wait", "epoll_pwait", "epoll_pwait2", "poll", "ppoll",
                           "select", "pselect6"})
POLL_WCHANS = frozenset({"ep_poll", "do_epoll_wait", "do_select", "core_sys_select",
                         "do_sys_poll", "do_poll"})
ACCEPT_SYSCALLS = frozenset({"accept", "accept4"})
ACCEPT_WCHANS = frozenset({"inet_csk_accept", "inet_csk_wait_for_connect"})

STATE_NAMES = {"R": "running", "S": "sleeping", "D": "in uninterruptible wait",
               "T": "stopped", "t": "stopped by a debugger", "Z": "zombie", "X": "dead",
               "I": "idle"}

# Activities, from "certainly not accepting" to "busy".
GONE, ZOMBIE, STOPPED, IDLE, UNKNOWN, ACCEPTING, BUSY = (
    "gone", "zombie", "stopped", "idle", "unknown", "accepting", "busy")
NOT_ACCEPTING = frozenset({GONE, ZOMBIE, STOPPED, IDLE, UNKNOWN})


def thread_doing(t: ThreadInfo) -> str:
    """One word for what a thread is doing: a syscall name, 'running', or a wait channel."""
    if t.state == "R" or t.syscall == "running":
        return "running"
    if t.syscall:
        return t.syscall
    return t.wchan or STATE_NAMES.get(t.state, t.state or "?")


def thread_kind(t: ThreadInfo) -> str:
    if t.state in ("T", "t"):
        return STOPPED
    if t.state == "Z":
        return ZOMBIE
    if t.state == "R" or t.syscall == "running":
        return BUSY
    if t.syscall in ACCEPT_SYSCALLS or t.wchan in ACCEPT_WCHANS:
        return ACCEPTING
    if t.syscall in POLL_SYSCALLS or t.wchan in POLL_WCHANS:
        return IDLE
    # Waiting on a lock or condition: not serving anything either.
    if t.syscall == "futex" or t.wchan.startswith("futex"):
        return IDLE
    if not t.syscall and not t.wchan:
        return UNKNOWN
    return BUSY


def activity(proc: Process | None) -> str:
    """How a process relates to accepting connections, as one of the constants above."""
    if proc is None:
        return GONE
    if proc.state in ("Z", "X"):
        return ZOMBIE
    if proc.state in ("T", "t"):
        return STOPPED
    if not proc.threads:
        return BUSY if proc.state in ("R", "D") else UNKNOWN
    kinds = {thread_kind(t) for t in proc.threads}
    for kind in (ACCEPTING, BUSY, UNKNOWN, IDLE, STOPPED):
        if kind in kinds:
            return kind
    return ZOMBIE


def combined_activity(procs: list[Process | None]) -> str:
    """Several processes share a listener (prefork): any busy one keeps it moving."""
    if not procs:
        return GONE
    kinds = [activity(p) for p in procs]
    for kind in (ACCEPTING, BUSY, UNKNOWN, IDLE, STOPPED, ZOMBIE):
        if kind in kinds:
            return kind
    return GONE


def threads_summary(proc: Process) -> str:
    """'3 threads: 2 in epoll_wait, 1 running' (state letters when threads are unknown)."""
    state = STATE_NAMES.get(proc.state, proc.state or "?")
    if not proc.threads:
        return f"{state} (thread states not collected)"
    counts = Counter(thread_doing(t) for t in proc.threads)
    parts = [f"{n} in {what}" if what != "running" else f"{n} running"
             for what, n in counts.most_common(4)]
    rest = len(proc.threads) - sum(n for _, n in counts.most_common(4))
    if rest:
        parts.append(f"{rest} other")
    n = len(proc.threads)
    return f"{state}, {n} thread{'s' if n != 1 else ''}: " + ", ".join(parts)


def thread_lines(proc: Process, limit: int = 6) -> list[str]:
    """One line per thread: tid, state, syscall, wait channel."""
    lines = []
    for t in (proc.threads or [])[:limit]:
        detail = " ".join(x for x in (t.syscall, f"({t.wchan})" if t.wchan else "") if x)
        lines.append(f"thread {t.tid} [{t.state}] {detail or '?'}")
    extra = len(proc.threads or []) - limit
    if extra > 0:
        lines.append(f"... {extra} more threads")
    return lines
