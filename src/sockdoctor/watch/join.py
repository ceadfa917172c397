"""The live join: which socket, namespace and process a traced state change is about.

The tracepoint carries a 4-tuple, the kernel's socket pointer (skaddr) and the
task that happened to be on the CPU — no namespace, no inode, no owner. The
join keeps, per skaddr, a Track of one socket's life (from its first event
until it reaches CLOSE, when the kernel may reuse the pointer) and fills in
its identity, in this order:

1. the latest sample (the sampler's snapshot): 4-tuple -> netns, cookie,
   inode, owners — for sockets that existed when it was taken;
2. for a socket born since: an exact sock_diag look-up of the 4-tuple in the
   namespaces that can hold it — the namespace of the task that created it in
   process context (connect(), listen()), and the namespaces with a listener
   on its ports — falling back to every namespace. The same 4-tuple alive in
   two namespaces at once is told apart by the state the event says it has;
   if that does not decide, the event says so (netns null, the candidates);
3. its owner: the sample's owners of that inode, else the descriptors of
   the few processes that can hold it (the creator, the listener's owners),
   else — for a socket closed before it could be looked up — the process whose
   close() moved it on, with the fd unknown. An event says when it is not known.
"""

from __future__ import annotations

import socket
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from ..linux import procfs, sockdiag
from ..linux.ownercache import OwnerCache
from ..linux.ringbuf import StateChange
from ..linux.tracefs import thread_group
from ..model import Owner, Snapshot, Socket, TcpState
from ..words import netns_names
from .identity import Key

CLOSE, LISTEN, SYN_RECV = TcpState.CLOSE, TcpState.LISTEN, TcpState.SYN_RECV
QUEUED_STATES = (TcpState.SYN_RECV, TcpState.ESTABLISHED, TcpState.CLOSE_WAIT)
MAX_CLOSED = 200_000  # closed sockets remembered for their destroy event
MAX_TRIES = 3  # look-ups of one socket before it stays unidentified


@dataclass(slots=True)
class Track:
    """One socket, from its first traced event until it reaches CLOSE."""

    key: Key
    born_ns: int | None = None  # when trace saw it created (None: it existed before)
    since_ns: int | None = None  # when it entered its current state
    state: int = 0
    netns: int = 0
    cookie: int = 0
    inode: int = 0
    owners: list[tuple[int, int | None]] = field(default_factory=list)
    note: str = ""
    candidates: tuple[int, ...] = ()
    creator: int = 0  # the process that created it (connect/listen), when seen
    closer: int = 0  # the process that closed it (close/shutdown), when seen
    last_old: int = 0  # the state it left when it reached its current one
    tries: int = 0

    @property
    def settled(self) -> bool:
        """Nothing more to learn: owners found, or look-ups given up."""
        return self.tries >= MAX_TRIES or bool(self.netns and self.owners)


@dataclass
class Index:
    """What the latest sample says, arranged for look-ups by 4-tuple, inode and port."""

    created: float = 0.0
    by_tuple: dict[Key, list[Socket]] = field(default_factory=dict)
    by_cookie: dict[int, Socket] = field(default_factory=dict)
    owners: dict[int, list[Owner]] = field(default_factory=dict)  # inode -> owners
    listeners: dict[int, dict[int, list[int]]] = field(default_factory=dict)  # port->ns->pids
    names: dict[int, str] = field(default_factory=dict)
    comms: dict[int, str] = field(default_factory=dict)

    @classmethod
    def of(cls, snap: Snapshot) -> Index:
        index = cls(created=snap.created, names=netns_names(snap),
                    comms={pid: p.comm for pid, p in snap.processes.items()})
        by_tuple: dict[Key, list[Socket]] = {}
        for sk in snap.sockets:
            key = (sk.family, sk.local_addr, sk.local_port, sk.peer_addr, sk.peer_port)
            by_tuple.setdefault(key, []).append(sk)
            if sk.cookie:
                index.by_cookie[sk.cookie] = sk
            if sk.owners:
                index.owners[sk.inode] = sk.owners
            if sk.state == LISTEN:
                per_ns = index.listeners.setdefault(sk.local_port, {})
                per_ns.setdefault(sk.netns, []).extend(o.pid for o in sk.owners)
        index.by_tuple = by_tuple
        return index


class JoinMap:
    """Tracks by skaddr, identified from the latest sample and from sock_diag look-ups."""

    def __init__(self, diag_socket: Callable[[int], socket.socket | None],
                 namespaces: Callable[[], list[int]], clock_offset: float,
                 allowed: set[int] | None = None,
                 rediscover: Callable[[], list[int]] | None = None) -> None:
        self.diag_socket = diag_socket  # netns inode -> a sock_diag socket bound there
        self.namespaces = namespaces  # every known netns inode
        # namespaces born since they were last listed (rate-limited by the caller)
        self.rediscover = rediscover or (lambda: [])
        self.allowed = allowed  # only these namespaces matter (--netns), None: all
        self.clock_offset = clock_offset  # wall time = monotonic ns / 1e9 + offset
        self.index = Index()
        self.tracks: dict[int, Track] = {}
        self.closed: OrderedDict[tuple[int, int], Track] = OrderedDict()  # (netns, cookie)
        # The sampler's cache class, our own instance: it runs in the sampler's
        # thread, and here only the few processes that can hold a new socket
        # are read, once per batch.
        self.owners = OwnerCache()
        self._refreshed: dict[int, int] = {}  # pid -> how far it was re-read this batch
        self._died: set[int] = set()  # inodes of sockets closed since the last batch
        self._round_died: set[int] = set()
        self._tgid: dict[int, int] = {}
        self._text: dict[bytes, str] = {}
        self._netns_of: dict[int, int] = {}
        # listeners trace saw created (until it sees them closed): port -> netns -> pids
        self.new_listeners: dict[int, dict[int, set[int]]] = {}
        self.lookups = 0

    def use(self, snap: Snapshot) -> None:
        """A new sample arrived: its sockets become the first place to look."""
        self.index = Index.of(snap)
        self._netns_of.clear()

    # --- pass 1: which Track each event belongs to ---------------------------

    def attach(self, changes: list[StateChange]) -> list[tuple[StateChange, Track, float | None]]:
        """Each change with its socket's Track and the time it spent in its old state."""
        out = []
        tracks, tgid = self.tracks, self.tgid
        for ev in changes:
            tr = tracks.get(ev.skaddr)
            born = ev.old == CLOSE or (ev.old == LISTEN and ev.new == SYN_RECV)
            key = self.key(ev)
            if tr is None or born or (tr.key != key and tr.key[2]):  # [2]: see below
                tr = tracks[ev.skaddr] = Track(key, born_ns=ev.ts_ns if born else None)
            elif tr.key != key:  # connect() picked its port after the first event
                tr.key, tr.tries = key, 0
            if not ev.in_irq and ev.task_pid:
                if born:
                    tr.creator = tgid(ev.task_pid)
                    if ev.new == LISTEN:
                        self._listener_born(tr)
                elif ev.new in (TcpState.FIN_WAIT1, TcpState.LAST_ACK, CLOSE):
                    tr.closer = tgid(ev.task_pid)
            prev = None if tr.since_ns is None else (ev.ts_ns - tr.since_ns) / 1e6
            tr.since_ns, tr.state, tr.last_old = ev.ts_ns, ev.new, ev.old
            out.append((ev, tr, prev))
        return out

    def _listener_born(self, tr: Track) -> None:
        """listen() ran in its owner's context: that names the namespace and the process."""
        tr.netns = self._netns_of_pid(tr.creator)
        if tr.netns:
            tr.owners, tr.tries = [(tr.creator, None)], MAX_TRIES
            tr.note = "the process that called listen()"
            self.new_listeners.setdefault(tr.key[2], {}).setdefault(tr.netns, set()).add(
                tr.creator)

    def listener_pids(self, port: int, netns: int) -> list[int]:
        """Processes holding a listener on `port` in `netns`: the sample's and trace's."""
        pids = list(self.index.listeners.get(port, {}).get(netns, ()))
        pids += [p for p in self.new_listeners.get(port, {}).get(netns, ()) if p not in pids]
        return pids

    def listener_namespaces(self, port: int) -> list[int]:
        return list({*self.index.listeners.get(port, {}), *self.new_listeners.get(port, {})})

    def key(self, ev: StateChange) -> Key:
        text = self._text
        local = text.get(ev.saddr) or self._address(ev.family, ev.saddr)
        peer = text.get(ev.daddr) or self._address(ev.family, ev.daddr)
        return (ev.family, local, ev.sport, peer, ev.dport)

    def _address(self, family: int, raw: bytes) -> str:
        if len(self._text) > 100_000:
            self._text.clear()
        text = self._text[raw] = socket.inet_ntop(family, raw)
        return text

    # --- pass 2: identify the sockets of a batch -------------------------------

    def tgid(self, tid: int) -> int:
        known = self._tgid.get(tid)
        if known is None:
            if len(self._tgid) > 65536:
                self._tgid.clear()
            known = self._tgid[tid] = thread_group(tid)
        return known

    def identify(self, tracks: list[Track]) -> None:
        self._refreshed.clear()
        self._round_died, self._died = self._died, set()
        for tr in tracks:
            if not tr.settled:
                self._identify(tr)

    def _identify(self, tr: Track) -> None:
        tr.tries += 1
        if self.allowed is not None:
            if not tr.netns and tr.creator:
                tr.netns = self._netns_of_pid(tr.creator)
            if tr.netns and tr.netns not in self.allowed:
                tr.tries = MAX_TRIES  # another namespace's socket: not ours to look up
                return
        found = self._from_sample(tr)
        if found is None and tr.key[2] and tr.key[4]:
            found = self._look_up(tr)
        if found is not None:
            tr.netns, tr.cookie, tr.inode = found.netns, found.cookie, found.inode
            tr.candidates, tr.note = (), ""
        self._find_owners(tr)

    def _from_sample(self, tr: Track) -> Socket | None:
        index = self.index
        if tr.born_ns is not None and tr.born_ns / 1e9 + self.clock_offset > index.created:
            return None  # born after the sample: what it lists is an older socket
        alive = [sk for sk in index.by_tuple.get(tr.key, ()) if sk.state != TcpState.TIME_WAIT
                 and (not tr.netns or sk.netns == tr.netns)]
        return alive[0] if len(alive) == 1 else None

    def _look_up(self, tr: Track) -> Socket | None:
        """Exact sock_diag look-ups, first where the hints point, then everywhere."""
        hinted = self._hinted_namespaces(tr)
        groups = (lambda: hinted, lambda: [ns for ns in self.namespaces() if ns not in hinted],
                  self.rediscover)  # last: a namespace born since trace last listed them
        for next_group in groups:
            group = next_group()
            hits = []
            for ns in group:
                sock = self.diag_socket(ns)
                if sock is None:
                    continue
                self.lookups += 1
                try:
                    sk = sockdiag.lookup_tuple(sock, *tr.key, netns=ns)
                except OSError:
                    continue
                if sk is not None:
                    hits.append(sk)
            if hits:
                return self._choose(tr, hits)
        tr.note = tr.note or "the socket was gone before it could be looked up"
        if tr.state == CLOSE:
            tr.tries = MAX_TRIES  # it will not come back
        return None

    def _hinted_namespaces(self, tr: Track) -> list[int]:
        if tr.netns:
            return [tr.netns]
        hinted: list[int] = []
        for pid in (tr.creator, tr.closer):
            ns = self._netns_of_pid(pid) if pid else 0
            if ns and ns not in hinted:
                hinted.append(ns)
        if self.allowed is not None:
            hinted = [ns for ns in hinted if ns in self.allowed]
        if hinted:
            return hinted
        for port in (tr.key[2], tr.key[4]):
            for ns in self.listener_namespaces(port):
                if ns not in hinted:
                    hinted.append(ns)
        return hinted

    def _choose(self, tr: Track, hits: list[Socket]) -> Socket | None:
        if len(hits) > 1:
            same = [sk for sk in hits if sk.state == tr.state]
            if len(same) != 1:
                tr.candidates = tuple(sk.netns for sk in hits)
                tr.note = (f"this 4-tuple exists in {len(hits)} network namespaces at once; "
                           "the tracepoint does not say which one changed")
                tr.tries = MAX_TRIES
                return None
            hits = same
        return hits[0]

    def _netns_of_pid(self, pid: int) -> int:
        ns = self._netns_of.get(pid)
        if ns is None:
            ns = self._netns_of[pid] = procfs.netns_inode(pid)
        return ns

    def _find_owners(self, tr: Track) -> None:
        if tr.inode:
            known = self.index.owners.get(tr.inode)
            if known:
                tr.owners = [(o.pid, o.fd) for o in known]
                return
            found = self._holders(tr.inode, self._candidate_pids(tr))
            if found:
                tr.owners, tr.note = found, ""
                return
        elif tr.netns and tr.state in QUEUED_STATES:
            pids = self.listener_pids(tr.key[2], tr.netns)
            if pids:
                tr.note = (f"in the accept queue of pid {', '.join(map(str, sorted(set(pids))))}"
                           ": not accept()ed (yet)")
                tr.tries -= 1  # waiting for accept() is no failed look-up: look again later
                return
        if not self.closer_fallback(tr) and not tr.owners and not tr.note:
            tr.note = "owner not known (not among the processes that could hold it)"

    def closer_fallback(self, tr: Track) -> bool:
        """A socket closed before it could be looked up: its closer held it.

        close() runs in the owner's context, in the owner's namespace (a
        socket made elsewhere and passed in is the rare exception).
        """
        if tr.owners or not tr.closer:
            return False
        if not tr.netns:
            tr.netns = self._netns_of_pid(tr.closer)
        tr.owners = [(tr.closer, None)]
        tr.note = ("the socket was closed before its descriptor was found: "
                   "the process is the one that closed it")
        return True

    def _holders(self, inode: int, pids: list[int]) -> list[tuple[int, int | None]]:
        """(pid, fd) of the candidates holding `inode`; each process re-read once a batch."""
        def held() -> list[tuple[int, int | None]]:
            return [(o.pid, o.fd) for o in self.owners.holders(inode) if o.pid in pids]

        # first the descriptor numbers new since the last look, then (a number
        # closed and reused unseen) every descriptor: each at most once a batch
        for level, full in ((1, False), (2, True)):
            found = held()
            if found:
                return found
            stale = [pid for pid in pids if self._refreshed.get(pid, 0) < level]
            if stale:
                self.owners.refresh_pids(stale, self._round_died, full=full)
                self._refreshed.update(dict.fromkeys(stale, level))
        return held()

    def _candidate_pids(self, tr: Track) -> list[int]:
        pids = [pid for pid in (tr.creator, tr.closer) if pid]
        for port in (tr.key[2], tr.key[4]):
            for pid in self.listener_pids(port, tr.netns):
                if pid not in pids:
                    pids.append(pid)
        return pids

    # --- the end of a socket ---------------------------------------------------

    def finish(self, skaddr: int, tr: Track) -> None:
        """The socket reached CLOSE: the kernel may reuse its address for another."""
        if self.tracks.get(skaddr) is tr:
            del self.tracks[skaddr]
        if tr.last_old == LISTEN and tr.creator:
            self.new_listeners.get(tr.key[2], {}).get(tr.netns, set()).discard(tr.creator)
        if tr.inode:
            self._died.add(tr.inode)  # its descriptor number may be reused
        if tr.cookie:
            self.closed[(tr.netns, tr.cookie)] = tr
            if len(self.closed) > MAX_CLOSED:
                self.closed.popitem(last=False)

    def destroyed(self, sk: Socket) -> Track | None:
        """What trace knew of a socket the kernel just freed (by netns and cookie)."""
        tr = self.closed.pop((sk.netns, sk.cookie), None)
        if tr is not None:
            return tr
        known = self.index.by_cookie.get(sk.cookie)
        if known is None or known.netns != sk.netns:
            return None
        key = (known.family, known.local_addr, known.local_port, known.peer_addr,
               known.peer_port)
        return Track(key, state=known.state, netns=known.netns, cookie=known.cookie,
                     inode=known.inode, owners=[(o.pid, o.fd) for o in known.owners])
