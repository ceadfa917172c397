"""drain: accept never-accepted connections through a duplicate of their listener, close them.

SOCK_DESTROY on a connection waiting in an accept queue removes it from the
TCP table but not from the queue: its backlog slot stays taken until the
program accepts it, so a server that stopped accepting stays unreachable
after `ss -K`. Draining frees the slots. Connections are identified by
cookie; never more are accepted than were planned, and a live client that
arrived meanwhile and was taken is closed gracefully and reported.
"""

from __future__ import annotations

from collections import defaultdict

from ...linux import host as hostmod
from ..steps import Action, PlanItem
from .base import Choice, Method, Runtime, Target


class Drain(Method):
    name = "drain"
    graceful = True
    paces_itself = True  # accept() hands out the oldest first: one batch per listener
    program_sees = ("nothing: the connection was never accept()ed; it is taken from the "
                    "accept queue and closed, freeing a backlog slot")
    peer_sees = ("a normal close (FIN): its read returns EOF (a reset if it had sent data "
                 "nobody read); a client that has closed its socket already sees nothing")

    def choose(self, t: Target, asked: bool) -> Choice:
        if not t.sk.queued:
            return Choice("", "drain only applies to connections waiting in an accept queue")
        if t.listener is None:
            return Choice("", "no visible process holds the listening socket")
        if not t.host.pidfd:
            return Choice("", "this kernel has no pidfd_getfd (Linux >= 5.6 needed)",
                          "unsupported")
        if asked:
            return Choice("drain", "asked: accept it from the listener's queue and close it")
        return Choice("drain", "never accept()ed: take it from the listener's accept queue "
                               "and close it")

    def batches(self, items: list[PlanItem], size: int) -> list[list[PlanItem]]:
        groups: dict[tuple[int, int, int], list[PlanItem]] = defaultdict(list)
        for item in items:
            assert item.listener is not None
            groups[(item.listener.pid, item.listener.fd, item.listener_inode)].append(item)
        return list(groups.values())

    def run(self, batch: list[PlanItem], rt: Runtime) -> list[Action]:
        holder = batch[0].listener
        assert holder is not None
        wanted = {i.socket.cookie: i for i in batch if i.socket is not None}
        first = [True]

        def pace() -> bool:  # the runner paced the first accept already
            if first[0]:
                first[0] = False
                return not rt.pacer.stop.is_set()
            return rt.pacer.wait()

        result = hostmod.drain_queue(holder.pid, holder.fd, batch[0].listener_inode,
                                     set(wanted), pace)
        return _actions(batch, result, rt.pacer.stop.is_set())


def _actions(batch: list[PlanItem], result: hostmod.Drained, stopped: bool) -> list[Action]:
    taken = set(result.taken)
    note = (f"; {result.foreign} live connection(s) that arrived meanwhile were taken from "
            "the queue and closed" if result.foreign else "")
    actions = []
    for item in batch:
        assert item.socket is not None
        if item.socket.cookie in taken:
            actions.append(Action(index=item.index, status="done",
                                  detail="accepted from the queue and closed"))
        elif not stopped:
            actions.append(Action(index=item.index, status="failed" if note else "already-gone",
                                  detail="no longer in the accept queue" + note))
    return actions
