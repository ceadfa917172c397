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
from typing import TypedDict, Unpack

from ..errors import UsageError
from ..linux import host as _host
from ..linux.host import Host
from ..model import Snapshot, Socket
from ..query import Query
from ..signals import stop_on_signals
from ..ssfilter import states_from_names
from .apply import KillReport, apply_plan
from .audit import DEFAULT_PATH
from .plan import Plan, plan_kill
from .policy import (
    AUTO_ORDER,
    DEFAULT_MAX,
    DEFAULT_STATES,
    METHODS,
    KillPolicy,
    dead_fds_mode,
    parse_rate,
)
from .steps import Action, OwnerRef, PlanItem
from .survey import scan_for_kill
from .verify import Outcome

__all__ = [
    "AUTO_ORDER", "DEFAULT_MAX", "DEFAULT_PATH", "DEFAULT_STATES", "METHODS", "Action", "Host",
    "KillOptions", "KillPolicy", "KillReport", "Outcome", "OwnerRef", "Plan", "PlanItem",
    "apply_plan", "dead_fds_mode", "host_facts", "kill", "parse_rate", "plan_kill",
    "scan_for_kill", "stop_on_signals",
]


def host_facts() -> Host:
    """This machine's facts for plan_kill(): privileges, kernel features, protected sockets.

    Gathered without changing anything (no test destroy: see Host.destroy).
    """
    return _host.gather()


class KillOptions(TypedDict, total=False):
    """The keyword options of kill(), each as `sockdoctor kill` names it."""

    states: Sequence[str] | None  # ss state names; none: CLOSE-WAIT only (--state)
    force: bool  # also listeners and your own session (--force)
    max_count: int  # refuse beyond this many sockets (--max)
    rate: float  # at most this many actions per second (--rate)
    dead_fds: bool  # descriptors of sockets in no table: see dead_fds_mode (--dead-fds)
    bare_close: bool  # close frees the descriptor number (--bare-close)


def kill(target: Snapshot | Sequence[Socket], method: str = "auto", dry_run: bool = True, *,
         policy: KillPolicy | None = None, audit_log: str | None = DEFAULT_PATH,
         **options: Unpack[KillOptions]) -> KillReport:
    """Plan and, unless dry_run, apply the end of the chosen sockets of `target`.

    target: a Snapshot (its processes name the owners) or a list of Sockets
        (their owners are looked up now).
    policy: a KillPolicy saying what to select and how; or, instead of it,
        `method` and the options (KillOptions), as `sockdoctor kill` takes
        them: only CLOSE-WAIT sockets are chosen unless `states` names others
        (ss names: "established", "fin-wait-2"...); dead_fds=True means what
        --dead-fds means (remedy.policy.dead_fds_mode): alone, only the
        descriptors of sockets in no table; with `states`, those sockets too.
    Raises UsageError when more than the maximum would be acted on.
    """
    snapshot = target if isinstance(target, Snapshot) else _wrap(list(target))
    snapshot = _host.with_owners(snapshot)
    if policy is None:
        policy = _policy(method, options)
    elif options or method != "auto":
        raise UsageError("kill(): give either a policy or the method and its options")
    plan = plan_kill(snapshot, policy, host=host_facts())
    if dry_run:
        return KillReport(plan=plan, applied=False)
    return apply_plan(plan, audit_log=audit_log)


def _policy(method: str, options: KillOptions) -> KillPolicy:
    """The KillPolicy that kill()'s options (the CLI's flags) describe."""
    states = options.get("states")
    query = Query(states=states_from_names(states), named_states=True) if states else Query()
    return KillPolicy(where=query, methods=(method,), force=options.get("force", False),
                      max_count=options.get("max_count", DEFAULT_MAX),
                      rate=options.get("rate", 0.0), bare_close=options.get("bare_close", False),
                      dead_fds=dead_fds_mode(options.get("dead_fds", False), query))


def _wrap(sockets: list[Socket]) -> Snapshot:
    return Snapshot(created=time.time(), hostname=socket.gethostname(),
                    kernel=os.uname().release, sockets=sockets)
