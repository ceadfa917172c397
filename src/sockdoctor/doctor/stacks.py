"""`doctor --stacks`: where the owners' threads are, summarised for each finding.

"2 of 2 threads in app (app.py:5)" tells an operator which handler is slow
or stuck without reaching for py-spy, jstack or gdb. The tools' text
(linux/stacks.py fetches it) is parsed here; the frame that counts is the
innermost one in the program's own code, not the runtime's.
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from ..model import Snapshot
from .finding import Report

MAX_PROCESSES = 8  # per finding: a prefork server's first workers tell the story
_STDLIB = frozenset(sys.stdlib_module_names) | {"<frozen importlib._bootstrap>"}
_JVM_PREFIXES = ("java.", "javax.", "jdk.", "sun.", "com.sun.")
_PY_THREAD = re.compile(r'^Thread (\S+) \((\w+)\): "(.*)"')
_JAVA_THREAD = re.compile(r'^"(.*?)" ')
_KERNEL_THREAD = re.compile(r"^Thread (\d+) \((\S+), (.*)\)$")


@dataclass(frozen=True)
class Thread:
    name: str
    frames: tuple[str, ...]  # innermost first
    own: str  # the innermost frame in the program's own code (or the innermost)


class StackText(Protocol):
    """What a fetcher returns (linux.stacks.RawStacks): the tool's text, or why none."""

    source: str  # "py-spy", "jcmd" or "kernel": how to parse `text`
    text: str
    error: str


Fetch = Callable[[int, str], StackText]  # (pid, runtime kind) -> its threads' stacks


def parse(source: str, text: str) -> list[Thread]:
    """Threads from py-spy dump, jcmd Thread.print or the kernel's stacks."""
    blocks: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        head = _thread_name(source, line)
        if head is not None:
            blocks.append((head, []))
        elif blocks and line.strip().startswith("at ") and source == "jcmd":
            blocks[-1][1].append(line.strip()[3:])
        elif blocks and line.startswith("    ") and source != "jcmd":
            blocks[-1][1].append(line.strip())
    threads = [Thread(name, tuple(frames), _own(source, frames))
               for name, frames in blocks if frames or source == "kernel"]
    if source == "jcmd":  # the JVM's own threads (Reference Handler ...) say nothing here
        mine = [t for t in threads if not t.own.startswith(_JVM_PREFIXES)]
        return mine or threads
    return threads


def _thread_name(source: str, line: str) -> str | None:
    if source == "py-spy":
        m = _PY_THREAD.match(line)
        return m.group(3) if m else None
    if source == "jcmd":
        m = _JAVA_THREAD.match(line)
        return m.group(1) if m else None
    m = _KERNEL_THREAD.match(line)
    return f"{m.group(1)} in {m.group(3)}" if m else None


def _own(source: str, frames: list[str]) -> str:
    if source == "kernel":
        return frames[0] if frames else ""
    for frame in frames:
        if source == "jcmd" and not frame.startswith(_JVM_PREFIXES):
            return frame
        if source == "py-spy" and _py_file_root(frame) not in _STDLIB:
            return frame
    return frames[0] if frames else ""


def _py_file_root(frame: str) -> str:
    """'selectors' for 'EpollSelector.select (selectors.py:468)'."""
    where = frame.rpartition(" (")[2].rstrip(")")
    return where.split("/", 1)[0].rsplit(":", 1)[0].removesuffix(".py")


def summary(threads: list[Thread], processes: int) -> str:
    """'2 of 3 threads in app (app.py:5); 1 in ...' (the three largest groups)."""
    if not threads:
        return ""
    places = Counter(t.own or t.name for t in threads)
    parts = []
    for i, (place, n) in enumerate(places.most_common(3)):
        parts.append(f"{n} of {len(threads)} threads in {place}" if i == 0
                     else f"{n} in {place}")
    of = f" of {processes} processes" if processes > 1 else ""
    return "; ".join(parts) + of


def add_stacks(report: Report, snap: Snapshot, fetch: Fetch) -> None:
    """Add each finding's 'threads:' line and per-process stacks (evidence['stacks']).

    `fetch(pid, kind)` returns an object with `source`, `text` and `error`
    (linux.stacks.raw_stacks); each process is asked once.
    """
    seen: dict[int, tuple[list[Thread], str]] = {}
    for f in report.findings:
        pids = [p.pid for p in f.processes][:MAX_PROCESSES]
        if not pids:
            continue
        threads: list[Thread] = []
        errors: set[str] = set()
        for pid in pids:
            if pid not in seen:
                seen[pid] = _one(pid, snap, fetch)
            got, error = seen[pid]
            threads.extend(got)
            if error:
                errors.add(error)
        f.evidence["stacks"] = {str(pid): [[t.name, *t.frames[:5]] for t in seen[pid][0]]
                                for pid in pids}
        line = summary(threads, len(pids))
        f.evidence_lines.append(f"threads: {line}" if line else
                                f"threads: not read ({'; '.join(sorted(errors)) or 'none'})")


def _one(pid: int, snap: Snapshot, fetch: Fetch) -> tuple[list[Thread], str]:
    proc = snap.processes.get(pid)
    kind = proc.runtime.kind if proc is not None and proc.runtime is not None else "native"
    raw = fetch(pid, kind)
    if raw.error:
        return [], raw.error
    return parse(raw.source, raw.text), ""
