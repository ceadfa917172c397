"""sockdoctor: find, explain and remove stuck TCP connections on a live Linux host.

The Python API mirrors the command line:

    import sockdoctor
    snap = sockdoctor.scan("state close-wait", owners=True)   # like `sockdoctor ls -p`
    report = sockdoctor.diagnose(sockdoctor.scan(evidence=True))  # like `sockdoctor doctor`
    plan = sockdoctor.plan_kill(snap, host=sockdoctor.host_facts())  # `sockdoctor kill`
    report = sockdoctor.apply_plan(plan)                              # ... --yes

Attributes are imported on first use so that `import sockdoctor` stays cheap.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "scan": ("sockdoctor.inventory", "scan"),
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
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'sockdoctor' has no attribute {name!r}")
    import importlib

    module, attr = _EXPORTS[name]
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value
