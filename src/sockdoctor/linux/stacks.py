"""Where a process's threads are: the raw text of the tool that can tell, per runtime.

`doctor --stacks` (opt-in: these tools briefly attach to the process):
- Python: `py-spy dump --pid PID` (PyPI's py-spy; it pauses the process
  while it reads the stacks, a few milliseconds);
- Java: `jcmd PID Thread.print` (a JDK's jcmd; the JVM prints at a safepoint);
- anything else: each thread's kernel stack, /proc/PID/task/TID/stack (root),
  and its current syscall.
The text is parsed by doctor/stacks.py, which knows nothing of processes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass

from . import procfs
from .procfs import thread_states

TOOL_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class RawStacks:
    """What one tool printed for one process (or why nothing could be had)."""

    source: str  # "py-spy", "jcmd", "kernel"
    text: str = ""
    error: str = ""


def raw_stacks(pid: int, kind: str) -> RawStacks:
    """The stacks of a process whose runtime kind is known (model.Runtime.kind)."""
    if kind == "python":
        return _tool("py-spy", [_py_spy(), "dump", "--pid", str(pid)])
    if kind == "java":
        jcmd = _jcmd(pid)
        if jcmd is not None:
            return _tool("jcmd", [jcmd, str(pid), "Thread.print"])
    return RawStacks("kernel", text=_kernel_stacks(pid))


def _py_spy() -> str:
    """py-spy beside this interpreter (a venv's bin/), else on PATH."""
    here = os.path.join(os.path.dirname(sys.executable), "py-spy")
    return here if os.access(here, os.X_OK) else shutil.which("py-spy") or "py-spy"


def _jcmd(pid: int) -> str | None:
    """The jcmd of the JVM itself (its java's directory), else one on PATH."""
    try:
        exe = os.readlink(f"{procfs.PROC}/{pid}/exe")
    except OSError:
        exe = ""
    beside = os.path.join(os.path.dirname(exe), "jcmd")
    return beside if exe and os.access(beside, os.X_OK) else shutil.which("jcmd")


def _tool(source: str, argv: list[str]) -> RawStacks:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, errors="replace",
                              timeout=TOOL_TIMEOUT_S, check=False)
    except FileNotFoundError:
        return RawStacks(source, error=f"{source} is not installed")
    except subprocess.TimeoutExpired:
        return RawStacks(source, error=f"{source} did not answer within {TOOL_TIMEOUT_S:g}s")
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        return RawStacks(source, error=f"{source} failed: {last[:200]}")
    return RawStacks(source, text=done.stdout)


def _kernel_stacks(pid: int) -> str:
    """'Thread TID (state, syscall)' then its kernel frames, innermost first, per thread."""
    out = []
    for t in thread_states(pid):
        out.append(f"Thread {t.tid} ({t.state}, {t.syscall or t.wchan or '?'})")
        try:
            with open(f"{procfs.PROC}/{pid}/task/{t.tid}/stack", encoding="utf-8",
                      errors="replace") as f:
                frames = [line.split("] ", 1)[-1].split("+", 1)[0] for line in f]
        except OSError:
            frames = []
        out.extend(f"    {frame}" for frame in frames[:8])
    return "\n".join(out)
