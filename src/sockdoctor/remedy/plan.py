"""Deciding, per socket, whether to act, by which method, and what everyone will see.

Planning reads only model objects: it changes nothing, so a dry run is the
plan itself. The order of preference (safest first) is:
  fin      owned socket that still has to send its FIN (CLOSE-WAIT, ESTABLISHED)
  drain    never-accept()ed connection waiting in a listener's accept queue
  destroy  everything else the kernel can abort (no owner, FIN-WAIT-*, LAST-ACK,
           TIME-WAIT), or when fin is impossible
  rst      when the kernel has no SOCK_DESTROY
`close` is never chosen automatically: it frees the descriptor number, which
the program may reuse without knowing.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import msgspec

from ..model import Process, Snapshot, Socket, TcpState
from ..render import fmt

METHODS = ("auto", "fin", "drain", "destroy", "close", "rst")

# What the owning program and the peer observe, per method.
EFFECTS: dict[str, tuple[str, str]] = {
    "fin": ("its descriptor stays open; the next read returns 0 (EOF), writes fail with EPIPE",
            "a normal close (FIN): its read returns EOF"),
    "drain": ("nothing: the connection was never accept()ed; it is taken from the accept "
              "queue and closed, freeing a backlog slot",
              "a normal close (FIN): its read returns EOF (a reset if it had sent data nobody "
              "read); a client that has closed its socket already sees nothing"),
    "destroy": ("its next read or write fails with ECONNABORTED; the descriptor stays open",
                "a reset (RST): ECONNRESET; data not yet sent is dropped"),
    "close": ("the descriptor is closed inside the program (like gdb's close(fd)); it may "
              "later reuse that number for something else",
              "a normal close (FIN): its read returns EOF"),
    "rst": ("its next read or write fails (ECONNRESET or EPIPE); the descriptor stays open",
            "a reset (RST), if it is still there: ECONNRESET"),
}

# Where the facts differ from EFFECTS: by the socket's state and whether anyone holds it.
_NO_PROGRAM = "nothing: no program holds it any more"
_STILL_QUEUED = ("nothing yet: accept() still hands it out later, already ended, and its "
                 "backlog slot stays taken until then")
_PEER_CLOSED = "nothing: it has closed its side already"
_PEER_HAS_OUR_FIN = ("a reset (RST); it has read our FIN already, so its next write fails "
                     "(EPIPE)")
_PEER_LATE_RESET = ("nothing at once: the kernel keeps an orphaned FIN-WAIT-2 as a bare timer "
                    "and drops it without a reset; the peer's next write is answered with one")
_LISTENER = ("it stops listening: accept() fails from now on",
             "clients waiting in its accept queue are reset; new ones are refused")

# A descriptor holds it (inode != 0) but no process we can read has it.
_HIDDEN_OWNER = "the process holding it is not visible here (another user's? run as root)"

_FIN_STATES = {TcpState.ESTABLISHED, TcpState.CLOSE_WAIT}
_QUEUE_STATES = {TcpState.ESTABLISHED, TcpState.CLOSE_WAIT}
_PEER_DONE_STATES = {TcpState.LAST_ACK, TcpState.CLOSING, TcpState.TIME_WAIT}


class OwnerRef(msgspec.Struct, frozen=True):
    pid: int
    fd: int
    comm: str = ""


class PlanItem(msgspec.Struct, kw_only=True):
    """One socket (or one dead descriptor) and what will be done to it."""

    index: int
    socket: Socket | None
    netns_name: str
    owners: list[OwnerRef]
    method: str  # "" when skipped
    why: str
    program_sees: str = ""
    peer_sees: str = ""
    skipped: str = ""  # the guard that refused it
    unable: str = ""  # no method: "" (none applies), "unsupported" or "not-permitted"
    listener: OwnerRef | None = None  # for drain: the listening socket's holder
    listener_inode: int = 0
    dead_inode: int = 0  # for a dead descriptor: the inode it must still point at

    @property
    def label(self) -> str:
        sk = self.socket
        if sk is None:
            owner = self.owners[0]
            return f"dead fd {owner.fd} of {owner.comm}({owner.pid})"
        return (f"{fmt.state_name(sk.state)} "
                f"{fmt.endpoint(sk.local_addr, sk.local_port, sk.family)} -> "
                f"{fmt.endpoint(sk.peer_addr, sk.peer_port, sk.family, peer=True)}")


class Plan(msgspec.Struct, kw_only=True):
    items: list[PlanItem]
    method: str
    notes: list[str] = msgspec.field(default_factory=list)

    @property
    def actions(self) -> list[PlanItem]:
        return [item for item in self.items if item.method]

    def count_by_method(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for item in self.actions:
            counts[item.method] = counts.get(item.method, 0) + 1
        return counts


class Capabilities(msgspec.Struct, kw_only=True):
    """What this kernel and these privileges allow; probed, never assumed."""

    pidfd: bool = True
    destroy: bool = True
    ptrace_close: bool = True
    raw: bool = True
    destroy_note: str = ""
    destroy_denied: bool = False  # destroy failed for want of CAP_NET_ADMIN, not support


def protected_inodes() -> set[int]:
    """Sockets held by sockdoctor itself or by any of its ancestors (the SSH session).

    Walking up the parent chain finds the sshd (or terminal server) process
    holding the operator's own connection, whatever the environment says.
    """
    from ..linux import procfs

    pids = []
    pid = os.getpid()
    while pid > 1 and len(pids) < 64:
        pids.append(pid)
        pid = _parent(pid)
    owners = procfs.socket_owners(pids)
    return set(owners.by_inode)


def _parent(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            stat = f.read()
        return int(stat[stat.rfind(")") + 2:].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


def ssh_endpoints() -> set[tuple[str, int, str, int]]:
    """(local addr, local port, peer addr, peer port) of $SSH_CONNECTION, if any."""
    parts = os.environ.get("SSH_CONNECTION", "").split()
    if len(parts) != 4 or not parts[1].isdigit() or not parts[3].isdigit():
        return set()
    client, cport, server, sport = parts
    return {(server, int(sport), client, int(cport))}


def _owner_refs(sk: Socket, processes: dict[int, Process]) -> list[OwnerRef]:
    refs = []
    for owner in sk.owners:
        proc = processes.get(owner.pid)
        refs.append(OwnerRef(owner.pid, owner.fd, proc.comm if proc else ""))
    return refs


def _normal_addr(addr: str) -> str:
    return addr[7:] if addr.startswith("::ffff:") else addr


def _guard(sk: Socket, force: bool, protected: set[int],
           ssh: set[tuple[str, int, str, int]]) -> str:
    if force:
        return ""
    if sk.state == TcpState.LISTEN:
        return "a listening socket (use --force to include listeners)"
    if sk.inode and sk.inode in protected:
        return "held by sockdoctor or by its own session (e.g. your SSH connection)"
    key = (_normal_addr(sk.local_addr), sk.local_port, _normal_addr(sk.peer_addr),
           sk.peer_port)
    if key in ssh:
        return "your own SSH connection ($SSH_CONNECTION)"
    return ""


def find_listener(sk: Socket, listeners: list[Socket]) -> Socket | None:
    """The listening socket whose accept queue holds `sk`."""
    best = None
    for ls in listeners:
        if ls.netns != sk.netns or ls.local_port != sk.local_port:
            continue
        if ls.local_addr == sk.local_addr:
            return ls
        if ls.local_addr in ("0.0.0.0", "::") and best is None:
            best = ls
    return best


class Choice(NamedTuple):
    """A method for one socket and why; method "" when none can be used."""

    method: str
    why: str
    unable: str = ""  # with no method: "unsupported" or "not-permitted" when that is why


def _queued(sk: Socket) -> bool:
    """Never accept()ed: no descriptor yet, in a state only a queued connection has unowned."""
    return not sk.owners and sk.inode == 0 and sk.state in _QUEUE_STATES


def choose(sk: Socket, method: str, caps: Capabilities, has_listener_owner: bool) -> Choice:
    """The method for one socket: the one asked for, or with "auto" the safest that works."""
    st = sk.state
    owned = bool(sk.owners)
    in_queue = _queued(sk)
    if method != "auto":
        return _explicit(sk, method, caps, owned, in_queue, has_listener_owner)
    if owned and st in _FIN_STATES and caps.pidfd:
        return Choice("fin", "owned, still has to send its FIN: graceful shutdown, fd kept")
    if in_queue and has_listener_owner and caps.pidfd:
        return Choice("drain", "never accept()ed: take it from the listener's accept queue "
                               "and close it")
    reason = _no_fin_reason(sk, caps)
    if caps.destroy:
        return Choice("destroy", f"{reason}: kernel SOCK_DESTROY")
    no_destroy = caps.destroy_note or "this kernel cannot destroy sockets"
    if caps.raw:
        return Choice("rst", f"{reason}, and {no_destroy}: forged RST")
    return Choice("", f"{reason}; {no_destroy}, and forged packets need CAP_NET_RAW",
                  "not-permitted")


def _no_fin_reason(sk: Socket, caps: Capabilities) -> str:
    if sk.state == TcpState.LISTEN:
        return "a listening socket"
    if not sk.owners:
        return _HIDDEN_OWNER if sk.inode else "no process holds it"
    if sk.state not in _FIN_STATES:
        return f"our FIN is already out ({fmt.state_name(sk.state)})"
    return "its owner cannot be reached with pidfd_getfd" if not caps.pidfd else "asked"


def _explicit(sk: Socket, method: str, caps: Capabilities, owned: bool, in_queue: bool,
              has_listener_owner: bool) -> Choice:
    st = sk.state
    if method in ("fin", "close") and not owned and sk.inode:
        return Choice("", f"{method} needs its owner, and {_HIDDEN_OWNER}", "not-permitted")
    if method == "fin":
        if not owned:
            instead = "drain or destroy" if in_queue else "destroy"
            return Choice("", f"fin needs a process that holds the socket; none does "
                              f"(try {instead})")
        if st not in _FIN_STATES:
            done = "it is a listening socket" if st == TcpState.LISTEN else \
                "our FIN was already sent"
            return Choice("", f"fin cannot end {fmt.state_name(st)}: {done} (try destroy)")
        if not caps.pidfd:
            return Choice("", "this kernel has no pidfd_getfd (Linux >= 5.6 needed)",
                          "unsupported")
        return Choice("fin", "asked: graceful shutdown through a duplicated descriptor")
    if method == "drain":
        if not in_queue:
            return Choice("", "drain only applies to connections waiting in an accept queue")
        if not has_listener_owner:
            return Choice("", "no visible process holds the listening socket")
        if not caps.pidfd:
            return Choice("", "this kernel has no pidfd_getfd (Linux >= 5.6 needed)",
                          "unsupported")
        return Choice("drain", "asked: accept it from the listener's queue and close it")
    if method == "close":
        if not owned:
            return Choice("", "close needs a process that holds the socket; none does")
        if not caps.ptrace_close:
            return Choice("", "ptrace injection is only implemented for x86_64", "unsupported")
        return Choice("close", "asked: shutdown() and close() injected into the owner (ptrace)")
    if method == "destroy":
        if not caps.destroy:
            return Choice("", caps.destroy_note or "this kernel cannot destroy sockets",
                          "not-permitted" if caps.destroy_denied else "unsupported")
        note = " (its accept-queue slot stays taken until the program accepts it)" \
            if in_queue else ""
        return Choice("destroy", f"asked: kernel SOCK_DESTROY{note}")
    if method == "rst":
        if not caps.raw:
            return Choice("", "forged packets need CAP_NET_RAW", "not-permitted")
        if st == TcpState.TIME_WAIT:
            return Choice("rst", "asked: forged RST (TIME-WAIT honours it unless "
                                 "tcp_rfc1337=1)")
        return Choice("rst", "asked: forged RST after learning the sequence numbers")
    raise ValueError(f"unknown method {method}")


def effects(method: str, sk: Socket | None) -> tuple[str, str]:
    """(what the owning program sees, what the peer sees) when `method` ends `sk`."""
    program, peer = EFFECTS[method]
    if sk is None or method in ("fin", "drain"):
        return program, peer
    st = sk.state
    if st == TcpState.LISTEN:
        return _LISTENER
    orphan = not sk.owners and sk.inode == 0
    if orphan:
        program = _STILL_QUEUED if st in _QUEUE_STATES else _NO_PROGRAM
    if method == "close":
        return program, peer if st in _FIN_STATES else "nothing new: our FIN went out already"
    if st in _PEER_DONE_STATES:
        peer = _PEER_CLOSED
    elif st == TcpState.FIN_WAIT2:
        peer = _PEER_LATE_RESET if orphan and method == "destroy" else _PEER_HAS_OUR_FIN
    return program, peer


def build(snapshot: Snapshot, sockets: list[Socket], *, method: str = "auto",
          caps: Capabilities | None = None, force: bool = False,
          listeners: list[Socket] | None = None,
          protected: set[int] | None = None) -> Plan:
    """The plan for `sockets` (taken from `snapshot`, whose processes name the owners)."""
    caps = caps or Capabilities()
    protected = protected_inodes() if protected is None else protected
    ssh = ssh_endpoints()
    names = fmt.netns_names(snapshot)
    listeners = listeners if listeners is not None else [
        sk for sk in snapshot.sockets if sk.state == TcpState.LISTEN]
    items = []
    for index, sk in enumerate(sockets, 1):
        item = PlanItem(index=index, socket=sk, netns_name=names.get(sk.netns, str(sk.netns)),
                        owners=_owner_refs(sk, snapshot.processes), method="", why="")
        guard = _guard(sk, force, protected, ssh)
        if guard:
            item.skipped = guard
            item.why = "refused: " + guard
        else:
            listener = find_listener(sk, listeners) if _queued(sk) else None
            if listener is not None and listener.owners:
                holder = listener.owners[0]
                proc = snapshot.processes.get(holder.pid)
                item.listener = OwnerRef(holder.pid, holder.fd, proc.comm if proc else "")
                item.listener_inode = listener.inode
            item.method, item.why, item.unable = choose(sk, method, caps,
                                                        item.listener is not None)
            if item.method:
                item.program_sees, item.peer_sees = effects(item.method, sk)
        items.append(item)
    return Plan(items=items, method=method)


def dead_fd_items(snapshot: Snapshot, start: int, pids: set[int] | None,
                  caps: Capabilities) -> list[PlanItem]:
    """Descriptors of sockets in no TCP table (shut down, never closed): only `close` helps."""
    items: list[PlanItem] = []
    for dead in snapshot.dead_fds:
        if pids and dead.pid not in pids:
            continue
        proc = snapshot.processes.get(dead.pid)
        owner = OwnerRef(dead.pid, dead.fd, proc.comm if proc else "")
        method = "close" if caps.ptrace_close else ""
        why = ("the socket is in no TCP table any more; only closing the descriptor frees it"
               if method else "ptrace injection is only implemented for x86_64")
        item = PlanItem(index=start + len(items), socket=None, netns_name="", owners=[owner],
                        method=method, why=why, dead_inode=dead.inode,
                        unable="" if method else "unsupported")
        if method:
            item.program_sees = EFFECTS["close"][0]
            item.peer_sees = "nothing: the connection is already over"
        items.append(item)
    return items
