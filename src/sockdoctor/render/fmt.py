"""Formatting helpers of the renderers (durations, ss timers, users:(...)); the vocabulary
they share with the rest of the package (plurals, state names, endpoints) is words.py."""

from __future__ import annotations

from ..jsontext import untrusted
from ..model import Process, Snapshot, Socket
from ..words import endpoint, netns_names, plural, state_name

__all__ = ["duration", "endpoint", "netns_names", "plural", "shown_comms",
           "shown_netns_names", "ss_timer", "state_name", "untrusted", "users"]

def duration(ms: int | None) -> str:
    """Compact human duration: 850ms, 42s, 7m12s, 3h05m, 2d04h."""
    if ms is None:
        return "-"
    if ms < 1000:
        return f"{ms}ms"
    s = ms // 1000
    if s < 60:
        return f"{s}s"
    m, s = divmod(s, 60)
    if m < 60:
        return f"{m}m{s:02d}s"
    h, m = divmod(m, 60)
    if h < 24:
        return f"{h}h{m:02d}m"
    d, h = divmod(h, 24)
    return f"{d}d{h:02d}h"


def ss_timer(ms: int) -> str:
    """Timer expiry the way ss (iproute2 >= 6.11) prints it inside timer:(...).

    Precision drops as the value grows: 840ms, 5.624sec, 57sec, 2min30sec, 119min.
    Zero prints as nothing, as in ss.
    """
    minutes, rest = divmod(ms, 60_000)
    secs, msecs = divmod(rest, 1000)
    text = ""
    if minutes:
        text, msecs = f"{minutes}min", 0
        if minutes > 9:
            secs = 0
    if secs:
        if secs > 9:
            msecs = 0
        text += f"{secs}." if msecs else f"{secs}sec"
    if msecs:
        text += f"{msecs:03d}sec" if secs else f"{msecs:03d}ms"
    return text


def users(sk: Socket, comms: dict[int, str]) -> str:
    """`users:(("nginx",pid=1,fd=6),("nginx",pid=2,fd=6))` like ss -p.

    `comms`: pid -> process name already escaped (shown_comms()).
    """
    owners = sk.owners
    if not owners:
        return ""
    if len(owners) == 1:  # nearly always: one f-string, no list
        o = owners[0]
        return f'users:(("{comms.get(o.pid, "?")}",pid={o.pid},fd={o.fd}))'
    parts = [f'("{comms.get(o.pid, "?")}",pid={o.pid},fd={o.fd})' for o in owners]
    return "users:(" + ",".join(parts) + ")"


def shown_comms(processes: dict[int, Process]) -> dict[int, str]:
    """pid -> process name, escaped for the terminal (once per process, not per socket)."""
    return {pid: untrusted(p.comm) for pid, p in processes.items()}


def shown_netns_names(snapshot: Snapshot) -> dict[int, str]:
    """inode -> namespace name, escaped for the terminal."""
    return {ns.inode: untrusted(ns.name) for ns in snapshot.namespaces}
