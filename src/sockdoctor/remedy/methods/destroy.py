"""destroy: the kernel aborts the socket, named with its cookie and 4-tuple.

The peer gets a reset, the program's next call fails with ECONNABORTED, and
an orphan (FIN-WAIT, LAST-ACK, TIME-WAIT) or a never-accepted connection is
dropped. With the kernel engine, bpf_sock_destroy() from one iter/tcp pass
per namespace, which checks each socket's identity and state under its lock
(no separate look beforehand); otherwise, and for what that pass did not
settle, SOCK_DESTROY over sock_diag after a last look at each socket's
state (256 requests per sendmsg). Either way the kernel compares the
cookie: a 4-tuple reused by another socket is left alone.
"""

from __future__ import annotations

import errno

from ...linux import host as hostmod
from ...model import Socket
from ..steps import Action, PlanItem
from .base import FIN_STATES, Choice, Method, Runtime, Target, moved_on

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
        # The kernel engine first: one pass checks each socket's identity and state under
        # its lock and ends it; the rest (engine off, TIME-WAIT, not met) as before.
        sockets = [i.socket for i in batch]
        met = hostmod.destroy_in_kernel(sockets, [_may_end(sk) for sk in sockets])  # type: ignore[arg-type]
        actions = [_in_kernel(item, m) for item, m in zip(batch, met, strict=True)
                   if m is not None]
        rest = [item for item, m in zip(batch, met, strict=True) if m is None]
        if rest:  # in batch order again
            actions += _sock_destroy(rest)
            order = {item.index: n for n, item in enumerate(batch)}
            actions.sort(key=lambda a: order[a.index])
        return actions

    def batches(self, items: list[PlanItem], size: int) -> list[list[PlanItem]]:
        # The kernel engine destroys a namespace's planned sockets in one pass over its
        # table: one batch per namespace then (unless a rate asks for one at a time).
        if size > 1 and _engine_usable():
            size = ENGINE_BATCH
        return super().batches(items, size)


ENGINE_BATCH = 1 << 16
VIA_KERNEL = "bpf_sock_destroy"  # linux/bpf/destroy.VIA, without loading ctypes here


def _engine_usable() -> bool:
    from ...linux.bpf import destroy as bpf_destroy  # only when destroying

    return bpf_destroy.usable()


_FIN_MASK = sum(1 << state for state in FIN_STATES)


def _may_end(sk: Socket) -> int:
    """The states a planned socket may still be ended in: ESTABLISHED and CLOSE-WAIT
    stay ours only while no FIN has gone out since the plan; other states: any."""
    return _FIN_MASK if sk.state in FIN_STATES else 0


def _detail(code: int, via: str) -> str:
    detail = _DETAIL.get(code, errno.errorcode.get(code, str(code)))
    return f"{detail} ({via})" if code == 0 else detail


def _in_kernel(item: PlanItem, met: tuple[int, int]) -> Action:
    code, state = met
    if code == errno.EALREADY:
        return moved_on(item.index, state)
    return Action(index=item.index, status=_STATUS.get(code, "failed"),
                  detail=_detail(code, VIA_KERNEL))


def _sock_destroy(batch: list[PlanItem]) -> list[Action]:
    """SOCK_DESTROY over sock_diag, after a last look at each socket's state."""
    actions, todo = _not_ours(batch)
    codes = hostmod.destroy([i.socket for i in todo]) if todo else []  # type: ignore[misc]
    return actions + [Action(index=item.index, status=_STATUS.get(code, "failed"),
                             detail=_detail(code, "SOCK_DESTROY"))
                      for item, code in zip(todo, codes, strict=True)]


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
            actions.append(moved_on(item.index, state))
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
