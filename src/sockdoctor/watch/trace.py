"""`trace`: every TCP state change and every destroyed socket, with its owner.

Three sources, one loop:
- tracefs (linux/tracefs.py): the inet_sock_set_state tracepoint, exact in
  time, but with no namespace, inode or owner;
- the sampler (watch/sampler.py, shared with the exporter and top): the
  latest snapshot of every socket with its owners, refreshed on an interval;
- sock_diag's destroy groups, one listener per namespace (as `ss -E`): the
  socket's last tcp_info when the kernel frees it.
watch/join.py joins the first to the others. Each CLOSE-WAIT entry is handed
to the sampler (note_state_change), so its ages become exact while trace runs.
"""

from __future__ import annotations

import dataclasses
import socket
import threading
import time
from collections import deque
from typing import Any

from ..errors import NotFoundError
from ..linux import netns as netns_mod
from ..linux import procfs, ringbuf, sockdiag, tracefs
from ..linux.nssockets import NsSockets
from ..model import EVENT_STATE_NAMES, Owner, Process, Socket, TcpState
from ..query import Query
from .events import EventOwner, LostEvent, TraceEvent
from .join import CLOSE, JoinMap, Track
from .reorder import Reorder

Record = TraceEvent | LostEvent
FAMILY = {socket.AF_INET: "ipv4", socket.AF_INET6: "ipv6"}
STATE_NAMES = EVENT_STATE_NAMES  # ss's names, but a connection's end reads CLOSE
ANY_STATE = 0xFFFFFFFF
RETRY_S = 0.25  # how often sockets still waiting for their owner are looked up again
REORDER_S = 0.1  # records wait this long behind the clock, to be printed in time order


@dataclasses.dataclass
class Stats:
    changes: int = 0
    destroyed: int = 0
    lost: int = 0
    destroy_overflows: int = 0
    close_wait: int = 0
    close_wait_owned: int = 0
    printed: int = 0


class EventFilter:
    """The query, applied to events: a state filter matches the old or the new state;
    the rest is Query.selects, the per-socket test Query.select applies to snapshots."""

    def __init__(self, query: Query, netns_inodes: set[int] | None) -> None:
        self.states = query.states
        self.netns = netns_inodes
        self.unplaced = 0  # left out by --netns because their namespace was not known
        self.rest = dataclasses.replace(query, states=ANY_STATE, older_than_ms=None)

    def match(self, old: int, new: int, rec: TraceEvent) -> bool:
        if not ((self.states >> old) & 1 or (self.states >> new) & 1):
            return False
        if self.netns is not None and rec.netns_inode not in self.netns:
            if rec.netns_inode is None:
                self.unplaced += 1  # said in the summary: not hidden silently
            return False
        family = socket.AF_INET6 if rec.family == "ipv6" else socket.AF_INET
        sk = Socket(rec.netns_inode or 0, family, new, rec.local_addr, rec.local_port,
                    rec.peer_addr, rec.peer_port, rec.inode or 0, rec.cookie or 0, 0, 0, 0)
        if not self.rest.needs_owners:
            return self.rest.selects(sk, {})
        # the event's owners, as a snapshot would hold them: the same per-socket test
        sk.owners = [Owner(o.pid, o.fd or 0) for o in rec.owners]
        return self.rest.selects(sk, {o.pid: Process(pid=o.pid, comm=o.comm)
                                      for o in rec.owners})


class Tracer:
    """Opens the tracing instance and the sampler; poll() returns what happened since."""

    def __init__(self, query: Query, sampler: Any, *, buffer_kb: int = 2048,
                 destroy: bool = True, netns_inodes: set[int] | None = None,
                 join_delay_s: float = 1.0, reorder_s: float = REORDER_S) -> None:
        self.query = query
        self.join_delay_s = join_delay_s
        self.reorder_s = reorder_s
        self._reorder: Reorder[Record] = Reorder()
        self._pending: deque[tuple[ringbuf.StateChange, Track, float | None]] = deque()
        self._waiting: dict[int, Track] = {}  # not yet identified, events still pending
        self._last_retry = 0.0
        self.sampler = sampler
        self.filter = EventFilter(query, netns_inodes)
        self.stats = Stats()
        self.session = tracefs.Session(buffer_kb)  # PermissionDenied / Unsupported here
        self.ns = NsSockets(destroy, netns_inodes)
        self.clock_offset = time.time() - time.monotonic()
        self.join = JoinMap(self.ns.socket_for, lambda: list(self.ns.diag), self.clock_offset,
                            netns_inodes, rediscover=self.ns.discover_new)
        self._seq = 0
        self._lost_seen = self.session.lost()
        self._comms: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """First sample now (events meanwhile wait in the ring buffer), then in the background."""
        self._use(self.sampler.sample())
        self._thread = threading.Thread(target=self._sample_later, daemon=True)
        self._thread.start()

    def _sample_later(self) -> None:
        if not self._stop.wait(self.sampler.interval):  # the first sample was just taken
            self.sampler.run(self._stop, lambda _s: None)

    def _use(self, sample: Any) -> None:
        self._seq = sample.seq
        if sample.snapshot is None:
            return
        self.join.use(sample.snapshot)
        self.filter.rest.learn(sample.snapshot.namespaces)  # `autobound`: each one's range
        self.ns.sync({ns.inode for ns in sample.snapshot.namespaces if not ns.error})

    def flush(self) -> list[Record]:
        """Everything still waiting for its owner, as it is (at the end of a trace)."""
        self.join_delay_s = 0.0
        return self.poll(0)

    def poll(self, timeout_s: float = 0.1) -> list[Record]:
        """Wait up to timeout_s, then return the events nothing earlier can still precede."""
        self.session.reader.wait(timeout_s)
        latest = self.sampler.latest
        if latest is not None and latest.seq != self._seq:
            self._use(latest)
        everything = self.join_delay_s == 0
        reorder = self._reorder
        reorder.push(self._state_events(self.session.reader.read(everything=everything)))
        reorder.push(self._destroy_events())
        reorder.push(self._lost_events())
        if everything:
            return reorder.drain()
        return reorder.release(self._watermark())

    def _watermark(self) -> float:
        """The time up to which every record is in: the window, or the oldest still waiting."""
        mark = time.time() - self.reorder_s
        if self._pending:
            mark = min(mark, self._pending[0][0].ts_ns / 1e9 + self.clock_offset - 1e-6)
        return mark

    def _state_events(self, changes: list[ringbuf.StateChange]) -> list[Record]:
        """Join new changes; emit, in order, those whose socket is settled or waited enough.

        A connection's first events often come before its owner can be known
        (still in the accept queue: accept() follows a moment later), so an
        event waits up to join_delay for its socket to be identified.
        """
        self.stats.changes += len(changes)
        pending = self._pending
        attached = self.join.attach(changes)
        pending.extend(attached)
        self.join.identify(self._to_identify(attached))
        out: list[Record] = []
        oldest = time.monotonic_ns() - int(self.join_delay_s * 1e9)
        while pending and (pending[0][1].settled or pending[0][0].ts_ns <= oldest):
            ev, tr, prev = pending.popleft()
            if not tr.owners and tr.closer:
                self.join.closer_fallback(tr)
            rec = self._record(ev, tr, prev)
            if ev.new == CLOSE:
                self.join.finish(ev.skaddr, tr)
            shown = self.filter.match(ev.old, ev.new, rec)
            if ev.new == TcpState.CLOSE_WAIT:
                self._count_close_wait(rec, tr, shown)
            if shown:
                out.append(rec)
        return out

    def _to_identify(self, attached: list[tuple[ringbuf.StateChange, Track, float | None]]
                     ) -> list[Track]:
        """Sockets with new events now; the others still waiting, a few times a second.

        Asking again on every poll for each waiting socket (a second of
        churn is tens of thousands) cost more than the events themselves.
        """
        fresh = {id(tr): tr for _, tr, _ in attached if not tr.settled}
        now = time.monotonic()
        if now - self._last_retry >= RETRY_S:
            self._last_retry = now
            horizon = time.monotonic_ns() - int((self.join_delay_s + 1) * 1e9)
            self._waiting = {k: tr for k, tr in self._waiting.items() if not tr.settled
                             and (tr.since_ns or 0) > horizon}
            fresh = {**self._waiting, **fresh}
        self._waiting.update(fresh)
        return list(fresh.values())

    def _count_close_wait(self, rec: TraceEvent, tr: Track, shown: bool) -> None:
        if shown:  # the summary speaks of what was shown
            self.stats.close_wait += 1
            self.stats.close_wait_owned += bool(rec.owners)
        if tr.netns:
            self.sampler.note_state_change(tr.netns, tr.key, TcpState.CLOSE_WAIT, rec.time)

    def _record(self, ev: ringbuf.StateChange, tr: Track, prev: float | None) -> TraceEvent:
        family, laddr, lport, paddr, pport = self.join.key(ev)
        rec = self._base("state", ev.ts_ns / 1e9 + self.clock_offset, tr, family,
                         (laddr, lport, paddr, pport))
        rec.old = STATE_NAMES.get(ev.old, str(ev.old))
        rec.new = STATE_NAMES.get(ev.new, str(ev.new))
        rec.prev_state_ms = round(prev, 3) if prev is not None else None
        rec.task_pid = None if ev.in_irq else ev.task_pid
        return rec

    def _base(self, kind: str, when: float, tr: Track, family: int,
              tuple4: tuple[str, int, str, int]) -> TraceEvent:
        names = self.join.index.names
        return TraceEvent(
            event=kind, time=when, netns=self._ns_name(tr.netns, names),
            netns_inode=tr.netns or None, family=FAMILY.get(family, "?"),
            local_addr=tuple4[0], local_port=tuple4[1], peer_addr=tuple4[2],
            peer_port=tuple4[3], cookie=tr.cookie or None, inode=tr.inode or None,
            owners=[EventOwner(pid, fd, self._comm(pid)) for pid, fd in tr.owners],
            owner_note=tr.note or None,
            netns_candidates=[self._ns_name(n, names) or "?" for n in tr.candidates] or None)

    def _ns_name(self, inode: int, names: dict[int, str]) -> str | None:
        """The sample's name, else a fresh listing's (a namespace born since), else net:[N]."""
        if not inode:
            return None
        return names.get(inode) or self.ns.name_of(inode) or f"net:[{inode}]"

    def _comm(self, pid: int) -> str:
        comm = self.join.index.comms.get(pid)
        if comm is None:
            comm = self._comms.get(pid)
        if comm is None:
            comm = procfs.comm(pid)  # "" when it is gone
            if len(self._comms) > 65536:
                self._comms.clear()
            self._comms[pid] = comm
        return comm

    def _destroy_events(self) -> list[Record]:
        out: list[Record] = []
        now = time.time()
        for inode, listener in list(self.ns.listeners.items()):
            sockets, overflows = sockdiag.read_destroyed(listener, inode)
            if overflows:
                self.stats.destroy_overflows += overflows
                out.append(LostEvent(event="lost", time=now, source="destroy", count=None,
                                     netns=self._ns_name(inode, self.join.index.names),
                                     detail="the kernel dropped destroy events: the "
                                            "listener's buffer was full"))
            for sk in sockets:
                self.stats.destroyed += 1
                rec, before = self._destroy_record(sk, now)
                if self.filter.match(before, sk.state, rec):
                    out.append(rec)
        return out

    def _destroy_record(self, sk: Socket, now: float) -> tuple[TraceEvent, int]:
        tr = self.join.destroyed(sk)
        if tr is None:
            tr = Track((sk.family, sk.local_addr, sk.local_port, sk.peer_addr, sk.peer_port),
                       netns=sk.netns, cookie=sk.cookie,
                       note="owner not known (the socket came and went between samples)")
        rec = self._base("destroy", now, tr, sk.family,
                         (sk.local_addr, sk.local_port, sk.peer_addr, sk.peer_port))
        rec.netns_inode, rec.netns = sk.netns, self._ns_name(sk.netns, self.join.index.names)
        rec.new = STATE_NAMES.get(sk.state, str(sk.state))
        rec.info = sk.info
        if tr.since_ns is not None:
            rec.prev_state_ms = round((time.monotonic_ns() - tr.since_ns) / 1e6, 3)
        return rec, tr.last_old or sk.state

    def _lost_events(self) -> list[Record]:
        total = self.session.lost()
        new = total - self._lost_seen
        if new <= 0:
            return []
        self._lost_seen = total
        self.stats.lost += new
        return [LostEvent(event="lost", time=time.time(), source="tracefs", count=new,
                          total=self.stats.lost,
                          detail="the kernel's ring buffer was full: these state changes "
                                 "were not recorded")]

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.ns.close()
        self.session.close()


def open_tracer(query: Query, *, refresh_s: float = 10.0, buffer_kb: int = 2048,
                destroy: bool = True) -> Tracer:
    """A Tracer over a new Sampler of every socket in the query's namespaces."""
    from . import Sampler  # the shared sampling engine (watch/sampler.py)

    selected = None
    if query.netns not in ("", "all"):
        found, _ = netns_mod.discover()
        selected = {ns.inode for ns in netns_mod.select(found, query.netns)}
        if not selected:
            raise NotFoundError(f"no network namespace called '{query.netns}'")
    sampler = Sampler(query=None, netns=query.netns, interval=refresh_s, doctor=False)
    tracer = Tracer(query, sampler, buffer_kb=buffer_kb, destroy=destroy,
                    netns_inodes=selected)
    try:
        tracer.start()
    except BaseException:
        tracer.close()
        raise
    return tracer
