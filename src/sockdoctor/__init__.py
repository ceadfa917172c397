"""sockdoctor: find, explain and remove stuck TCP connections on a live Linux host.

The Python API mirrors the command line:

    import sockdoctor
    snap = sockdoctor.scan("state close-wait", owners=True)   # like `sockdoctor ls -p`
    ages = sockdoctor.ScanOptions(age=True)
    report = sockdoctor.diagnose(sockdoctor.scan(options=ages, evidence=True))  # `doctor`
    plan = sockdoctor.plan_kill(snap, host=sockdoctor.host_facts())  # `sockdoctor kill`
    report = sockdoctor.apply_plan(plan)                              # ... --yes
    with sockdoctor.guard():  # fails code that leaks TCP sockets (also a pytest plugin)
        ...

Attributes are imported on first use so that `import sockdoctor` stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what the lazy __getattr__ below hands out, for type checkers
    from .doctor import diagnose
    from .errors import (
        BadSnapshotError,
        FilterSyntaxError,
        NotFoundError,
        PermissionDeniedError,
        SockdoctorError,
        UnsupportedError,
        UsageError,
        WriteError,
    )
    from .inventory import Scanner, ScanOptions, scan
    from .leakguard import Guard, SocketLeakError, SocketLeakWarning, guard
    from .model import Snapshot, Socket, TcpState
    from .query import Query
    from .remedy import KillPolicy, apply_plan, host_facts, kill, plan_kill, scan_for_kill
    from .snapshot_io import load as load_snapshot
    from .snapshot_io import save as save_snapshot
    from .watch.sampler import Sampler

__version__ = "0.1.0"

_EXPORTS: dict[str, tuple[str, str]] = {
    "scan": ("sockdoctor.inventory", "scan"),
    "Scanner": ("sockdoctor.inventory", "Scanner"),
    "ScanOptions": ("sockdoctor.inventory", "ScanOptions"),
    "Query": ("sockdoctor.query", "Query"),
    "Snapshot": ("sockdoctor.model", "Snapshot"),
    "Socket": ("sockdoctor.model", "Socket"),
    "TcpState": ("sockdoctor.model", "TcpState"),
    "diagnose": ("sockdoctor.doctor", "diagnose"),
    "kill": ("sockdoctor.remedy", "kill"),
    "KillPolicy": ("sockdoctor.remedy", "KillPolicy"),
    "plan_kill": ("sockdoctor.remedy", "plan_kill"),
    "apply_plan": ("sockdoctor.remedy", "apply_plan"),
    "host_facts": ("sockdoctor.remedy", "host_facts"),
    "scan_for_kill": ("sockdoctor.remedy", "scan_for_kill"),
    "load_snapshot": ("sockdoctor.snapshot_io", "load"),
    "save_snapshot": ("sockdoctor.snapshot_io", "save"),
    "guard": ("sockdoctor.leakguard", "guard"),
    "Guard": ("sockdoctor.leakguard", "Guard"),
    "SocketLeakError": ("sockdoctor.leakguard", "SocketLeakError"),
    "SocketLeakWarning": ("sockdoctor.leakguard", "SocketLeakWarning"),
    "Sampler": ("sockdoctor.watch.sampler", "Sampler"),
    # the errors a caller may catch: each carries the CLI's exit code (exit_code)
    **{name: ("sockdoctor.errors", name) for name in (
        "SockdoctorError", "UsageError", "FilterSyntaxError", "NotFoundError",
        "PermissionDeniedError", "UnsupportedError", "BadSnapshotError", "WriteError")},
}

# Spelled out (not built from _EXPORTS) so that linters and type checkers see it.
__all__ = [
    "BadSnapshotError", "FilterSyntaxError", "Guard", "KillPolicy", "NotFoundError",
    "PermissionDeniedError", "Query", "Sampler", "ScanOptions", "Scanner", "Snapshot",
    "SockdoctorError", "Socket",
    "SocketLeakError", "SocketLeakWarning", "TcpState", "UnsupportedError", "UsageError",
    "WriteError", "__version__", "apply_plan", "diagnose", "guard", "host_facts", "kill",
    "load_snapshot", "plan_kill", "save_snapshot", "scan", "scan_for_kill",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'sockdoctor' has no attribute {name!r}")
    import importlib

    module, attr = _EXPORTS[name]
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value
