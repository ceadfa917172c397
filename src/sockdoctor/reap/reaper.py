"""One reap cycle: a sample in, a plan per rule, applied within limits, remembered.

The reaper is a consumer of the sampler (watch.Sampler): each sample is
planned on, rule by rule, with the kill core (plan_kill, apply_plan), which
audits and verifies. Between cycles it remembers only what escalation needs:
- a socket a rung of the ladder did not end (FIN sent, peer silent) is tried
  with the next rung in the next cycle, even if it no longer matches the
  rule's states (after fin a CLOSE-WAIT is a LAST-ACK);
- a socket the last rung did not end, or that no rung can act on, is
  reported once and never tried again ("gave up"); so is one a guard refuses.
Ages are the sampler's (tcp_info's, or the time since it first saw the
socket in its state, whichever is larger).
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import msgspec

from ..linux.host import Host
from ..model import ALL_STATES_MASK, Snapshot, Socket, TcpState
from ..query import Query
from ..remedy import KillReport, Plan, apply_plan, plan_kill
from ..watch import Sample
from .policy import ReapPolicy, Rule

NOT_LISTEN = ALL_STATES_MASK & ~(1 << TcpState.LISTEN)
# The next rung of a ladder acts on what the last one left, whatever its state now
# (after fin a CLOSE-WAIT is a LAST-ACK) or age: any state but LISTEN, nothing else.
ESCALATE = Query(states=NOT_LISTEN, named_states=True)


@dataclass
class RuleResult:
    """What one rule did (or would do) in one cycle."""

    name: str
    methods: Counter[str] = field(default_factory=Counter)  # actions by method
    outcomes: Counter[str] = field(default_factory=Counter)
    ended: int = 0
    escalated: int = 0  # acted on, not ended: the next rung comes next cycle
    deferred: int = 0  # over max_per_cycle: next cycle
    gave_up: list[str] = field(default_factory=list)  # reported once, never tried again
    refused: list[str] = field(default_factory=list)  # a guard said no (reported once)

    def text(self, dry_run: bool) -> str:
        acted = sum(self.methods.values())
        parts = []
        if acted:
            by = ", ".join(f"{m} {n}" for m, n in sorted(self.methods.items()))
            parts.append(f"would end {acted} ({by})" if dry_run else
                         f"ended {self.ended} of {acted} ({by})")
        if self.escalated:
            parts.append(f"{self.escalated} to the next rung")
        if self.deferred:
            parts.append(f"{self.deferred} deferred (max_per_cycle)")
        if self.gave_up:
            parts.append(f"gave up on {len(self.gave_up)}")
        if self.refused:
            parts.append(f"{len(self.refused)} refused by a guard")
        return f"{self.name}: " + ("; ".join(parts) if parts else "nothing to do")


@dataclass
class Cycle:
    """One cycle's account, as a line and as a JSON object."""

    seq: int
    started: float
    dry_run: bool
    rules: list[RuleResult] = field(default_factory=list)
    error: str = ""
    duration_s: float = 0.0
    audit_error: str = ""

    def line(self) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(self.started))
        head = f"{stamp} reap cycle {self.seq}" + (" (dry run)" if self.dry_run else "")
        if self.error:
            return f"{head}: sample failed: {self.error}"
        tail = f" [audit log: {self.audit_error}]" if self.audit_error else ""
        return f"{head}: " + " | ".join(r.text(self.dry_run) for r in self.rules) + tail

    def to_json(self) -> dict[str, Any]:
        rules = [{"name": r.name, "methods": dict(r.methods), "outcomes": dict(r.outcomes),
                  "ended": r.ended, "escalated": r.escalated, "deferred": r.deferred,
                  "gave_up": r.gave_up, "refused": r.refused} for r in self.rules]
        return {"event": "cycle", "cycle": self.seq,
                "time": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(self.started)),
                "dry_run": self.dry_run, "duration_s": round(self.duration_s, 3),
                "error": self.error, "audit_error": self.audit_error, "rules": rules}


@dataclass
class _Memory:
    """Per rule, across cycles: next rung by cookie, and sockets never to try again."""

    next_rung: dict[int, int] = field(default_factory=dict)
    done_with: set[int] = field(default_factory=set)


class Reaper:
    """Turns samples into reap cycles under a policy; dry run unless `apply`."""

    def __init__(self, policy: ReapPolicy, *, apply: bool, host: Host,
                 audit_log: str | None, narrow: Query | None = None) -> None:
        self.policy, self.apply, self.host = policy, apply, host
        self.audit_log, self.narrow = audit_log, narrow
        self.memory: dict[str, _Memory] = defaultdict(_Memory)
        self.totals: Counter[tuple[str, str, str]] = Counter()  # (rule, method, outcome)
        self.cycles = 0

    def reload(self, policy: ReapPolicy) -> None:
        """A new policy; what is remembered stays for rules that keep their name."""
        self.policy = policy
        keep = {rule.name for rule in policy.rules}
        self.memory = defaultdict(_Memory, {n: m for n, m in self.memory.items() if n in keep})

    def cycle(self, sample: Sample) -> Cycle:
        self.cycles += 1
        cycle = Cycle(seq=self.cycles, started=sample.started, dry_run=not self.apply)
        clock = time.monotonic()
        if sample.snapshot is None:
            cycle.error = sample.error or "no snapshot"
            return cycle
        snapshot = self._view(sample)
        live = {sk.cookie: sk for sk in snapshot.sockets}
        for rule in self.policy.rules:
            cycle.rules.append(self._rule(rule, snapshot, live, cycle))
        cycle.duration_s = time.monotonic() - clock
        return cycle

    # --- one rule ------------------------------------------------------------

    def _rule(self, rule: Rule, snapshot: Snapshot, live: dict[int, Socket],
              cycle: Cycle) -> RuleResult:
        result = RuleResult(rule.name)
        memory = self.memory[rule.name]
        memory.next_rung = {c: r for c, r in memory.next_rung.items() if c in live}
        memory.done_with &= live.keys()
        budget = rule.kill.max_count
        if self.apply:
            for rung in sorted(set(memory.next_rung.values())):
                cookies = [c for c, r in memory.next_rung.items() if r == rung]
                view = _only(snapshot, [live[c] for c in cookies])
                policy = dataclasses.replace(rule.kill, where=ESCALATE, methods=rule.ladder[rung:],
                                             max_count=max(budget, 1))
                budget -= self._run(rule, plan_kill(view, policy, host=self.host), result,
                                    memory, cycle, escalating=True) if budget else 0
        skip = memory.done_with | set(memory.next_rung)
        fresh = _only(snapshot, [sk for sk in snapshot.sockets if sk.cookie not in skip])
        plan = plan_kill(fresh, dataclasses.replace(rule.kill, max_count=max(budget, 1)),
                         host=self.host)
        if budget <= 0:
            result.deferred += len(plan.actions)
        else:
            self._run(rule, plan, result, memory, cycle, escalating=False)
        return result

    def _run(self, rule: Rule, plan: Plan, result: RuleResult, memory: _Memory,
             cycle: Cycle, escalating: bool) -> int:
        """Apply (or in a dry run, only count) one plan; the number of actions it took."""
        for item in plan.items:
            if item.method:
                result.methods[item.method] += 1
            elif item.skipped.startswith("over the limit"):
                result.deferred += 1
            elif item.socket is not None and item.socket.cookie not in memory.done_with:
                (result.refused if item.skipped else result.gave_up).append(
                    f"{item.label}: {item.why}")
                if self.apply:
                    memory.done_with.add(item.socket.cookie)
        if not self.apply or not plan.actions:
            return len(plan.actions)
        report = apply_plan(plan, audit_log=self.audit_log)
        cycle.audit_error = cycle.audit_error or report.audit_error
        self._account(rule, plan, report, result, memory)
        return len(plan.actions)

    def _account(self, rule: Rule, plan: Plan, report: KillReport, result: RuleResult,
                 memory: _Memory) -> None:
        for item, outcome in zip(plan.items, report.outcomes, strict=True):
            if not item.method or item.socket is None:
                continue
            cookie = item.socket.cookie
            if outcome.outcome != "already-gone":  # another hand's work is not counted
                self.totals[(rule.name, item.method, outcome.outcome)] += 1
            result.outcomes[outcome.outcome] += 1
            memory.next_rung.pop(cookie, None)
            if outcome.success:
                result.ended += outcome.outcome != "already-gone"
            elif outcome.outcome == "not-tried":
                continue  # the audit log failed: tried again next cycle
            elif rule.rung(item.method) + 1 < len(rule.ladder):
                memory.next_rung[cookie] = rule.rung(item.method) + 1
                result.escalated += 1
            else:
                memory.done_with.add(cookie)
                result.gave_up.append(f"{item.label}: {outcome.outcome} "
                                      f"({outcome.state_after or outcome.detail})")

    # --- the sample as the rules see it --------------------------------------

    def _view(self, sample: Sample) -> Snapshot:
        """The sample's snapshot, narrowed by the command line's filter (listeners kept
        for drain), with the sampler's ages on the sockets a rule may select by age."""
        snap = sample.snapshot
        assert snap is not None
        if self.narrow is not None:
            test = self.narrow.selector(snap)
            keep = [sk for sk in snap.sockets if sk.state == TcpState.LISTEN or test(sk)]
        else:
            keep = snap.sockets
        aged = 0
        for rule in self.policy.rules:
            if rule.kill.query.needs_age:
                aged |= rule.kill.state_mask
        sockets = []
        for sk in keep:
            if (aged >> sk.state) & 1:
                age = sample.age_ms(sk)
                if age != sk.age_ms:
                    sk = msgspec.structs.replace(sk, age_ms=age)
            sockets.append(sk)
        return msgspec.structs.replace(snap, sockets=sockets)

    def summary(self) -> str:
        """What every cycle together did, for the end of a run."""
        by_method: Counter[str] = Counter()
        ended = 0
        for (_rule, method, outcome), n in self.totals.items():
            if outcome in ("closed", "closing"):
                ended += n
                by_method[method] += n
        gave_up = sum(len(m.done_with) for m in self.memory.values())
        how = ", ".join(f"{m} {n}" for m, n in sorted(by_method.items()))
        return (f"reap: stopped after {self.cycles} cycle{'s' if self.cycles != 1 else ''}: "
                f"ended {ended} socket{'s' if ended != 1 else ''}" + (f" ({how})" if how else "")
                + f", {gave_up} given up on" + ("" if self.apply else " (dry run: nothing "
                                                "was changed)") + ".")


def _only(snapshot: Snapshot, sockets: list[Socket]) -> Snapshot:
    """The snapshot with these sockets, plus its listeners (drain needs them)."""
    chosen = {sk.cookie for sk in sockets}
    extra = [sk for sk in snapshot.sockets
             if sk.state == TcpState.LISTEN and sk.cookie not in chosen]
    return msgspec.structs.replace(snapshot, sockets=[*sockets, *extra])
