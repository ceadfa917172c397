"""destroy: the kernel's SOCK_DESTROY over sock_diag, the socket named with its cookie.

The peer gets a reset, the program's next call fails with ECONNABORTED, and
an orphan (FIN-WAIT, LAST-ACK, TIME-WAIT) or a never-accepted connection is
dropped. The kernel compares the cookie: a 4-tuple reused by another socket
is left alone (ENOENT). 256 requests go out per sendmsg.
"""

from __future__ import annotations

import errno

from ... import words
from ...linux import host as hostmod
from ..steps import Action, PlanItem
from .base import FIN_STATES, Choice, Method, Runtime, Target

_STATUS = {0: "done", errno.ENOENT: "already-gone", errno.ESTALE: "identity-changed",
           errno.EPERM: "not-permitted", errno.EACCES: "not-permitted",
           errno.EOPNOTSUPP: "unsupported"}
_DETAIL = {0: "destroyed", errno.EOPNOTSUPP: hostmod.NO_DESTROY_BUILD,
           errno.ENOENT: "no such socket any more (closed, or its 4-tuple now belongs to "
                         "another socket, which was left alone)"}


class Destroy(Method):
    name = "destroy"
    in_netns = True
    by_state = True
    program_sees = "its next read or write fails with ECONNABORTED; the descriptor stays open"
    peer_sees = "a reset (RST): ECONNRESET; data not yet sent is dropped"

    def choose(self, t: Target, asked: bool) -> Choice:
        host = t.host
        if host.destroy is False:
            return Choice("", host.destroy_note or "this kernel cannot destroy sockets",
                          "unsupported" if host.net_admin else "not-permitted")
        if not asked:
            return Choice("destroy", "kernel SOCK_DESTROY")
        note = " (its accept-queue slot stays taken until the program accepts it)" \
            if t.sk.queued else ""
        return Choice("destroy", f"asked: kernel SOCK_DESTROY{note}")

    def run(self, batch: list[PlanItem], rt: Runtime) -> list[Action]:
        works, note = _checked(rt)
        if not works:
            status = "not-permitted" if note == hostmod.NO_NET_ADMIN else "unsupported"
            return [Action(index=i.index, status=status, detail=note) for i in batch]
        actions, todo = _not_ours(batch)
        done = hostmod.destroy_via([i.socket for i in todo]) if todo else []  # type: ignore[misc]
        actions += [Action(index=item.index, status=_STATUS.get(code, "failed"),
                           detail=_detail(code, via))
                    for item, (code, via) in zip(todo, done, strict=True)]
        order = {item.index: n for n, item in enumerate(batch)}
        return sorted(actions, key=lambda a: order[a.index])

    def batches(self, items: list[PlanItem], size: int) -> list[list[PlanItem]]:
        # The kernel engine destroys a namespace's planned sockets in one pass over its
        # table: one batch per namespace then (unless a rate asks for one at a time).
        if size > 1 and _engine_usable():
            size = ENGINE_BATCH
        return super().batches(items, size)


ENGINE_BATCH = 1 << 16


def _engine_usable() -> bool:
    from ...linux.bpf import destroy as bpf_destroy  # only when destroying

    return bpf_destroy.usable()


def _detail(code: int, via: str) -> str:
    detail = _DETAIL.get(code, errno.errorcode.get(code, str(code)))
    return f"{detail} ({via})" if code == 0 else detail


def _not_ours(batch: list[PlanItem]) -> tuple[list[Action], list[PlanItem]]:
    """Read every socket's state right before acting (under the actors' lock): one that is
    gone, or whose FIN another hand has sent since the plan, is not ours to claim."""
    states = hostmod.states_now([i.socket for i in batch])  # type: ignore[misc]
    actions, todo = [], []
    for item, state in zip(batch, states, strict=True):
        planned = item.socket.state  # type: ignore[union-attr]
        if state is None:
            actions.append(Action(index=item.index, status="already-gone",
                                  detail=_DETAIL[errno.ENOENT]))
        elif planned in FIN_STATES and state not in FIN_STATES:
            actions.append(Action(index=item.index, status="already-gone", detail=(
                f"already {words.state_name(state)} when we came: ended by another hand, "
                "left as it was")))
        else:
            todo.append(item)
    return actions, todo


def _checked(rt: Runtime) -> tuple[bool, str]:
    """Whether SOCK_DESTROY works, tried once on a connection of our own if not known."""
    if rt.host.destroy is not None:
        return rt.host.destroy, rt.host.destroy_note
    if rt.destroy_checked is None:
        rt.destroy_checked = hostmod.probe_destroy()
    return rt.destroy_checked
