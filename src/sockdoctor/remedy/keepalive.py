"""Arm TCP keepalive on a live program's sockets: seed 003's fourth fix, without a restart.

SO_KEEPALIVE with TCP_KEEPIDLE/TCP_KEEPINTVL/TCP_KEEPCNT (and optionally
TCP_USER_TIMEOUT) are set through a pidfd_getfd duplicate, so the
program's own socket changes. A peer that has vanished stops answering
the probes and the kernel resets the connection: the program's next read
or write fails with ETIMEDOUT, which it handles as it handles any dead
connection. A live peer answers from its kernel and notices nothing.

Like a kill: selected by filters (ESTABLISHED unless states are given),
planned as a value (plan_keepalive is pure), applied with --yes
(apply_keepalive), audited, and verified by reading the options back.
"""

from __future__ import annotations

import errno
import os
import threading
from collections import defaultdict
from collections.abc import Iterable, Iterator
from functools import lru_cache

import msgspec

from ..errors import EXIT_INTERRUPTED, UsageError
from ..linux import host as hostmod
from ..linux.host import Host
from ..model import Snapshot, Socket, TcpState, state_mask
from ..query import Query
from ..words import netns_names
from . import audit as audit_mod
from .audit import DEFAULT_PATH, AuditLog
from .methods.base import HIDDEN_OWNER, Pacer
from .plan import exit_code_for, guard_for
from .policy import DEFAULT_MAX, KillPolicy
from .steps import Action, OwnerRef, PlanItem
from .verify import Outcome

DEFAULT_STATES = state_mask(TcpState.ESTABLISHED)
CONNECTED = frozenset({TcpState.ESTABLISHED, TcpState.CLOSE_WAIT})
LIMITS = {"idle_s": 32767, "interval_s": 32767, "count": 127}  # the kernel's maxima


class Keepalive(msgspec.Struct, frozen=True, kw_only=True):
    """The timings to arm: probe after idle_s of silence, every interval_s, count times."""

    idle_s: int
    interval_s: int
    count: int
    user_timeout_ms: int | None = None

    def __post_init__(self) -> None:
        for name, top in LIMITS.items():
            value = getattr(self, name)
            if not 1 <= value <= top:
                what = "--count" if name == "count" else f"--{name[:-2].replace('_', '-')}"
                raise UsageError(f"{what} must be between 1 and {top}"
                                 + ("" if name == "count" else " seconds"))
        if self.user_timeout_ms is not None and self.user_timeout_ms < 0:
            raise UsageError("--user-timeout cannot be negative")

    @property
    def wanted(self) -> dict[str, int]:
        out = {"keepalive": 1, "idle_s": self.idle_s, "interval_s": self.interval_s,
               "count": self.count}
        if self.user_timeout_ms is not None:
            out["user_timeout_ms"] = self.user_timeout_ms
        return out

    @property
    def dead_after_s(self) -> int:
        """How long a vanished peer goes unnoticed at most (from the last word heard)."""
        return self.idle_s + self.interval_s * self.count

    def text(self) -> str:
        extra = f", user timeout {self.user_timeout_ms} ms" if self.user_timeout_ms else ""
        return f"idle {self.idle_s}s, interval {self.interval_s}s, count {self.count}{extra}"


class KeepalivePlan(msgspec.Struct, kw_only=True, frozen=True):
    items: tuple[PlanItem, ...]  # method "keepalive", or "" with the reason
    settings: Keepalive
    host: Host
    notes: tuple[str, ...] = ()

    @property
    def actions(self) -> list[PlanItem]:
        return [item for item in self.items if item.method]

    @property
    def exit_code(self) -> int:
        return exit_code_for({i.unable or "left" for i in self.items if not i.method})


class KeepaliveReport(msgspec.Struct, kw_only=True):
    plan: KeepalivePlan
    applied: bool
    outcomes: list[Outcome] = msgspec.field(default_factory=list)
    interrupted: bool = False

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return EXIT_INTERRUPTED
        if not self.applied:
            return self.plan.exit_code
        return exit_code_for({o.outcome for o in self.outcomes
                              if o.outcome not in ("armed", "already-gone")})


def keepalive_policy(where: Query | None = None, states: int | None = None, *,
                     force: bool = False, max_count: int = DEFAULT_MAX) -> KillPolicy:
    """What a keepalive run selects, as a kill selects it (KillPolicy, one meaning):
    `where` with `states` merged in; ESTABLISHED when neither names a state."""
    return KillPolicy(where=where, states=states, default_states=DEFAULT_STATES, force=force,
                      max_count=max_count)


def scan_for_keepalive(where: Query | None = None, states: int | None = None) -> Snapshot:
    """The sockets a keepalive run may select (keepalive_policy's query), with their owners."""
    from ..inventory import scan

    return scan(keepalive_policy(where, states).query, owners=True)


def plan_keepalive(snapshot: Snapshot, settings: Keepalive, *, where: Query | None = None,
                   states: int | None = None, force: bool = False,
                   max_count: int = DEFAULT_MAX, host: Host | None = None) -> KeepalivePlan:
    """Which selected sockets get keepalive (pure, like plan_kill; keepalive_policy selects:
    ESTABLISHED unless `where` or `states` names states)."""
    host = host or Host()
    policy = keepalive_policy(where, states, force=force, max_count=max_count)
    selects = policy.selector(snapshot)
    names = netns_names(snapshot)
    items = []
    for sk in snapshot.sockets:
        if selects(sk):
            items.append(_item(len(items) + 1, sk, snapshot, names, settings, host, policy.force))
    acting = [i for i in items if i.method]
    if len(acting) > policy.max_count:
        raise UsageError(f"this would change {len(acting)} sockets, more than --max "
                         f"{policy.max_count}; narrow the filter or raise --max")
    notes = () if host.gathered else ("made without this host's facts: for reading only",)
    return KeepalivePlan(items=tuple(items), settings=settings, host=host, notes=notes)


def _item(index: int, sk: Socket, snapshot: Snapshot, names: dict[int, str],
          settings: Keepalive, host: Host, force: bool) -> PlanItem:
    owners = tuple(OwnerRef(o.pid, o.fd, getattr(snapshot.processes.get(o.pid), "comm", ""))
                   for o in sk.owners)
    method, skipped, unable, sees = "", "", "", ("", "")
    guard = guard_for(sk, force, host)
    if guard:
        skipped, why = guard, "refused: " + guard
    elif sk.state not in CONNECTED:
        why = "keepalive only matters on a connected socket (ESTABLISHED, CLOSE-WAIT)"
    elif not owners:
        why, unable = (f"it is set through its owner's descriptor, and {HIDDEN_OWNER}",
                       "not-permitted") if sk.inode else (
            "no process holds it: keepalive is set through the owner's descriptor", "")
    elif not host.pidfd:
        why, unable = "this kernel has no pidfd_getfd (Linux >= 5.6 needed)", "unsupported"
    else:
        method = "keepalive"
        why = ("keepalive timer already running: new timings" if sk.timer == 2 else
               "no keepalive yet") + f"; set through a duplicate of fd {owners[0].fd}"
        sees = (f"nothing while the peer answers; if it has vanished, within "
                f"{settings.interval_s * settings.count}s of the first probe its "
                "next read or write fails with ETIMEDOUT",
                f"an empty probe after {settings.idle_s}s of silence, then every "
                f"{settings.interval_s}s until answered (its kernel answers)")
    return PlanItem(index=index, socket=sk, netns_name=names.get(sk.netns, str(sk.netns)),
                    netns_inode=sk.netns, owners=owners, method=method, why=why,
                    skipped=skipped, unable=unable, program_sees=sees[0], peer_sees=sees[1])


def apply_keepalive(plan: KeepalivePlan, *, audit_log: str | AuditLog | None = DEFAULT_PATH,
                    stop: threading.Event | None = None) -> KeepaliveReport:
    """Arm every planned socket, read the options back, log it; exactly that plan."""
    if plan.actions and not plan.host.gathered:
        raise UsageError("this plan was made without the host's facts; make it with "
                         "host=sockdoctor.host_facts()")
    stop = stop or threading.Event()
    log = audit_log if isinstance(audit_log, AuditLog) else \
        AuditLog(audit_log if plan.actions else None)
    results: dict[int, Outcome] = {}
    fields = audit_mod.FieldCache("outcome", "detail", settings=plan.settings.wanted)
    with log:
        in_kernel = _arm_in_kernel(plan.actions, plan.settings, stop)
        log.write_event("keepalive", _lines(in_kernel, fields))
        results.update((o.index, o) for _, o in in_kernel)
        by_pid: dict[int, list[PlanItem]] = defaultdict(list)
        for item in plan.actions:
            if item.index not in results:  # the pidfd path: what the engine did not settle
                by_pid[item.owners[0].pid].append(item)
        pacer = Pacer(0, stop)
        for pid, group in by_pid.items():
            if not pacer.wait() or log.error:
                break
            done = _arm(pid, group, plan.settings, pacer)
            log.write_event("keepalive", _lines(zip(group, done, strict=False), fields))
            results.update((o.index, o) for o in done)
    outcomes = [results.get(i.index) or _left(i, stop.is_set()) for i in plan.items]
    return KeepaliveReport(plan=plan, applied=True, outcomes=outcomes,
                           interrupted=stop.is_set())


def _lines(done: Iterable[tuple[PlanItem, Outcome]], fields: audit_mod.FieldCache
           ) -> Iterator[tuple[bytes, bytes]]:
    """The audit log's keepalive lines: (identity, outcome) of each item."""
    return ((audit_mod.identity_json(item), fields(o.outcome, o.detail)) for item, o in done)


def _arm_in_kernel(items: list[PlanItem], settings: Keepalive, stop: threading.Event
                   ) -> list[tuple[PlanItem, Outcome]]:
    """The kernel engine's pass per namespace (bpf_setsockopt, the owner never
    stopped); what it settled. Nothing when it is off: then the pidfd path does all."""
    by_netns: dict[int, list[PlanItem]] = defaultdict(list)
    for item in items:
        by_netns[item.netns_inode].append(item)
    namespaces = hostmod.Namespaces()
    done: list[tuple[PlanItem, Outcome]] = []
    for inode, group in by_netns.items():
        if stop.is_set():
            break
        sockets = [i.socket for i in group]
        try:
            armed = namespaces.run_in(inode, lambda s=sockets: hostmod.arm_keepalive_kernel(
                s, settings.wanted))  # type: ignore[arg-type]
        except hostmod.Errors:
            continue  # the pidfd path tries and says why
        for item, result in zip(group, armed, strict=True):
            if result is not None:
                code, before, after = result
                done.append((item, _judged(item, settings, before, after, "bpf_setsockopt")
                             if not code else _outcome(item, Action(
                                 index=item.index, status=_KERNEL_STATUS.get(code, "failed"),
                                 detail=os.strerror(code)))))
    return done


_KERNEL_STATUS = {errno.ESTALE: "identity-changed"}


def _arm(pid: int, group: list[PlanItem], settings: Keepalive, pacer: Pacer) -> list[Outcome]:
    out: list[Outcome] = []
    try:
        with hostmod.open_process(pid) as handle:
            for item in group:
                if out and not pacer.wait():
                    break
                out.append(_arm_one(handle, item, settings))
    except hostmod.Errors as exc:
        out += [_outcome(i, Action(index=i.index, status=hostmod.status_of(exc),
                                   detail=hostmod.describe(exc))) for i in group[len(out):]]
    return out


def _arm_one(handle: object, item: PlanItem, settings: Keepalive) -> Outcome:
    assert item.socket is not None
    wanted = settings.wanted
    try:
        before, after = hostmod.arm_keepalive(handle, item.owners[0].fd,  # type: ignore[arg-type]
                                              item.socket.inode, wanted)
    except hostmod.Errors as exc:
        return _outcome(item, Action(index=item.index, status=hostmod.status_of(exc),
                                     detail=hostmod.describe(exc)))
    return _judged(item, settings, before, after)


def _judged(item: PlanItem, settings: Keepalive, before: dict[str, int],
            after: dict[str, int], via: str = "") -> Outcome:
    """Armed if every option reads back as asked."""
    status, detail, state_after = _verdict(settings, tuple(before.items()),
                                           tuple(after.items()), via)
    outcome = _outcome(item, Action(index=item.index, status=status, detail=detail))
    outcome.state_after = state_after
    return outcome


@lru_cache(maxsize=256)  # 10,000 sockets of one program read back a handful of ways
def _verdict(settings: Keepalive, before_items: tuple[tuple[str, int], ...],
             after_items: tuple[tuple[str, int], ...], via: str) -> tuple[str, str, str]:
    """(status, detail, state after) for options read back before and after arming."""
    before, after = dict(before_items), dict(after_items)
    wrong = {k: after.get(k) for k, v in settings.wanted.items() if after.get(k) != v}
    detail = (f"read back: {_options(after)}; before: {_options(before)}"
              + (f"; not as asked: {wrong}" if wrong else "")
              + (f"; set with {via}" if via else ""))
    return ("armed", detail, settings.text()) if not wrong else ("failed", detail, "")


def _options(values: dict[str, int]) -> str:
    if not values.get("keepalive"):
        return "keepalive off"
    return (f"keepalive on, idle {values['idle_s']}s, interval {values['interval_s']}s, count "
            f"{values['count']}, user timeout {values['user_timeout_ms']} ms")


def _outcome(item: PlanItem, action: Action) -> Outcome:
    return Outcome(index=item.index, label=item.label, netns=item.netns_name, method="keepalive",
                   outcome=action.status, detail=action.detail)


def _left(item: PlanItem, interrupted: bool) -> Outcome:
    if item.method:
        return Outcome(index=item.index, label=item.label, netns=item.netns_name,
                       method=item.method, outcome="not-tried",
                       detail="interrupted before it was tried" if interrupted else "")
    return Outcome(index=item.index, label=item.label, netns=item.netns_name, method="",
                   outcome="skipped" if item.skipped else item.unable or "not-applicable",
                   detail=item.why)


__all__ = ["Keepalive", "KeepalivePlan", "KeepaliveReport", "apply_keepalive",
           "keepalive_policy", "plan_keepalive", "scan_for_keepalive"]
