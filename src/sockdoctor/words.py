"""The project's vocabulary, on the ground floor: every layer says things the same way.

State names as ss prints them, plurals, endpoints and namespace names are
used by the doctor, the kill core, the watchers and the pytest guard as much
as by the renderers; they live here, below all of them (render/fmt.py
re-exports them for the renderers). Text a process or a file chose goes
through `untrusted` (jsontext.py) before it is printed.
"""

from __future__ import annotations

import socket

from .jsontext import untrusted
from .model import SS_COLUMN_NAMES, Snapshot

__all__ = ["endpoint", "netns_names", "plural", "state_name", "untrusted"]


def plural(n: int, word: str, many: str | None = None) -> str:
    """'1 TCP socket', '2 TCP sockets'."""
    return f"{n} {word if n == 1 else (many or word + 's')}"


def endpoint(addr: str, port: int, family: int, *, peer: bool = False) -> str:
    """`10.0.0.1:80`, `[::1]:80`, `0.0.0.0:*` the way ss prints them.

    An address read from a snapshot is checked on load (snapshot_io), and
    escaped here all the same: whatever is printed, a file chose.
    """
    port_text = "*" if port == 0 and peer else str(port)
    if not addr.isprintable():
        addr = untrusted(addr)
    if family == socket.AF_INET6:
        return f"[{addr}]:{port_text}"
    return f"{addr}:{port_text}"


def state_name(state: int) -> str:
    return SS_COLUMN_NAMES.get(state, f"STATE-{state}")


def netns_names(snapshot: Snapshot) -> dict[int, str]:
    return {ns.inode: ns.name for ns in snapshot.namespaces}
