"""What every kill method is: eligibility, effects, action, verification.

A method is one class in one module of this package. The planner asks it
whether it can end a socket (`choose`) and what each side will see
(`effects`); apply_plan hands it batches of planned items (`run`), and the
verification asks it what the socket's state afterwards means (`judge`).
Everything it does to the kernel goes through linux/host.py.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

from ... import words
from ...linux import host as hostmod
from ...model import Socket, TcpState
from ..steps import Action, OwnerRef, PlanItem

FIN_STATES = frozenset({TcpState.ESTABLISHED, TcpState.CLOSE_WAIT})
PEER_DONE_STATES = frozenset({TcpState.LAST_ACK, TcpState.CLOSING, TcpState.TIME_WAIT})

# What the program and the peer see where the facts differ from a method's usual effects.
NO_PROGRAM = "nothing: no program holds it any more"
STILL_QUEUED = ("nothing yet: accept() still hands it out later, already ended, and its "
                "backlog slot stays taken until then")
PEER_CLOSED = "nothing: it has closed its side already"
PEER_HAS_OUR_FIN = "a reset (RST); it has read our FIN already, so its next write fails (EPIPE)"
PEER_LATE_RESET = ("nothing at once: the kernel keeps an orphaned FIN-WAIT-2 as a bare timer "
                   "and drops it without a reset; the peer's next write is answered with one")
LISTENER = ("it stops listening: accept() fails from now on",
            "clients waiting in its accept queue are reset; new ones are refused")
UNSAFE = "unsafe"  # Choice.unable: the method could act, but not on this socket alone
HIDDEN_OWNER = "the process holding it is not visible here (another user's? run as root)"


class Choice(NamedTuple):
    """A method for one socket and why; method "" when it cannot be used."""

    method: str
    why: str
    unable: str = ""  # with no method: "unsupported" or "not-permitted" when that is why


@dataclass(frozen=True)
class Target:
    """One selected socket as the planner sees it."""

    sk: Socket
    host: hostmod.Host
    listener: OwnerRef | None = None  # holder of the listener whose queue has it
    bare_close: bool = False
    queue_note: str = ""  # why draining its queue could take an unplanned connection

    @property
    def owned(self) -> bool:
        return bool(self.sk.owners)

    @property
    def hidden(self) -> bool:
        """A descriptor holds it, but no process we could read has it."""
        return not self.sk.owners and self.sk.inode != 0


class Pacer:
    """Spaces actions out to at most `rate` per second; stops waiting when told to stop."""

    def __init__(self, rate: float, stop: threading.Event) -> None:
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self.stop = stop
        self.next = time.monotonic()

    def batch_size(self, default: int) -> int:
        return 1 if self.interval else default

    def wait(self) -> bool:
        """Wait for the next slot; False when a stop was asked for instead."""
        if self.interval:
            now = time.monotonic()
            if now < self.next and self.stop.wait(self.next - now):
                return False
            self.next = max(now, self.next) + self.interval
        return not self.stop.is_set()


@dataclass
class Runtime:
    """What a method needs while applying: pacing, namespaces, shared answers."""

    pacer: Pacer
    namespaces: hostmod.Namespaces
    host: hostmod.Host
    bare_close: bool = False
    destroy_checked: tuple[bool, str] | None = None  # the lazy SOCK_DESTROY probe's answer


class Method:
    """One way of ending a socket. Subclasses set the class attributes and override."""

    name: ClassVar[str]
    graceful: ClassVar[bool] = False  # its refusals explain why auto went further
    batch: ClassVar[int] = 256
    in_netns: ClassVar[bool] = False  # acts from inside the socket's namespace
    paces_itself: ClassVar[bool] = False
    by_state: ClassVar[bool] = False  # acts in the kernel: what each side sees varies by state
    program_sees: ClassVar[str]
    peer_sees: ClassVar[str]

    def choose(self, t: Target, asked: bool) -> Choice:
        """Whether this method can end t.sk; `asked`: named alone, not tried in an order."""
        raise NotImplementedError

    def effects(self, sk: Socket, bare_close: bool = False) -> tuple[str, str]:
        """(what the owning program sees, what the peer sees) when this method ends sk."""
        if self.by_state:
            return state_effects(self, sk, (self.program_sees, self.peer_sees))
        return self.program_sees, self.peer_sees

    def batches(self, items: list[PlanItem], size: int) -> list[list[PlanItem]]:
        """Items grouped as the method acts on them (one namespace, or one process)."""
        groups: dict[int, list[PlanItem]] = defaultdict(list)
        for item in items:
            groups[item.netns_inode if self.in_netns else item.owners[0].pid].append(item)
        return [group[i:i + size] for group in groups.values()
                for i in range(0, len(group), size)]

    def act(self, batch: list[PlanItem], rt: Runtime) -> list[Action]:
        """Carry out one batch: an Action for each item acted on (none if stopped first)."""
        try:
            if self.in_netns:
                return rt.namespaces.run_in(batch[0].netns_inode, lambda: self.run(batch, rt))
            return self.run(batch, rt)
        except hostmod.Errors as exc:
            return failed(batch, exc)

    def run(self, batch: list[PlanItem], rt: Runtime) -> list[Action]:
        raise NotImplementedError

    def judge(self, item: PlanItem, now: Socket | None) -> tuple[str, str]:
        """(outcome, state now) for an item this method acted on; now None: gone."""
        if now is None:
            return "closed", ""
        state = words.state_name(now.state)
        if now.state == TcpState.TIME_WAIT or now.orphaned:
            return "closing", f"{state} (the kernel finishes the close on its own)"
        if now.state == TcpState.FIN_WAIT2:
            return "half-closed", f"{state}: our FIN is out, the peer has not closed its side"
        if now.state in (TcpState.LAST_ACK, TcpState.FIN_WAIT1, TcpState.CLOSING):
            return "survived", f"{state}: waiting for the peer to acknowledge our FIN"
        return "survived", state


def moved_on(index: int, state: int) -> Action:
    """A planned socket found in another state when its method came: not ours to end."""
    return Action(index=index, status="already-gone", detail=(
        f"already {words.state_name(state)} when we came: ended by another hand, "
        "left as it was"))


def failed(items: list[PlanItem], exc: BaseException) -> list[Action]:
    """The same error for every item of a batch."""
    status, detail = hostmod.status_of(exc), hostmod.describe(exc)
    return [Action(index=i.index, status=status, detail=detail) for i in items]


def state_effects(method: Method, sk: Socket, usual: tuple[str, str]) -> tuple[str, str]:
    """What a kernel-side method (destroy, rst) does, by the socket's state and holder."""
    program, peer = usual
    st = sk.state
    if st == TcpState.LISTEN:
        return LISTENER
    orphan = not sk.owners and sk.inode == 0
    if orphan:
        program = STILL_QUEUED if sk.queued else NO_PROGRAM
    if st in PEER_DONE_STATES:
        peer = PEER_CLOSED
    elif st == TcpState.FIN_WAIT2:
        peer = PEER_LATE_RESET if orphan and method.name == "destroy" else PEER_HAS_OUR_FIN
    return program, peer


def one_by_one(batch: list[PlanItem], rt: Runtime,
               act: Callable[[PlanItem], Action]) -> list[Action]:
    """Act on each item in turn; stop (leaving the rest not tried) when told to."""
    done = []
    for index, item in enumerate(batch):
        if index and not rt.pacer.wait():
            break
        done.append(act(item))
    return done
