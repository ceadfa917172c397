"""Ending stuck connections: a plan you can trust as a value, then its execution.

    policy = KillPolicy(...)                   # what may be selected, how, within which limits
    snapshot = scan_for_kill(policy)           # or any Snapshot (scan(), a saved one)
    plan = plan_kill(snapshot, policy, host=host_facts())   # pure: nothing is changed
    report = apply_plan(plan)                  # exactly that plan: act, audit, verify

plan.py decides, methods/ holds one class per method, apply.py acts and
audits, verify.py looks again; everything that touches the kernel goes
through linux/host.py. `kill()` is the one-call form of the above.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Sequence

from ..linux import host as _host
from ..linux.host import Host
from ..model import Snapshot, Socket
from ..signals import stop_on_signals
from ..ssfilter import states_from_names
from .apply import KillReport, apply_plan
from .audit import DEFAULT_PATH
from .plan import Plan, plan_kill
from .policy import AUTO_ORDER, DEFAULT_MAX, DEFAULT_STATES, METHODS, KillPolicy, parse_rate
from .steps import Action, OwnerRef, PlanItem
from .survey import scan_for_kill
from .verify import Outcome

__all__ = [
    "AUTO_ORDER", "DEFAULT_MAX", "DEFAULT_PATH", "DEFAULT_STATES", "METHODS", "Action", "Host",
    "KillPolicy", "KillReport", "Outcome", "OwnerRef", "Plan", "PlanItem", "apply_plan",
    "host_facts", "kill", "parse_rate", "plan_kill", "scan_for_kill", "stop_on_signals",
]


def host_facts() -> Host:
    """This machine's facts for plan_kill(): privileges, kernel features, protected sockets.

    Gathered without changing anything (no test destroy: see Host.destroy).
    """
    return _host.gather()


def kill(target: Snapshot | Sequence[Socket], method: str = "auto", dry_run: bool = True, *,
         states: Sequence[str] | None = None, force: bool = False,
         max_count: int = DEFAULT_MAX, rate: float = 0.0,
         audit_log: str | None = DEFAULT_PATH, dead_fds: bool = False,
         bare_close: bool = False) -> KillReport:
    """Plan and, unless dry_run, apply the end of the chosen sockets of `target`.

    target: a Snapshot (its processes name the owners) or a list of Sockets
        (their owners are looked up now). Only CLOSE-WAIT sockets are chosen
        unless `states` names others (ss names: "established", "fin-wait-2"...).
    Raises UsageError when more than `max_count` sockets would be acted on.
    """
    snapshot = target if isinstance(target, Snapshot) else _wrap(list(target))
    snapshot = _host.with_owners(snapshot)
    policy = KillPolicy(states=states_from_names(states) if states else None,
                        methods=(method,), force=force, max_count=max_count, rate=rate,
                        dead_fds="also" if dead_fds else "no", bare_close=bare_close)
    plan = plan_kill(snapshot, policy, host=host_facts())
    if dry_run:
        return KillReport(plan=plan, applied=False)
    return apply_plan(plan, audit_log=audit_log)


def _wrap(sockets: list[Socket]) -> Snapshot:
    return Snapshot(created=time.time(), hostname=socket.gethostname(),
                    kernel=os.uname().release, sockets=sockets)
