"""After acting: look again and give every selected socket its outcome.

A socket may need a moment to finish closing (LAST-ACK waits for the peer's
ACK), so sockets still present are looked at again for a short grace period
(none after an interruption: the operator wants out). What a socket's state
means is up to the method that acted on it (Method.judge). Many sockets are
looked up with one dump cut down to their ports in the kernel.
"""

from __future__ import annotations

import time
from collections import defaultdict

import msgspec

from ..linux import host as hostmod
from ..model import Socket
from .methods import BY_NAME
from .steps import Action, PlanItem

GRACE_SECONDS = 2.0
SUCCESS = frozenset({"closed", "closing", "already-gone"})
ACTED = frozenset({"done", "already-gone", "identity-changed"})


class Outcome(msgspec.Struct, kw_only=True):
    index: int
    label: str
    netns: str
    method: str
    outcome: str  # closed | closing | already-gone | half-closed | survived | skipped |
    #               not-applicable | identity-changed | not-permitted | unsupported |
    #               failed | not-tried
    detail: str
    state_after: str = ""

    @property
    def success(self) -> bool:
        return self.outcome in SUCCESS


def outcomes(items: list[PlanItem], actions: dict[int, Action],
             namespaces: hostmod.Namespaces, *, interrupted: bool = False) -> list[Outcome]:
    """One Outcome per item, in item order."""
    result: dict[int, Outcome] = {}
    to_check: list[PlanItem] = []
    for item in items:
        action = actions.get(item.index)
        base = Outcome(index=item.index, label=item.label, netns=item.netns_name,
                       method=item.method, outcome="", detail="")
        if not item.method:
            base.outcome = "skipped" if item.skipped else item.unable or "not-applicable"
            base.detail = item.why
        elif action is None:
            base.outcome = "not-tried"
            base.detail = "interrupted before it was tried" if interrupted else "not attempted"
        elif action.status not in ACTED:
            base.outcome, base.detail = action.status, action.detail
        else:
            base.detail = action.detail
            to_check.append(item)
        result[item.index] = base
    _settle(to_check, result, namespaces, 0.0 if interrupted else GRACE_SECONDS)
    for item in to_check:
        _by_action(actions[item.index].status, result[item.index])
    return [result[item.index] for item in items]


def _by_action(status: str, outcome: Outcome) -> None:
    """Gone by itself, or replaced: not our doing, whatever the table shows."""
    if status == "identity-changed" and outcome.outcome != "closed":
        outcome.outcome = "identity-changed"  # still there, and we held off
    elif status == "identity-changed":
        outcome.outcome = "already-gone"
        outcome.detail = ("it closed by itself; its descriptor number now holds another "
                          "socket, which was left alone")
    elif status == "already-gone":
        outcome.outcome = "already-gone"  # gone, or being ended, before we acted: not ours


def _settle(items: list[PlanItem], result: dict[int, Outcome],
            namespaces: hostmod.Namespaces, grace: float) -> None:
    deadline = time.monotonic() + grace
    pending = items
    while pending:
        current = _current(pending, namespaces)
        still = []
        for item in pending:
            outcome, state = BY_NAME[item.method].judge(item, current.get(item.index))
            result[item.index].outcome = outcome
            result[item.index].state_after = state
            if outcome not in SUCCESS:  # "closing" is final: the kernel finishes it
                still.append(item)
        pending = still
        if time.monotonic() >= deadline:
            return
        if pending:
            time.sleep(0.1)


def _current(items: list[PlanItem], namespaces: hostmod.Namespaces) -> dict[int, Socket | None]:
    """index -> the socket as it is now (None: gone; for a dead fd: its socket, if held)."""
    now: dict[int, Socket | None] = {}
    groups: dict[int, list[PlanItem]] = defaultdict(list)
    for item in items:
        if item.socket is None:
            owner = item.owners[0]
            held = hostmod.fd_points_at(owner.pid, owner.fd, item.dead_inode)
            now[item.index] = _DEAD_HELD if held else None
        else:
            groups[item.netns_inode].append(item)
    for ns_inode, group in groups.items():
        sockets = [i.socket for i in group]
        try:
            live = namespaces.run_in(ns_inode, lambda s=sockets: hostmod.look(s))  # type: ignore[arg-type]
        except hostmod.NamespaceGone:
            live = {}
        now.update((i.index, live.get(i.socket.cookie)) for i in group)  # type: ignore[union-attr]
    return now


# A dead descriptor still held: judged "survived" (any non-None value does).
_DEAD_HELD = Socket(0, 0, 0, "", 0, "", 0, 0, 0, 0, 0, 0)
