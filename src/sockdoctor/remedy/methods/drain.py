"""drain: accept never-accepted connections through a duplicate of their listener, close them.

SOCK_DESTROY on a connection waiting in an accept queue removes it from the
TCP table but not from the queue: its backlog slot stays taken until the
program accepts it, so a server that stopped accepting stays unreachable
after `ss -K`. Draining frees the slots.

accept() hands out the oldest connection first, and a connection once
accepted cannot be given back. So drain is only planned where the queue
holds nothing but planned connections and one listener serves the port,
and it only acts when that still holds with every holder of the listener
stopped for the moment (linux/host.py: drain_queue); anywhere else the plan
says why and uses destroy (or leaves it, when drain was asked for).
"""

from __future__ import annotations

from collections import defaultdict

from ...linux import host as hostmod
from ..steps import Action, PlanItem
from .base import UNSAFE, Choice, Method, Runtime, Target


class Drain(Method):
    name = "drain"
    graceful = True
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
        if not t.host.ptrace:
            return Choice("", "drain holds the listener's owner still while it accepts "
                              "(ptrace), implemented for x86_64 only", "unsupported")
        if t.queue_note:
            return Choice("", t.queue_note, UNSAFE)
        if asked:
            return Choice("drain", "asked: accept it from the listener's queue and close it")
        return Choice("drain", "never accept()ed: take it from the listener's accept queue "
                               "and close it")

    def batches(self, items: list[PlanItem], size: int) -> list[list[PlanItem]]:
        """One batch per listener: its planned connections are taken in one go."""
        groups: dict[tuple[int, int, int], list[PlanItem]] = defaultdict(list)
        for item in items:
            assert item.listener is not None
            groups[(item.listener.pid, item.listener.fd, item.listener_inode)].append(item)
        return list(groups.values())

    def run(self, batch: list[PlanItem], rt: Runtime) -> list[Action]:
        holder = batch[0].listener
        assert holder is not None
        wanted = {i.socket.cookie: i for i in batch if i.socket is not None}
        holders = sorted({*batch[0].listener_pids, holder.pid})

        def queued_now() -> set[int]:
            sockets = [i.socket for i in batch if i.socket is not None]
            live = rt.namespaces.run_in(batch[0].netns_inode, lambda: hostmod.look(sockets))
            return {c for c, sk in live.items() if sk is not None and sk.inode == 0}

        result = hostmod.drain_queue((holder.pid, holder.fd, batch[0].listener_inode),
                                     holders, set(wanted), queued_now,
                                     lambda: not rt.pacer.stop.is_set())
        return _actions(batch, result, rt.pacer.stop.is_set())


def _actions(batch: list[PlanItem], result: hostmod.Drained, stopped: bool) -> list[Action]:
    taken = set(result.taken)
    note = ("; NOT PLANNED, taken from the queue and shut down: " + ", ".join(result.foreign)
            if result.foreign else "")
    actions = []
    for item in batch:
        assert item.socket is not None
        if item.socket.cookie in taken:
            actions.append(Action(index=item.index, status="done",
                                  detail="accepted from the queue and closed" + note))
        elif result.refused:
            actions.append(Action(index=item.index, status="identity-changed",
                                  detail=result.refused))
        elif not stopped:
            actions.append(Action(index=item.index, status="already-gone",
                                  detail="no longer in the accept queue (accepted or ended "
                                         "by another hand)"))
    return actions
