"""Small formatting helpers shared by the rules and the renderer."""

from __future__ import annotations

import shlex
from collections import Counter
from collections.abc import Iterable

from ..words import plural

__all__ = ["command", "duration_arg", "endpoint", "fmt_ms", "host", "plural", "top", "top_line"]


def fmt_ms(ms: int | float | None) -> str:
    """1234567 -> '20m34s'; None -> '?'."""
    if ms is None:
        return "?"
    if ms < 1000:
        return f"{int(ms)}ms"
    s = int(ms // 1000)
    if s < 60:
        return f"{s}s"
    m, s = divmod(s, 60)
    if m < 60:
        return f"{m}m{s:02d}s" if s else f"{m}m"
    h, m = divmod(m, 60)
    if h < 48:
        return f"{h}h{m:02d}m" if m else f"{h}h"
    d, h = divmod(h, 24)
    return f"{d}d{h}h" if h else f"{d}d"


def duration_arg(ms: int) -> str:
    """A value `--older-than` accepts: whole minutes as '10m', else seconds."""
    if ms % 60_000 == 0:
        return f"{ms // 60_000}m"
    return f"{max(1, ms // 1000)}s"


def host(addr: str) -> str:
    """IPv6 addresses in brackets, as ss writes them next to a port."""
    return f"[{addr}]" if ":" in addr else addr


def endpoint(addr: str, port: int) -> str:
    return f"{host(addr)}:{port}"


def top(items: Iterable[str], limit: int = 5) -> dict[str, int]:
    """The most common values with their counts, most common first."""
    return dict(Counter(items).most_common(limit))


def top_line(counts: dict[str, int], total: int) -> str:
    shown = ", ".join(f"{k} ×{v}" for k, v in counts.items())
    rest = total - sum(counts.values())
    return f"{shown}, +{rest} more" if rest > 0 else shown


def command(argv: list[str]) -> str:
    return shlex.join(argv)
