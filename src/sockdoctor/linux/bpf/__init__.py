"""The optional kernel engine: BPF iterators, loaded with libbpf (see docs/design.md).

Programs (C beside this file, built by clang at install time into
`<name>.bpf.o`) walk kernel tables in one pass and emit fixed-size records:
owners.bpf.c (iter/task_file: socket descriptors of every process), destroy
and keepalive (iter/tcp: act on planned sockets only). The /proc and
sock_diag paths stay the reference and the fallback: when the engine is off
or cannot load (no BTF, no libbpf, no clang at build time, no CAP_BPF and
CAP_PERFMON, an older kernel), every caller gets None and does what it
did before.

SOCKDOCTOR_ENGINE chooses: "bpf" (the default when it loads), "c" (the C
extension, no BPF) or "pure" (pure Python, like SOCKDOCTOR_PURE=1).
"""

from __future__ import annotations

import os
from functools import cache

from . import libbpf
from .libbpf import BpfError, BpfObject

__all__ = ["BpfError", "BpfObject", "available", "describe", "requested", "wanted"]

ENGINES = ("bpf", "c", "pure")
BTF = "/sys/kernel/btf/vmlinux"


def requested() -> str:
    """The engine asked for in the environment, or "" for the automatic choice."""
    value = os.environ.get("SOCKDOCTOR_ENGINE", "").strip().lower()
    if value in ENGINES:
        return value
    if os.environ.get("SOCKDOCTOR_PURE", "") not in ("", "0"):
        return "pure"
    return ""


def wanted() -> bool:
    return requested() in ("", "bpf")


@cache
def _probe() -> str:
    """"" if the engine works here (its owners program loads and is verified), else why not."""
    if not os.path.exists(BTF):
        return f"the kernel has no BTF ({BTF})"
    if not (libbpf.HERE / "owners.bpf.o").exists():
        return "its programs were not built (no clang at install time?)"
    try:
        libbpf.lib()
    except OSError:
        return "libbpf (libbpf.so.1) is not installed"
    try:
        BpfObject("owners").close()
    except BpfError as exc:
        if exc.errno in (1, 13):
            return "loading BPF programs needs CAP_BPF and CAP_PERFMON (root)"
        return f"the kernel refused its programs ({exc.strerror})"
    return ""


def why_not() -> str:
    """Why the engine is not in use ("" if it is)."""
    if not wanted():
        return f"off (SOCKDOCTOR_ENGINE={requested()})"
    return _probe()


def available() -> bool:
    """Whether callers should use the engine: wanted, and it loads here."""
    return not why_not()


def describe() -> str:
    """One line for `sockdoctor --version`."""
    reason = why_not()
    if not reason:
        from .owners import in_initial_pid_namespace  # owners imports this package

        line = f"kernel engine: BPF iterators (libbpf {libbpf.version()}), in use"
        if not in_initial_pid_namespace():  # the program's PIDs are the kernel's, not ours
            line += "; owners from /proc (not the initial PID namespace)"
        return line
    return f"kernel engine: BPF not in use: {reason}"
