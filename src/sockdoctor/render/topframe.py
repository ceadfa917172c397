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
    total = len(snap.sockets) if snap is not None else 0
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


def finding_lines(model: TopModel, limit: int = 6) -> list[tuple[str, str]]:
    """(style, text) lines of the findings pane."""
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


def render(model: TopModel, refresh_s: float, limit: int = 40) -> Any:
    """The frame as one rich renderable."""
    from rich.console import Group as RichGroup
    from rich.table import Table
    from rich.text import Text

    table = Table(box=None, pad_edge=False, header_style="bold")
    for name in COLUMNS:
        table.add_column(name, justify="right" if name in RIGHT else "left", no_wrap=True)
    for g in model.groups[:limit]:
        table.add_row(*cells(g))
    more = len(model.groups) - limit
    parts: list[Any] = [Text(status(model, refresh_s), style="bold"), Text(""), table]
    if more > 0:
        parts.append(Text(f"... {more} more groups", style="dim"))
    parts.append(Text(""))
    parts.extend(Text(text, style=style) for style, text in finding_lines(model))
    return RichGroup(*parts)


def print_frame(model: TopModel, refresh_s: float, out: IO[str], width: int | None = None
                ) -> None:
    from rich.console import Console

    console = Console(file=out, width=width or 160, highlight=False, soft_wrap=False,
                      color_system="auto" if out.isatty() else None)
    console.print(render(model, refresh_s))
