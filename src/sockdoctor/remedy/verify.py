"""After acting: look again and give every socket its outcome.

A socket may need a moment to finish closing (LAST-ACK waits for the peer's
ACK), so sockets still present are looked at again for a short grace period.
"""

from __future__ import annotations

import os
import time
from collections import defaultdict

import msgspec

from ..linux import netns as netns_mod
from ..linux import sockdiag
from ..model import Socket, TcpState
from ..render import fmt
from .methods import Action
from .plan import PlanItem

GRACE_SECONDS = 2.0
SUCCESS = frozenset({"closed", "closing", "already-gone"})
_ORPHAN_STATES = {TcpState.FIN_WAIT1, TcpState.FIN_WAIT2, TcpState.LAST_ACK,
                  TcpState.CLOSING, TcpState.TIME_WAIT}


class Outcome(msgspec.Struct, kw_only=True):
    index: int
    label: str
    netns: str
    method: str
    outcome: str  # closed | closing | already-gone | half-closed | survived | skipped |
    #               not-applicable | identity-changed | not-permitted | unsupported | failed
    detail: str
    state_after: str = ""

    @property
    def success(self) -> bool:
        return self.outcome in SUCCESS


def outcomes(items: list[PlanItem], actions: list[Action],
             namespaces: dict[int, netns_mod.NsRef]) -> list[Outcome]:
    by_index = {a.index: a for a in actions}
    result: dict[int, Outcome] = {}
    to_check: list[PlanItem] = []
    for item in items:
        action = by_index.get(item.index)
        base = Outcome(index=item.index, label=item.label, netns=item.netns_name,
                       method=item.method, outcome="", detail="")
        if not item.method:
            base.outcome = "skipped" if item.skipped else item.unable or "not-applicable"
            base.detail = item.why
        elif action is None or action.status not in ("done", "already-gone",
                                                      "identity-changed"):
            base.outcome = action.status if action else "failed"
            base.detail = action.detail if action else "not attempted"
        else:
            base.detail = action.detail
            to_check.append(item)
        result[item.index] = base
    _settle(to_check, result, namespaces)
    for item in to_check:
        action = by_index[item.index]
        outcome = result[item.index]
        if action.status == "identity-changed" and outcome.outcome != "closed":
            outcome.outcome = "identity-changed"  # still there, and we held off
        elif action.status == "identity-changed":
            outcome.outcome = "already-gone"
            outcome.detail = ("it closed by itself; its descriptor number now holds another "
                              "socket, which was left alone")
        elif action.status == "already-gone" and outcome.outcome == "closed":
            outcome.outcome = "already-gone"  # gone before we acted: not our doing
    return [result[item.index] for item in items]


def _settle(items: list[PlanItem], result: dict[int, Outcome],
            namespaces: dict[int, netns_mod.NsRef]) -> None:
    deadline = time.monotonic() + GRACE_SECONDS
    pending = items
    while True:
        current = _current(pending, namespaces)
        still = []
        for item in pending:
            outcome, state = _judge(item, current.get(item.index))
            result[item.index].outcome = outcome
            result[item.index].state_after = state
            if outcome not in SUCCESS:  # "closing" is final: the kernel finishes it
                still.append(item)
        pending = still
        if not pending or time.monotonic() >= deadline:
            return
        time.sleep(0.1)


def _judge(item: PlanItem, now: Socket | bool | None) -> tuple[str, str]:
    """(outcome, state now) for one acted-on item."""
    if item.socket is None:  # a dead descriptor: is it closed now?
        return ("closed", "") if now is None else ("survived", "fd still open")
    if now is None:
        return "closed", ""
    assert isinstance(now, Socket)
    state = fmt.state_name(now.state)
    if now.state == TcpState.TIME_WAIT or (now.inode == 0 and now.state in _ORPHAN_STATES):
        return "closing", f"{state} (the kernel finishes the close on its own)"
    if now.state == TcpState.FIN_WAIT2:
        return "half-closed", f"{state}: our FIN is out, the peer has not closed its side"
    if now.state in (TcpState.LAST_ACK, TcpState.FIN_WAIT1, TcpState.CLOSING):
        return "survived", f"{state}: waiting for the peer to acknowledge our FIN"
    return "survived", state


def _current(items: list[PlanItem], namespaces: dict[int, netns_mod.NsRef]
             ) -> dict[int, Socket | bool | None]:
    """index -> the socket as it is now (None: gone; True: a dead fd still open)."""
    now: dict[int, Socket | bool | None] = {}
    groups: dict[int, list[PlanItem]] = defaultdict(list)
    for item in items:
        if item.socket is None:
            owner = item.owners[0]
            now[item.index] = True if _fd_points_at(owner.pid, owner.fd, item.dead_inode) \
                else None
        else:
            groups[item.socket.netns].append(item)
    for ns_inode, group in groups.items():
        ns = namespaces.get(ns_inode)
        if ns is None:
            now.update((i.index, None) for i in group)
            continue
        now.update(netns_mod.run_in(ns, lambda g=group: _look(g)))
    return now


def _look(items: list[PlanItem]) -> dict[int, Socket | None]:
    sock = sockdiag.open_socket()
    try:
        if len(items) > 64:  # one dump is cheaper than many exact look-ups
            ports = {i.socket.local_port for i in items}  # type: ignore[union-attr]
            program = sockdiag.port_filter(ports) \
                if len(ports) <= sockdiag.MAX_FILTER_PORTS else b""
            live = {sk.cookie: sk for sk in sockdiag.dump(
                sock, sockdiag.DumpOptions(sockdiag.ALL_STATES, bytecode=program))}
            return {i.index: live.get(i.socket.cookie) for i in items}  # type: ignore[union-attr]
        return {i.index: sockdiag.lookup(sock, i.socket) for i in items}  # type: ignore[arg-type]
    finally:
        sock.close()


def _fd_points_at(pid: int, fd: int, inode: int) -> bool:
    try:
        return os.readlink(f"/proc/{pid}/fd/{fd}") == f"socket:[{inode}]"
    except OSError:
        return False
