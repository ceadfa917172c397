"""fin: shutdown() through a pidfd_getfd duplicate of the owner's descriptor.

Our FIN goes out, the program's descriptor stays valid (its next read
returns EOF), no number is freed behind its back. The safest method, and
what `auto` picks for every owned socket that still has to send its FIN.
"""

from __future__ import annotations

from ... import words
from ...linux import host as hostmod
from ...model import TcpState
from ..steps import Action, PlanItem
from .base import (
    FIN_STATES,
    HIDDEN_OWNER,
    Choice,
    Method,
    Runtime,
    Target,
    moved_on,
    one_by_one,
)


class Fin(Method):
    name = "fin"
    graceful = True
    program_sees = ("its descriptor stays open; the next read returns 0 (EOF), writes fail "
                    "with EPIPE")
    peer_sees = "a normal close (FIN): its read returns EOF"

    def choose(self, t: Target, asked: bool) -> Choice:
        st = t.sk.state
        if t.hidden:
            return Choice("", f"fin needs its owner, and {HIDDEN_OWNER}", "not-permitted")
        if not t.owned:
            instead = "drain or destroy" if t.sk.queued else "destroy"
            return Choice("", f"fin needs a process that holds the socket; none does "
                              f"(try {instead})")
        if st not in FIN_STATES:
            done = "it is a listening socket" if st == TcpState.LISTEN else \
                "our FIN was already sent"
            return Choice("", f"fin cannot end {words.state_name(st)}: {done} (try destroy)")
        if not t.host.pidfd:
            return Choice("", "this kernel has no pidfd_getfd (Linux >= 5.6 needed)",
                          "unsupported")
        if asked:
            return Choice("fin", "asked: graceful shutdown through a duplicated descriptor")
        return Choice("fin", "owned, still has to send its FIN: graceful shutdown, fd kept")

    def run(self, batch: list[PlanItem], rt: Runtime) -> list[Action]:
        pid = batch[0].owners[0].pid
        with hostmod.open_process(pid) as handle:
            return one_by_one(batch, rt, lambda item: _shut(handle, item))


def _shut(handle: object, item: PlanItem) -> Action:
    assert item.socket is not None
    fd = item.owners[0].fd
    try:
        state = hostmod.shutdown(handle, fd, item.socket.inode,  # type: ignore[arg-type]
                                 FIN_STATES)
    except hostmod.Errors as exc:
        return Action(index=item.index, status=hostmod.status_of(exc),
                      detail=hostmod.describe(exc))
    if state not in FIN_STATES:  # someone else sent the FIN (or it was reset): not ours
        return moved_on(item.index, state)
    return Action(index=item.index, status="done", detail=f"shut down (was {state.ss_name})")
