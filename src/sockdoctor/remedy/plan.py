"""plan_kill(snapshot, policy, host) -> Plan: what will be done to which socket, and why.

Pure: it reads the snapshot, the policy and the host's facts and changes
nothing, not even its input, so a plan can be shown, confirmed (and written
out as JSON by `kill --json`) and then applied as the very same object. Per
selected socket:
1. the guards (listeners, the caller's own session, $SSH_CONNECTION) refuse
   it unless the policy says force;
2. the policy's methods are asked in order whether they can end it (auto:
   fin, drain, destroy, rst — the safest that works);
3. the chosen method says what the program and the peer will see.
"""

from __future__ import annotations

from collections import defaultdict

import msgspec

from .. import words
from ..errors import EXIT_FINDINGS, EXIT_OK, EXIT_PERMISSION, EXIT_UNSUPPORTED, UsageError
from ..linux.host import Host
from ..model import DeadSocketFd, Owner, Snapshot, Socket, TcpState
from .methods import BY_NAME, Choice, Method, Target
from .methods.base import FIN_STATES, HIDDEN_OWNER, UNSAFE
from .policy import KillPolicy
from .steps import OwnerRef, PlanItem

NOT_GATHERED = ("made without this host's facts (privileges, kernel features, the caller's own "
                "sockets): for reading, not for applying")
DESTROY_UNKNOWN = ("socket destroy: not verified yet; it is tried first on a connection of "
                   "sockdoctor's own, right before the first destroy; if this kernel cannot, "
                   "those sockets are left alone (then try --method rst)")


class Plan(msgspec.Struct, kw_only=True, frozen=True):
    """Every selected socket with its method (or why none), and how to apply them.

    A value: what was shown and confirmed is exactly what is applied.
    """

    items: tuple[PlanItem, ...]
    method: str  # the policy's methods, e.g. "auto" or "fin,destroy"
    host: Host
    rate: float = 0.0
    bare_close: bool = False
    notes: tuple[str, ...] = ()

    @property
    def actions(self) -> list[PlanItem]:
        return [item for item in self.items if item.method]

    def count_by_method(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for item in self.actions:
            counts[item.method] = counts.get(item.method, 0) + 1
        return counts

    @property
    def exit_code(self) -> int:
        """What a dry run answers: 0 when it would end every selected socket."""
        return exit_code_for({i.unable or "left" for i in self.items if not i.method})


def exit_code_for(failed: set[str]) -> int:
    """0 nothing failed; 4 or 5 when all failed for want of permission or of a feature."""
    if not failed:
        return EXIT_OK
    if failed == {"not-permitted"}:
        return EXIT_PERMISSION
    if failed == {"unsupported"}:
        return EXIT_UNSUPPORTED
    return EXIT_FINDINGS


def plan_kill(snapshot: Snapshot, policy: KillPolicy | None = None, *,
              host: Host | None = None) -> Plan:
    """The plan for the sockets of `snapshot` that `policy` selects (default: CLOSE-WAIT).

    host: this machine's facts (sockdoctor.host_facts()); without them the
    plan assumes every method works and nothing is protected, and can only
    be read. Raises UsageError when more than policy.max_count sockets would
    be acted on and the policy says refuse.
    """
    policy = policy or KillPolicy()
    host = host or Host()
    planner = _Planner(snapshot, policy, host)
    items = [planner.item(index, sk) for index, sk in enumerate(
        (sk for sk in snapshot.sockets if planner.selects(sk)), 1)]
    items += planner.dead_fd_items(len(items) + 1)
    items = _limit(items, policy)
    return Plan(items=tuple(items), method=policy.label, host=host, rate=policy.rate,
                bare_close=policy.bare_close, notes=tuple(_notes(items, policy, host)))


class _Planner:
    """What planning one snapshot needs at hand: names, listeners, the guards' facts."""

    def __init__(self, snapshot: Snapshot, policy: KillPolicy, host: Host) -> None:
        self.snapshot, self.policy, self.host = snapshot, policy, host
        self.selects = policy.selector(snapshot)  # Query.select's choice, made once
        self.names = words.netns_names(snapshot)
        self._listeners: dict[tuple[int, int], list[Socket]] | None = None
        self._decided: dict[tuple[int, bool, bool, bool, str],
                            tuple[Choice, tuple[str, str]]] = {}
        self._queue_notes: dict[int, str] = {}

    def item(self, index: int, sk: Socket) -> PlanItem:
        netns_name, owners = self._name(sk.netns), self._refs(sk)
        guard = guard_for(sk, self.policy.force, self.host)
        if guard:
            return PlanItem(index=index, socket=sk, netns_name=netns_name, netns_inode=sk.netns,
                            owners=owners, method="", why="refused: " + guard, skipped=guard)
        listener = self.listener_of(sk) if sk.queued else None
        ref, pids, note = None, (), ""
        if listener is not None:
            holder = listener.owners[0]
            ref = OwnerRef(holder.pid, holder.fd, self._comm(holder.pid))
            pids = tuple(sorted({o.pid for o in listener.owners}))
            note = self.queue_note(listener)
        (method, why, unable), (program_sees, peer_sees) = self.decide(sk, ref, note)
        return PlanItem(index=index, socket=sk, netns_name=netns_name, netns_inode=sk.netns,
                        owners=owners, method=method, why=why, unable=unable,
                        program_sees=program_sees, peer_sees=peer_sees, listener=ref,
                        listener_inode=listener.inode if listener is not None else 0,
                        listener_pids=pids)

    def decide(self, sk: Socket, listener: OwnerRef | None,
               queue_note: str = "") -> tuple[Choice, tuple[str, str]]:
        """The choice and its effects, which depend only on the socket's shape (cached:
        a plan of 16,000 alike sockets decides once)."""
        key = (sk.state, bool(sk.owners), sk.inode == 0, listener is not None, queue_note)
        found = self._decided.get(key)
        if found is None:
            choice = choose(Target(sk, self.host, listener, self.policy.bare_close,
                                   queue_note), self.policy)
            sees = BY_NAME[choice.method].effects(sk, self.policy.bare_close) \
                if choice.method else ("", "")
            found = self._decided[key] = (choice, sees)
        return found

    def listener_of(self, sk: Socket) -> Socket | None:
        """The owned listening socket whose accept queue holds `sk`: exact address first."""
        if self._listeners is None:
            self._listeners = defaultdict(list)
            for ls in self.snapshot.sockets:
                if ls.state == TcpState.LISTEN and ls.owners:
                    self._listeners[(ls.netns, ls.local_port)].append(ls)
        candidates = self._listeners.get((sk.netns, sk.local_port), [])
        exact = [ls for ls in candidates if ls.local_addr == sk.local_addr]
        wild = [ls for ls in candidates if ls.local_addr in ("0.0.0.0", "::")]
        return (exact or wild or [None])[0]

    def queue_note(self, listener: Socket) -> str:
        """"" when the listener's accept queue holds selected connections only, else why
        draining it could take a connection that is not in the plan."""
        note = self._queue_notes.get(listener.cookie)
        if note is None:
            note = self._queue_notes[listener.cookie] = self._queue_check(listener)
        return note

    def _queue_check(self, listener: Socket) -> str:
        on_port = (self._listeners or {}).get((listener.netns, listener.local_port), [])
        same = [ls for ls in on_port if ls.local_addr == listener.local_addr]
        if len(same) > 1:
            return (f"{len(same)} listening sockets share {listener.local_addr} port "
                    f"{listener.local_port}: which queue holds which connection cannot be "
                    "told, so draining could take one that is not planned")
        mine = sum(1 for sk in self.snapshot.sockets if sk.queued and sk.netns ==
                   listener.netns and sk.local_port == listener.local_port and self.selects(sk)
                   and self.listener_of(sk) is listener
                   and not guard_for(sk, self.policy.force, self.host))
        if listener.recv_q > mine:
            extra = listener.recv_q - mine
            return (f"its accept queue holds {extra} connection{'s' if extra != 1 else ''} "
                    "not in the plan, and accept() hands out the oldest first: draining "
                    "could end one of them")
        return ""

    def dead_fd_items(self, start: int) -> list[PlanItem]:
        """Descriptors of sockets in no TCP table (shut down, never closed)."""
        if self.policy.dead_fds == "no":
            return []
        where, close = self.policy.where, BY_NAME["close"]
        choice = close.choose_dead(self.host)  # type: ignore[attr-defined]
        items: list[PlanItem] = []
        for dead in self.snapshot.dead_fds:
            if where is not None and where.needs_owners and not where.match_owner(
                    _holder_only(dead), self.snapshot.processes):
                continue
            proc = self.snapshot.processes.get(dead.pid)
            netns = proc.netns if proc else 0
            method, why, skipped, sees = choice.method, choice.why, "", ("", "")
            if dead.inode in self.host.protected and not self.policy.force:
                method, skipped = "", "held by sockdoctor or by its own session"
                why = "refused: " + skipped
            elif method:
                sees = close.effects(None, self.policy.bare_close)
            item = PlanItem(index=start + len(items), socket=None, netns_name=self._name(netns),
                            netns_inode=netns, owners=(OwnerRef(dead.pid, dead.fd,
                                                                self._comm(dead.pid)),),
                            method=method, why=why, unable=choice.unable, skipped=skipped,
                            program_sees=sees[0], peer_sees=sees[1], dead_inode=dead.inode)
            items.append(item)
        return items

    def _name(self, netns: int) -> str:
        return self.names.get(netns, str(netns) if netns else "")

    def _comm(self, pid: int) -> str:
        proc = self.snapshot.processes.get(pid)
        return proc.comm if proc else ""

    def _refs(self, sk: Socket) -> tuple[OwnerRef, ...]:
        return tuple(OwnerRef(o.pid, o.fd, self._comm(o.pid)) for o in sk.owners)


def _holder_only(dead: DeadSocketFd) -> Socket:
    """A stand-in socket held by the dead descriptor, for the --pid/--process match."""
    return Socket(0, 0, 0, "", 0, "", 0, dead.inode, 0, 0, 0, 0,
                  owners=[Owner(dead.pid, dead.fd)])


def _normal_addr(addr: str) -> str:
    return addr[7:] if addr.startswith("::ffff:") else addr


def guard_for(sk: Socket, force: bool, host: Host) -> str:
    """Why this socket is off limits ("" when it is not), unless forced."""
    if force:
        return ""
    if sk.state == TcpState.LISTEN:
        return "a listening socket (use --force to include listeners)"
    if sk.inode and sk.inode in host.protected:
        return "held by sockdoctor or by its own session (e.g. your SSH connection)"
    if host.ssh and (_normal_addr(sk.local_addr), sk.local_port, _normal_addr(sk.peer_addr),
                     sk.peer_port) in host.ssh:
        return "your own SSH connection ($SSH_CONNECTION)"
    return ""


def choose(t: Target, policy: KillPolicy) -> Choice:
    """The first of the policy's methods that can end the socket, and why."""
    refusals: list[tuple[Method, Choice]] = []
    for name in policy.order:
        method = BY_NAME[name]
        choice = method.choose(t, policy.asked)
        if choice.method:
            if method.graceful or not refusals:
                return choice
            return Choice(choice.method, f"{_because(t, refusals)}: {choice.why}")
        refusals.append((method, choice))
    if policy.asked:
        return refusals[0][1]
    unables = {c.unable for _, c in refusals if c.unable}
    unable = "not-permitted" if "not-permitted" in unables else next(iter(unables), "")
    return Choice("", _because(t, refusals, "; ") if unables else
                  f"{_no_fin_reason(t)}; {', '.join(policy.order)} cannot end it", unable)


def _because(t: Target, refusals: list[tuple[Method, Choice]], joiner: str = ", and ") -> str:
    """Why the safer methods were passed over, for the socket `t`."""
    extra = [c.why for m, c in refusals if c.unable and (not m.graceful or c.unable == UNSAFE)]
    return _no_fin_reason(t) + (joiner + "; ".join(extra) if extra else "")


def _no_fin_reason(t: Target) -> str:
    sk = t.sk
    if sk.state == TcpState.LISTEN:
        return "a listening socket"
    if not sk.owners:
        return HIDDEN_OWNER if sk.inode else "no process holds it"
    if sk.state not in FIN_STATES:
        return f"our FIN is already out ({words.state_name(sk.state)})"
    if not t.host.pidfd:
        return "its owner cannot be reached with pidfd_getfd"
    return "a graceful shutdown was not among the methods allowed"


def _limit(items: list[PlanItem], policy: KillPolicy) -> list[PlanItem]:
    """--max: refuse the whole plan, or leave the rest for a later run (the reaper)."""
    actions = sum(1 for item in items if item.method)
    if actions <= policy.max_count:
        return items
    if policy.over_max == "refuse":
        raise UsageError(
            f"this would act on {actions} sockets, more than --max {policy.max_count}; "
            "narrow the filter or raise --max")
    skipped = f"over the limit of {policy.max_count} per run: left for later"
    out, kept = [], 0
    for item in items:
        if item.method:
            kept += 1
            if kept > policy.max_count:
                item = msgspec.structs.replace(item, method="", program_sees="", peer_sees="",
                                               skipped=skipped, why="deferred: " + skipped)
        out.append(item)
    return out


def _notes(items: list[PlanItem], policy: KillPolicy, host: Host) -> list[str]:
    notes = []
    if not host.gathered:
        notes.append(NOT_GATHERED)
    methods = {item.method for item in items}
    if "destroy" in methods and host.destroy is None:
        notes.append(DESTROY_UNKNOWN)
    if host.destroy is False and "destroy" in policy.order and host.destroy_note:
        notes.append(f"socket destroy: {host.destroy_note}")
    if "fin" in methods:
        notes.append(_fin_note([i for i in items if i.method == "fin"]))
    return notes


def _fin_note(items: list[PlanItem]) -> str:
    pids = sorted({i.owners[0].pid for i in items})
    after = "sockdoctor kill --dead-fds " + " ".join(f"--pid {p}" for p in pids[:3]) + \
        (" ..." if len(pids) > 3 else "")
    return ("fin leaves each descriptor open: the program keeps it, and the socket's memory, "
            "until it closes it itself. To release them in the same step use --method close; "
            f"afterwards: {after}")
