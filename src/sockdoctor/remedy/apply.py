"""apply_plan(plan) -> KillReport: carry out exactly that plan, audit as it happens, verify.

Methods are taken in APPLY_ORDER, each in batches (one process, one
listener or one namespace; one socket at a time under a rate). Before a
batch acts, an `intent` line per socket is on disk: written and fsynced in
one write for the next INTENTS_AHEAD sockets (a second's worth under a
rate): no action without its record on disk. If that fails
(disk full, read-only), the batch is not carried out and nothing further is
done. Right after the batch, its `act` lines say what each action did.
Batches of every sockdoctor on this host are serialised by one lock
(linux/host.py: acting())), and identity is re-checked by each method at the moment
it acts, so of two actors on the same socket only the one that ended it
claims it. When `stop` is set (SIGINT/SIGTERM under stop_on_signals()), or
the audit log cannot be written, no new action is taken: the one in flight
finishes, the rest is reported as not tried.
"""

from __future__ import annotations

import threading

import msgspec

from ..errors import EXIT_INTERRUPTED, EXIT_WRITE, UsageError
from ..linux import host as hostmod
from . import audit as audit_mod
from .audit import DEFAULT_PATH, AuditLog
from .methods import APPLY_ORDER, BY_NAME, Method, Pacer, Runtime
from .plan import NOT_GATHERED, Plan, exit_code_for
from .steps import Action, PlanItem
from .verify import Outcome, outcomes

# Sockets whose intent lines go to disk in one write and one fsync, ahead of their
# actions: 16,000 sockets cost 4 fsyncs, not 63 (docs/reliability.md).
INTENTS_AHEAD = 4096


class KillReport(msgspec.Struct, kw_only=True):
    """The plan and, once applied, what became of every selected socket."""

    plan: Plan
    applied: bool
    outcomes: list[Outcome] = msgspec.field(default_factory=list)
    interrupted: bool = False
    audit_error: str = ""
    audit_path: str = ""  # where the record of what was done is

    @property
    def exit_code(self) -> int:
        """130 interrupted; 7 the audit log failed (nothing more was done); unapplied:
        what the plan could do; else 0 when every selected socket is gone, 4 or 5 when
        every failure was for want of permission or of a kernel feature, 1 otherwise."""
        if self.interrupted:
            return EXIT_INTERRUPTED
        if self.audit_error:
            return EXIT_WRITE
        if not self.applied:
            return self.plan.exit_code
        return exit_code_for({o.outcome for o in self.outcomes if not o.success})

    @property
    def ended_here(self) -> int:
        """Sockets this run ended itself (not those gone before or by another hand)."""
        return sum(1 for o in self.outcomes if o.outcome in ("closed", "closing"))

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
                            audit_error=log.error, audit_path=log.path or "")
        fields = audit_mod.FieldCache("outcome", "detail", "state_after")
        log.write_event("verify", ((ids[o.index], fields(o.outcome, o.detail, o.state_after))
                                   for o in results if o.index in actions))
        if interrupted or log.error:
            log.write({"event": "interrupted" if interrupted else "stopped",
                       **report.counts()})
    return report


def _act(plan: Plan, log: AuditLog, stop: threading.Event, namespaces: hostmod.Namespaces,
         ids: dict[int, bytes]) -> dict[int, Action]:
    pacer = Pacer(plan.rate, stop)
    rt = Runtime(pacer=pacer, namespaces=namespaces, host=plan.host, bare_close=plan.bare_close)
    done: dict[int, Action] = {}
    batches = [(BY_NAME[name], batch) for name in APPLY_ORDER
               for batch in _batches(plan, name, pacer)]
    ahead = _intents_ahead(plan.rate)
    fields = audit_mod.FieldCache("action", "detail")
    recorded = 0  # batches[:recorded] have their intent lines on disk
    for at, (method, batch) in enumerate(batches):
        if stop.is_set() or log.error or (at and not pacer.wait()):
            return done
        if at == recorded:  # one write and one fsync for the next `ahead` sockets
            recorded = _record_intents(log, batches, at, ahead, ids)
            if not recorded:
                return done  # no record on disk: nothing more is carried out
        with hostmod.acting(stop) as held:
            acted = method.act(batch, rt) if held else []
        if not held:
            return done
        done.update((a.index, a) for a in acted)
        if not log.write_event("act", ((ids[a.index], fields(a.status, a.detail))
                                       for a in acted)):
            return done
    return done


def _batches(plan: Plan, name: str, pacer: Pacer) -> list[list[PlanItem]]:
    method = BY_NAME[name]
    items = [item for item in plan.items if item.method == name]
    return method.batches(items, pacer.batch_size(method.batch)) if items else []


def _intents_ahead(rate: float) -> int:
    """How many sockets one fsynced write of intent lines covers: INTENTS_AHEAD, or about
    a second's worth under a rate (a stopped run leaves few intents without their act)."""
    return INTENTS_AHEAD if rate <= 0 else max(1, min(INTENTS_AHEAD, int(rate)))


def _record_intents(log: AuditLog, batches: list[tuple[Method, list[PlanItem]]], start: int,
                    ahead: int, ids: dict[int, bytes]) -> int:
    """Write and fsync the intent lines of the batches from `start` on, whole batches of
    about `ahead` sockets; the index after the last one recorded, 0 if writing failed."""
    end, count = start, 0
    while end < len(batches) and (end == start or count + len(batches[end][1]) <= ahead):
        count += len(batches[end][1])
        end += 1
    lines = ((ids[i.index], audit_mod.NO_FIELDS) for _, batch in batches[start:end]
             for i in batch)
    return end if log.write_event("intent", lines, sync=True) else 0


def _identities(items: list[PlanItem]) -> dict[int, bytes]:
    """index -> the item's identity as the audit log writes it, encoded once per run."""
    return {item.index: audit_mod.identity_json(item) for item in items if item.method}
