"""One frame of `top`, drawn with rich: the status line, the groups, the findings.

`top --once` (and `top` without a terminal) prints this and exits; the
full-screen app (topapp.py) shows the same cells, live.
"""

from __future__ import annotations

import time
from typing import IO, Any

from ..watch.top import Group, TopModel
from . import fmt

COLUMNS = ("COUNT", "+LAST", "+START", "STATE", "PROCESS", "SERVICE", "OLDEST", "RECV-Q",
           "NETNS")
RIGHT = {"COUNT", "+LAST", "+START", "OLDEST", "RECV-Q"}
SEVERITY_STYLE = {"critical": "bold red", "warning": "yellow", "info": "cyan"}

# Every key of the full-screen app, as its help screen (?, h, F1) lists them.
KEYS = (
    ("? h F1", "this help (Esc, q or ? closes it)"),
    ("Enter", "the sockets of the selected group (Esc or q goes back)"),
    ("↑ ↓ PgUp PgDn", "move the selection"),
    ("c", "sort by count"),
    ("g", "sort by growth since start (or since the filter changed)"),
    ("a", "sort by the oldest socket's age (listeners have none)"),
    ("/ f", "edit the filter (ss syntax; empty clears; Esc cancels)"),
    ("r", "show the command relieving the group (never run)"),
    ("d", "hide or show the doctor's findings"),
    ("q", "quit (relief commands shown are printed again)"),
)

# When the screen is too narrow for every column, these steps apply in order
# until the table fits (docs/watch.md): hide +START, hide RECV-Q, shrink NETNS,
# PROCESS and SERVICE (to these widths, the middle of the text elided), hide +LAST.
_NARROWING = (("hide", "+START", 0), ("hide", "RECV-Q", 0), ("shrink", "NETNS", 12),
              ("shrink", "PROCESS", 14), ("shrink", "SERVICE", 16), ("hide", "+LAST", 0))
GAP = 2  # what a column costs beside its text: a space on each side


def fit(width: int, rows: list[tuple[str, ...]]) -> dict[str, int]:
    """The columns shown at this width, each with the width its cells get, in order."""
    shown = {name: max([len(name), *(len(r[i]) for r in rows)])
             for i, name in enumerate(COLUMNS)}
    for step, name, least in _NARROWING:
        excess = sum(w + GAP for w in shown.values()) - width
        if excess <= 0:
            break
        if step == "hide":
            del shown[name]
        else:
            shown[name] = max(least, len(name), shown[name] - excess)
    return shown


def elide(text: str, width: int) -> str:
    """`text` cut to `width` with its middle replaced by "…" (both ends tell names apart)."""
    if len(text) <= width:
        return text
    tail = width // 2
    return text[:width - 1 - tail] + "…" + (text[-tail:] if tail else "")


def fitted(rows: list[tuple[str, ...]], widths: dict[str, int]) -> list[tuple[str, ...]]:
    """The rows with only the shown columns, each cell elided to its column's width."""
    index = [(COLUMNS.index(name), w) for name, w in widths.items()]
    return [tuple(elide(r[i], w) for i, w in index) for r in rows]


def cells(g: Group) -> tuple[str, ...]:
    return (str(g.count), _signed(g.delta), _signed(g.growth), g.state_name, g.process,
            fmt.untrusted(g.service), fmt.duration(g.oldest_ms), str(g.recv_q),
            fmt.untrusted(g.netns_name))


def _signed(n: int) -> str:
    return f"+{n}" if n > 0 else str(n) if n else "0"


def status(model: TopModel, refresh_s: float) -> str:
    sample = model.sample
    if sample is None:
        return "sockdoctor top: taking the first sample..."
    snap = sample.snapshot
    total = 0 if snap is None else sample.sockets() if hasattr(sample, "sockets") \
        else len(snap.sockets)  # Sample.sockets(): those counted in the kernel too
    shown = sum(g.count for g in model.groups)
    when = time.strftime("%H:%M:%S", time.localtime(sample.started))
    parts = [f"sockdoctor top  {snap.hostname if snap else ''}  {when}",
             fmt.plural(total, "TCP socket") + (f", {shown} shown" if shown != total else ""),
             f"sample {sample.duration_s:.2f}s (cpu {sample.cpu_s:.2f}s) every {refresh_s:g}s",
             f"sort: {model.sort}"]
    if model.filter_text:
        parts.append(f"filter: {model.filter_text}")
    if getattr(sample, "error", ""):
        parts.append(f"last sample failed: {sample.error}")
    return "  |  ".join(parts)


def finding_lines(model: TopModel, limit: int = 6, max_lines: int | None = None
                  ) -> list[tuple[str, str]]:
    """(style, text) lines of the findings pane, at most `max_lines` of them."""
    lines = _finding_lines(model, limit)
    if max_lines is None or len(lines) <= max_lines:
        return lines
    shown = lines[:max(0, max_lines - 1)]
    hidden = len(model.findings) - sum(1 for _, text in shown if not text.startswith(" "))
    return [*shown, ("dim", f"... {hidden} more (d hides this pane; `sockdoctor doctor` "
                            "lists them all)")]


def _finding_lines(model: TopModel, limit: int) -> list[tuple[str, str]]:
    findings = model.findings
    if model.sample is not None and model.sample.report is None:
        return [("dim", "findings: the doctor has not run yet")]
    if not findings:
        return [("green", "findings: none, healthy")]
    out = []
    for f in findings[:limit]:
        out.append((SEVERITY_STYLE.get(f.severity, ""),
                    f"{f.severity.upper():8} {f.rule:14} {fmt.untrusted(f.title)}"))
        if f.relief:
            out.append(("dim", f"{'':24}relieve: {f.relief}"))
    if len(findings) > limit:
        out.append(("dim", f"... {len(findings) - limit} more (sockdoctor doctor)"))
    return out


def render(model: TopModel, refresh_s: float, limit: int = 40, width: int = 160) -> Any:
    """The frame as one rich renderable."""
    from rich.console import Group as RichGroup
    from rich.table import Table
    from rich.text import Text

    table = Table(box=None, pad_edge=False, header_style="bold")
    rows = [cells(g) for g in model.groups[:limit]]
    widths = fit(width + GAP, rows)  # no padding at the table's two edges
    for name in widths:
        table.add_column(name, justify="right" if name in RIGHT else "left", no_wrap=True)
    for row in fitted(rows, widths):
        table.add_row(*row)
    more = len(model.groups) - limit
    parts: list[Any] = [Text(status(model, refresh_s), style="bold", no_wrap=True,
                             overflow="ellipsis"), Text(""), table]
    if more > 0:
        parts.append(Text(f"... {more} more groups", style="dim"))
    parts.append(Text(""))
    # (the findings wrap: a printed frame keeps every relief command whole)
    parts.extend(Text(text, style=style) for style, text in finding_lines(model))
    return RichGroup(*parts)


def print_frame(model: TopModel, refresh_s: float, out: IO[str], width: int | None = None
                ) -> None:
    from rich.console import Console

    console = Console(file=out, width=width or 160, highlight=False, soft_wrap=False,
                      color_system="auto" if out.isatty() else None)
    console.print(render(model, refresh_s, width=console.width))
