"""The values a plan is made of: who holds a socket, one planned step, one action taken."""

from __future__ import annotations

import msgspec

from .. import words
from ..model import Socket


class OwnerRef(msgspec.Struct, frozen=True):
    """One descriptor of one process, named as the plan shows it."""

    pid: int
    fd: int
    comm: str = ""


class PlanItem(msgspec.Struct, kw_only=True, frozen=True):
    """One selected socket (or dead descriptor) and what will be done to it.

    method is "" when nothing will be done: then `skipped` names the guard
    that refused it, or `unable` says whether it was for want of permission
    ("not-permitted") or of a kernel feature ("unsupported"), and `why` says
    it in words.
    """

    index: int
    socket: Socket | None  # None for a dead descriptor
    netns_name: str
    netns_inode: int
    owners: tuple[OwnerRef, ...]
    method: str
    why: str
    program_sees: str = ""
    peer_sees: str = ""
    skipped: str = ""
    unable: str = ""
    listener: OwnerRef | None = None  # drain: the listening socket's holder
    listener_inode: int = 0
    listener_pids: tuple[int, ...] = ()  # drain: all its holders
    dead_inode: int = 0  # a dead descriptor: the socket inode it must still name

    @property
    def label(self) -> str:
        sk = self.socket
        if sk is None:
            owner = self.owners[0]
            return f"dead fd {owner.fd} of {words.untrusted(owner.comm)}({owner.pid})"
        return (f"{words.state_name(sk.state)} "
                f"{words.endpoint(sk.local_addr, sk.local_port, sk.family)} -> "
                f"{words.endpoint(sk.peer_addr, sk.peer_port, sk.family, peer=True)}")

    @property
    def inode(self) -> int:
        return self.socket.inode if self.socket is not None else self.dead_inode


class Action(msgspec.Struct, kw_only=True):
    """What happened when one item was acted on (before verification).

    status: done | already-gone | identity-changed | not-permitted |
    unsupported | failed.
    """

    index: int
    status: str
    detail: str = ""
