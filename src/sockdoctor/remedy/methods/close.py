"""close: shutdown() and the release of the descriptor, injected into the owner with ptrace.

What `gdb -p PID -ex 'print close(FD)'` does, minus its danger: a bare
close() frees the number, the program's next open()/accept() gets it, and
its next write on the old connection object lands in the new file or in
another client's socket. So by default the descriptor is swapped for an
unconnected placeholder socket (socket + dup3 + close, in the owner): the
kernel socket is released, the number stays taken until the program closes
it, and its reads and writes there fail as on any dead connection. The bare
close is an explicit choice (`--bare-close`), for a process that must get
the descriptor itself back. Never chosen by `auto`.

The placeholder is a unix socket named "sockdoctor-closed:PID:FD:INODE"
(`ss -xp | grep sockdoctor-closed`), so the doctor never takes it for a
leaked TCP socket and --dead-fds never selects it. An event loop loses its
epoll registration with the old socket; the placeholder is put into the same
epoll sets, so the loop hears a hang-up and closes it. A descriptor the
program watches nowhere and never touches again keeps its placeholder until
the program exits: the plan says so.
"""

from __future__ import annotations

import errno
from collections import defaultdict
from typing import Any

from ...linux import host as hostmod
from ...model import Socket, TcpState
from ..steps import Action, PlanItem
from .base import FIN_STATES, HIDDEN_OWNER, LISTENER, Choice, Method, Runtime, Target

PLACEHOLDER_SEES = ("the connection is released inside the program (ptrace); its descriptor "
                    "number stays taken by a placeholder (a unix socket named "
                    "sockdoctor-closed) until the program closes it: reads and writes on it "
                    "fail (ENOTCONN), an event loop watching it (epoll) is told it hung up, "
                    "the number is never reused behind its back; a descriptor the program "
                    "never looks at again keeps its placeholder until the program exits")
BARE_SEES = ("the descriptor is closed inside the program (like gdb's close(fd)); it may "
             "later reuse that number for something else (--bare-close)")
DEAD_PEER = "nothing: the connection is already over"


class Close(Method):
    name = "close"
    batch = 64  # descriptors handled in one stop of the owner
    program_sees = PLACEHOLDER_SEES
    peer_sees = "a normal close (FIN): its read returns EOF"

    def choose(self, t: Target, asked: bool) -> Choice:
        if t.hidden:
            return Choice("", f"close needs its owner, and {HIDDEN_OWNER}", "not-permitted")
        if not t.owned:
            return Choice("", "close needs a process that holds the socket; none does")
        if not t.host.ptrace:
            return Choice("", "ptrace injection is only implemented for x86_64", "unsupported")
        how = ("shutdown() and close() injected into the owner (ptrace); the number is freed"
               if t.bare_close else "shutdown() injected into the owner (ptrace), the "
               "descriptor swapped for a placeholder")
        return Choice("close", ("asked: " if asked else "") + how)

    def choose_dead(self, host: hostmod.Host) -> Choice:
        """For a descriptor whose socket is in no table: only closing it frees it."""
        if not host.ptrace:
            return Choice("", "ptrace injection is only implemented for x86_64", "unsupported")
        return Choice("close", "the socket is in no TCP table any more; only releasing the "
                               "descriptor frees it")

    def effects(self, sk: Socket | None, bare_close: bool = False) -> tuple[str, str]:
        program = BARE_SEES if bare_close else PLACEHOLDER_SEES
        if sk is None:
            return program, DEAD_PEER
        if sk.state == TcpState.LISTEN:
            return LISTENER
        peer = self.peer_sees if sk.state in FIN_STATES else \
            "nothing new: our FIN went out already"
        return program, peer

    def run(self, batch: list[PlanItem], rt: Runtime) -> list[Action]:
        """Every descriptor of each socket, one stop per process; one failure counts."""
        targets: dict[int, list[tuple[int, int, int]]] = defaultdict(list)  # pid -> fd,ino,idx
        for item in batch:
            for owner in item.owners:
                targets[owner.pid].append((owner.fd, item.inode, item.index))
        status: dict[int, Action] = {}
        for pid, group in targets.items():
            try:
                results = hostmod.close_fds(pid, [(fd, ino) for fd, ino, _ in group],
                                            placeholder=not rt.bare_close)
            except hostmod.Errors as exc:
                for _, _, index in group:
                    status.setdefault(index, Action(index=index, status=hostmod.status_of(exc),
                                                    detail=hostmod.describe(exc)))
                continue
            for (fd, _, index), result in zip(group, results, strict=True):
                status[index] = _worse(status.get(index), _action(index, fd, result))
        return [status[item.index] for item in batch]

    def judge(self, item: PlanItem, now: Socket | None) -> tuple[str, str]:
        if item.socket is None:  # a dead descriptor: `now` is its socket if still held
            return ("closed", "") if now is None else ("survived", "fd still open")
        return super().judge(item, now)


def _action(index: int, fd: int, result: Any) -> Action:
    if not hostmod.is_close_result(result):
        exc = result if isinstance(result, BaseException) else RuntimeError(str(result))
        return Action(index=index, status=hostmod.status_of(exc), detail=hostmod.describe(exc))
    note = f"; the interrupted {result.interrupted} {result.after}" if result.interrupted else ""
    if result.close_rc == 0:
        watched = f", in {result.rewatched} epoll set(s) in the old one's place" \
            if result.rewatched else ""
        done = f"fd {fd} now holds a placeholder{watched}" if result.placeholder \
            else f"fd {fd} closed"
        return Action(index=index, status="done", detail=done + note)
    if result.close_rc == -errno.EMFILE:
        return Action(index=index, status="failed", detail=(
            f"the process is at its descriptor limit, so no placeholder could be made for "
            f"fd {fd}: our FIN went out, the descriptor is kept (--bare-close frees it)"))
    code = -result.close_rc
    return Action(index=index, status="failed",
                  detail=f"releasing fd {fd} failed: {errno.errorcode.get(code, code)}")


def _worse(previous: Action | None, action: Action) -> Action:
    """One failed descriptor of a socket is what counts."""
    return previous if previous is not None and previous.status != "done" else action
