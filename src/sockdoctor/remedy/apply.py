"""apply_plan(plan) -> KillReport: carry out exactly that plan, audit as it happens, verify.

Methods are taken in APPLY_ORDER, each in batches (one process, one
listener or one namespace; one socket at a time under a rate). Every
batch's audit lines are written in one write right after the batch and
before any verification. Identity is re-checked by each method at the
moment it acts. When `stop` is set (SIGINT/SIGTERM under
stop_on_signals()), or the audit log cannot be written, no new action is
taken: the one in flight finishes, the rest is reported as not tried.
"""

from __future__ import annotations

import threading

import msgspec

from ..errors import EXIT_INTERRUPTED, UsageError
from ..linux import host as hostmod
from . import audit as audit_mod
from .audit import DEFAULT_PATH, AuditLog
from .methods import APPLY_ORDER, BY_NAME, Pacer, Runtime
from .plan import NOT_GATHERED, Plan, exit_code_for
from .steps import Action, PlanItem
from .verify import Outcome, outcomes


class KillReport(msgspec.Struct, kw_only=True):
    """The plan and, once applied, what became of every selected socket."""

    plan: Plan
    applied: bool
    outcomes: list[Outcome] = msgspec.field(default_factory=list)
    interrupted: bool = False
    audit_error: str = ""

    @property
    def exit_code(self) -> int:
        """130 interrupted; unapplied: what the plan could do; else 0 when every selected
        socket is gone, 4 or 5 when every failure was for want of permission or of a
        kernel feature, 1 otherwise."""
        if self.interrupted:
            return EXIT_INTERRUPTED
        if not self.applied:
            return self.plan.exit_code
        return exit_code_for({o.outcome for o in self.outcomes if not o.success})

    def counts(self) -> dict[str, int]:
        """ended (gone), left (still there or refused), not tried (interrupted)."""
        ended = sum(1 for o in self.outcomes if o.success)
        not_tried = sum(1 for o in self.outcomes if o.outcome == "not-tried")
        return {"ended": ended, "left": len(self.outcomes) - ended - not_tried,
                "not_tried": not_tried}


def apply_plan(plan: Plan, *, audit_log: str | AuditLog | None = DEFAULT_PATH,
               stop: threading.Event | None = None) -> KillReport:
    """Carry out `plan` as it is (no re-planning), log every action, verify each socket.

    audit_log: a path, an AuditLog already open (closed here), or None.
    Raises PermissionDeniedError before acting when the audit log cannot be
    opened, and UsageError for a plan made without the host's facts.
    """
    if plan.actions and not plan.host.gathered:
        raise UsageError("this plan was " + NOT_GATHERED + "; make it with "
                         "plan_kill(snapshot, policy, host=sockdoctor.host_facts())")
    stop = stop or threading.Event()
    ids = _identities(plan.items)
    opened = audit_log if isinstance(audit_log, AuditLog) else \
        AuditLog(audit_log if plan.actions else None)
    with opened as log:
        namespaces = hostmod.Namespaces()
        actions = _act(plan, log, stop, namespaces, ids)
        interrupted = stop.is_set()
        results = outcomes(plan.items, actions, namespaces, interrupted=interrupted)
        report = KillReport(plan=plan, applied=True, outcomes=results, interrupted=interrupted,
                            audit_error=log.error)
        log.write_many(audit_mod.Record("verify", ids[o.index], {
            "outcome": o.outcome, "detail": o.detail, "state_after": o.state_after})
            for o in results if o.index in actions)
        if interrupted or log.error:
            log.write({"event": "interrupted" if interrupted else "stopped",
                       **report.counts()})
    return report


def _act(plan: Plan, log: AuditLog, stop: threading.Event, namespaces: hostmod.Namespaces,
         ids: dict[int, bytes]) -> dict[int, Action]:
    pacer = Pacer(plan.rate, stop)
    rt = Runtime(pacer=pacer, namespaces=namespaces, host=plan.host, bare_close=plan.bare_close)
    done: dict[int, Action] = {}
    first = True
    for name in APPLY_ORDER:
        method = BY_NAME[name]
        items = [item for item in plan.items if item.method == name]
        for batch in method.batches(items, pacer.batch_size(method.batch)) if items else []:
            if stop.is_set() or log.error or (not first and not pacer.wait()):
                return done
            first = False
            acted = method.act(batch, rt)
            done.update((a.index, a) for a in acted)
            if not log.write_many(audit_mod.Record("act", ids[a.index], {
                    "action": a.status, "detail": a.detail}) for a in acted):
                return done
    return done


def _identities(items: list[PlanItem]) -> dict[int, bytes]:
    """index -> the item's identity as the audit log writes it, encoded once per run."""
    return {item.index: audit_mod.identity_json(item) for item in items if item.method}
