"""A report as text for people (most severe first) and as JSON for programs."""

from __future__ import annotations

import textwrap
from typing import Any

import msgspec

from .. import jsontext
from ..errors import BadSnapshotError
from ..words import untrusted
from .finding import Finding, Report
from .text import fmt_ms, plural

_COLORS = {"critical": "\x1b[1;31m", "warning": "\x1b[1;33m", "info": "\x1b[36m"}
_BOLD, _GREEN, _DIM, _RESET = "\x1b[1m", "\x1b[32m", "\x1b[2m", "\x1b[0m"
_INDENT = "    "
_LABEL = 10  # width of "evidence: "


def render_text(report: Report, color: bool = False, width: int = 100) -> str:
    """The report as a person reads it: a header, then each finding, most severe first."""
    paint = _painter(color)
    out = [_header(report), _counts(report, paint), ""]
    for f in report.findings:
        out.extend(_finding(f, paint, width))
        out.append("")
    if report.notes:
        out.append("seen, not (yet) a problem:")
        for note in report.notes:
            out.extend(_wrapped("-", untrusted(note), width, indent="  ", label_width=2))
        out.append("")
    if report.limits:
        out.append(paint(_DIM, "not checked or guessed:"))
        out.extend(paint(_DIM, f"  - {untrusted(line)}") for line in report.limits)
    return "\n".join(out).rstrip() + "\n"


def _painter(color: bool):
    def paint(code: str, text: str) -> str:
        return f"{code}{text}{_RESET}" if color and text else text
    return paint


def _header(report: Report) -> str:
    meta = report.snapshot
    ns = plural(len(meta.namespaces), "network namespace") if meta.namespaces else ""
    parts = [f"{untrusted(meta.hostname)} (kernel {untrusted(meta.kernel)})",
             plural(meta.sockets, "TCP socket")]
    if ns:
        parts.append(ns)
    if meta.interval_s:
        parts.append(f"2 samples {fmt_ms(meta.interval_s * 1000)} apart")
    return "sockdoctor doctor: " + ", ".join(parts)


def _counts(report: Report, paint) -> str:
    s = report.summary
    if not report.findings:
        tail = "nothing stuck yet (see below)" if report.notes else "nothing to report"
        return paint(_COLORS["info"], f"healthy: {tail}")
    # "2 warnings", but "2 critical" and "2 info": those read as adjectives.
    words = [paint(_COLORS[sev], plural(n, sev) if sev == "warning" else f"{n} {sev}")
             for sev, n in
             (("critical", s.critical), ("warning", s.warning), ("info", s.info)) if n]
    verdict = "healthy (information only)" if report.healthy else "problems found"
    return f"{verdict}: " + ", ".join(words)


def _finding(f: Finding, paint, width: int) -> list[str]:
    """One finding; every text in it may quote a process or namespace name, so it is escaped."""
    where = f"  [netns {untrusted(f.netns)}]" if f.netns else ""
    head = (paint(_COLORS[f.severity], f"{f.severity.upper():<8}") + " "
            + paint(_BOLD, f.rule) + "  " + untrusted(f.title) + paint(_DIM, where))
    lines = [head]
    for i, ev in enumerate(f.evidence_lines):
        lines.extend(_wrapped("evidence:" if i == 0 else "", untrusted(ev), width, hang=2))
    lines.extend(_wrapped("why:", untrusted(f.explanation), width))
    lines.extend(_wrapped("fix:", untrusted(f.fix), width))
    if f.relief:
        lines.append(_INDENT + "relieve now: " + paint(_GREEN, untrusted(f.relief)))
    return lines


def _wrapped(label: str, text: str, width: int, hang: int = 0, indent: str = _INDENT,
             label_width: int = _LABEL) -> list[str]:
    if not text:
        return []
    first = indent + f"{label:<{label_width}}"
    rest = indent + " " * (label_width + hang)
    return textwrap.wrap(text, width=max(width, 40), initial_indent=first,
                         subsequent_indent=rest, break_on_hyphens=False,
                         break_long_words=False)


def to_json(report: Report) -> bytes:
    """The report as JSON; text that is not UTF-8 as jsontext documents (docs/json.md)."""
    return jsontext.encode(report)


def from_json(data: bytes | str) -> Report:
    """Decode a report; a corrupt or foreign document is a user error."""
    try:
        return jsontext.decode(data.encode() if isinstance(data, str) else data, Report)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise BadSnapshotError(f"not a sockdoctor report: {exc}") from exc


def json_schema() -> dict[str, Any]:
    """JSON Schema of a report (what `doctor --json` prints)."""
    return msgspec.json.schema(Report)
