"""The sampling engine: scan on an interval, cheaply, and diagnose each sample.

One engine for every continuous consumer (the exporter, top, trace, the
reaper); what a sample holds is below (Sample) and in docs/exporter.md ("The sampler").
A sample is the same evidence as `scan(evidence=True, age=True)` plus what
only a sampler can know: which sockets are new or gone since the previous
sample and since when each one has been in its state. The steps are
inventory's (namespaces, dump, owners, processes, snapshot); what differs is
that owners come from an OwnerCache (linux/ownercache.py) and a full /proc
walk happens only on the first sample, every `full_walk_every` samples, and
when a socket cannot be placed otherwise.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from operator import attrgetter

from .. import inventory
from ..doctor import DoctorConfig, Report, diagnose
from ..doctor.scope import narrows
from ..errors import SockdoctorError
from ..linux import procfs
from ..linux.bpf.aggregate import Pass
from ..linux.netns import NsRef
from ..linux.ownercache import OwnerCache, ProcessCache
from ..model import Netns, Process, Snapshot, Socket, TcpState
from ..query import Query
from .counted import Inputs, KernelCounts
from .identity import Identities

log = logging.getLogger("sockdoctor.watch")
FORCED_WALK_GAP = 3  # samples between two full walks that were not scheduled
# doctor_every=0 ("auto"): the doctor may use this share of one CPU (of the
# interval), and runs at least every DOCTOR_MAX_GAP samples whatever it costs
DOCTOR_SHARE = 0.02
DOCTOR_MAX_GAP = 8
_INODE = attrgetter("inode")


@dataclass
class Sample:
    """One sample: plain data, no I/O; each field says what it holds."""

    seq: int
    started: float  # time.time() when the sample began
    duration_s: float = 0.0  # wall time it took
    cpu_s: float = 0.0  # CPU time of this process (and its walkers) spent on it
    snapshot: Snapshot | None = None  # what the query selects; None if the sample failed
    previous: Snapshot | None = None
    report: Report | None = None  # the doctor's, on this sample (see doctor_ran)
    error: str = ""
    warnings: list[str] = field(default_factory=list)
    new: int = 0  # sockets (by cookie) not in the previous sample
    gone: int = 0  # sockets of the previous sample not in this one
    first_seen: dict[int, float] = field(default_factory=dict)  # cookie -> since when in its state
    full_walk: bool = False  # all of /proc was walked for owners
    doctor_ran: bool = False  # report is from this sample (else carried over, or None)
    readlinks: int = 0  # descriptors read for owners (a full walk: every one)
    denied_pids: int = 0  # processes whose descriptors could not be read (not ours)
    # counted in the kernel (watch/counted.py): netns inode -> sockets per state and
    # ports in use; `snapshot` then holds only the CLOSE-WAIT and LISTEN sockets
    tallies: dict[int, Pass] | None = None

    def sockets(self) -> int:
        """How many sockets the sample saw (counted ones included)."""
        if self.tallies is not None:
            return sum(t.sockets for t in self.tallies.values())
        return len(self.snapshot.sockets) if self.snapshot is not None else 0

    def age_ms(self, sk: Socket) -> int | None:
        """Best lower bound of the time `sk` has been in its state, in milliseconds.

        The larger of tcp_info's (docs/age.md) and the time since the sampler
        (or trace) first saw it in this state. None when neither is known, and
        for a listener: it waits for nothing, so it has no age (as in `ls`).
        """
        if sk.state == TcpState.LISTEN:
            return None
        since = self.first_seen.get(sk.cookie)
        seen = int((self.started - since) * 1000) if since is not None else None
        if sk.age_ms is None:
            return seen or None
        return max(sk.age_ms, seen or 0)


class Sampler:
    """Takes samples of the host's TCP sockets; see the module doc."""

    def __init__(self, query: Query | str | None = None, netns: str = "all",
                 interval: float = 15.0, doctor: bool = True,
                 doctor_config: DoctorConfig | None = None, full_walk_every: int = 20,
                 info: bool = False, doctor_every: int = 1, counted: bool = False) -> None:
        """`counted`: the consumer reads only watch/metrics.py's families, so steady
        samples may be counted in the kernel (watch/counted.py) when the engine is in use."""
        if interval <= 0:
            raise ValueError("interval must be positive")
        self.query = dataclasses.replace(inventory.as_query(query), netns="all")
        self.netns = netns or "all"
        self.interval = interval
        self.doctor = doctor
        self.doctor_config = doctor_config
        self.full_walk_every = max(1, full_walk_every)
        self.doctor_every = max(0, doctor_every)  # 0: auto (see DOCTOR_SHARE)
        self.info = info
        self._owners = OwnerCache()
        self._facts = ProcessCache()
        self._protocols: dict[int, str] = {}
        self._ids = Identities()
        self._names: dict[int, str] = {}  # netns inode -> the name it was first given
        self._sysctls: dict[int, dict[str, str]] = {}
        self._host_sysctls: dict[str, str] = {}
        self._unowned: set[int] = set()  # inodes a full walk found no owner for
        self._sees_all = procfs.sees_every_process()
        self._full_prev: Snapshot | None = None  # the previous sample, every socket
        self._prev: Snapshot | None = None  # the previous sample, what the query selects
        self._last_full = 0  # seq of the last full walk
        self._report: Report | None = None
        self._doctor_at = 1  # seq of the next sample the doctor runs on
        self._seq = 0
        self._lock = threading.Lock()
        self._latest: Sample | None = None
        self._kernel = KernelCounts() if counted else None

    @property
    def latest(self) -> Sample | None:
        with self._lock:
            return self._latest

    def note_state_change(self, netns: int, family: int, local_addr: str, local_port: int,
                          peer_addr: str, peer_port: int, new_state: int,
                          when: float) -> None:
        """An exact state change seen by a tracer (netns 0: any namespace).

        The next sample takes `when` as the time the socket entered
        `new_state`, so its age becomes exact. Thread-safe.
        """
        self._ids.note(netns, family, local_addr, local_port, peer_addr, peer_port,
                       new_state, when)

    def run(self, stop: threading.Event,
            on_sample: Callable[[Sample], None] | None = None) -> None:
        """Sample every `interval` seconds until `stop` is set.

        A sample that fails does not end the loop: it is a Sample whose
        `error` says why and whose `snapshot` is None. Samples keep a fixed
        rhythm; one that takes longer than the interval is followed at once.
        """
        next_at = time.monotonic()
        while not stop.is_set():
            sample = self.sample_safely()
            if on_sample is not None:
                on_sample(sample)
            next_at = max(next_at + self.interval, time.monotonic())
            stop.wait(next_at - time.monotonic())

    def sample_safely(self) -> Sample:
        """sample(), but a failure becomes a Sample with `error` set instead of raising."""
        started = time.time()
        clock = _Clock()
        try:
            return self.sample()
        except (SockdoctorError, OSError) as exc:
            error = str(exc) or exc.__class__.__name__
        except Exception as exc:  # an internal error must not stop a long-running watcher
            log.exception("sample failed")
            error = f"internal error: {exc.__class__.__name__}: {exc}"
        with self._lock:
            self._seq += 1
            failed = Sample(self._seq, started, error=error, previous=self._prev)
            failed.duration_s, failed.cpu_s = clock.spent()
            self._latest = failed
        return failed

    def sample(self) -> Sample:
        """Take one sample now (incremental after the first). Raises on failure."""
        started = time.time()
        clock = _Clock()
        self._release()
        seq = self._seq + 1
        full = seq == 1 or (seq - 1) % self.full_walk_every == 0
        counted = None if full else self._counted(seq, started, clock)
        if counted is not None:
            return counted
        warnings: list[str] = []
        namespaces, found = inventory.select_namespaces(self.netns, warnings)
        collect = inventory.start_owner_walk(namespaces, found) if full else None
        records, dumped = self._dump(namespaces, warnings, refresh=full)
        live = set(map(_INODE, dumped))
        live.discard(0)  # queued and TIME-WAIT sockets: no file, no owner
        owner_map, full, readlinks = self._owner_map(collect, namespaces, found, dumped, live,
                                                     seq)
        inventory.warn_denied(owner_map, warnings)
        joined = inventory.attach_owners(
            list(dumped), dumped, owner_map, Query(), records, evidence=True,
            facts=inventory.Facts(self._facts.process, self._protocols),
            threads=_listener_owners(dumped, owner_map), live=live)
        if full:
            self._refresh(joined.processes, owner_map)
        whole = inventory.assemble(joined, records, warnings, owners=True, info=self.info,
                                   age=True, evidence=True, created=started,
                                   host_sysctls=self._host_sysctls)
        sample = Sample(seq, started, previous=self._prev, full_walk=full,
                        warnings=list(warnings), readlinks=readlinks,
                        denied_pids=owner_map.denied_pids)
        sample.new, sample.gone, sample.first_seen = self._ids.update(dumped, started)
        sample.snapshot = self.query.apply(whole) if narrows(self.query) else whole
        self._diagnose(sample, whole)
        self._full_prev, self._prev = whole, sample.snapshot
        sample.duration_s, sample.cpu_s = clock.spent()
        with self._lock:
            self._seq = seq
            self._latest = sample
        return sample

    def _counted(self, seq: int, started: float, clock: _Clock) -> Sample | None:
        """A steady sample counted in the kernel (watch/counted.py) if that is all the
        consumer needs now: not a sample the doctor runs on, no narrowing query, no
        tcp_info. None: take it the usual way."""
        kernel = self._kernel
        if kernel is None or narrows(self.query) or self.info or not kernel.usable() or (
                self.doctor and (seq >= self._doctor_at or self._report is None)):
            return None
        warnings: list[str] = []
        namespaces, _found = inventory.select_namespaces(self.netns, warnings)
        report = self._report
        extra = {p.pid for f in report.findings for p in f.processes} if report else set()
        got = kernel.take(namespaces, Inputs(self._owners, self._facts, self._unowned, extra,
                                             self._names, self._host_sysctls),
                          started, warnings)
        if got is None:
            return None
        sample = Sample(seq, started, snapshot=got.snapshot, previous=self._prev,
                        report=report, warnings=warnings, readlinks=got.readlinks,
                        denied_pids=got.denied_pids, tallies=got.tallies)
        sample.new, sample.gone, sample.first_seen = self._ids.update(got.snapshot.sockets,
                                                                      started)
        self._prev = got.snapshot
        sample.duration_s, sample.cpu_s = clock.spent()
        with self._lock:
            self._seq = seq
            self._latest = sample
        return sample

    def close(self) -> None:
        """Unload what the sampler keeps loaded in the kernel (also done when it is
        collected, or at exit); a later sample loads it again."""
        if self._kernel is not None:
            self._kernel.close()

    def _release(self) -> None:
        """Let the sample before the latest go before a new one is built.

        The latest sample keeps its snapshot, but its `previous` (two samples
        old by now) is dropped, so that at most two samples' sockets are held
        while a third is being dumped: at 143k sockets each is ~60 MB.
        """
        with self._lock:
            if self._latest is not None:
                self._latest.previous = None

    # --- the steps -------------------------------------------------------

    def _dump(self, namespaces: list[NsRef], warnings: list[str], *, refresh: bool
              ) -> tuple[list[Netns], list[Socket]]:
        """Every socket of the namespaces (the doctor needs them all) with ages.

        Sysctls change rarely: they are read on full-walk samples and reused
        in between; the counters (for trends) are read every time.
        """
        query = self.query if not self.doctor else Query()
        opts = dataclasses.replace(  # shutdown/cgroup/mark: nothing here reads them
            inventory.dump_options(query, age=True, info=self.info, evidence=self.doctor),
            attrs=False)
        unknown = any(ns.inode not in self._sysctls for ns in namespaces)
        records, dumped = inventory.dump_namespaces(
            namespaces, opts, inventory.families(self.query), warnings,
            sysctls=refresh or unknown, counters=True)
        for record in records:
            record.name = self._names.setdefault(record.inode, record.name)
            if record.sysctls:
                self._sysctls[record.inode] = record.sysctls
            else:
                record.sysctls = self._sysctls.get(record.inode, {})
        if refresh or not self._host_sysctls:
            self._host_sysctls = procfs.read_sysctls(procfs.GLOBAL_SYSCTLS)
        return records, dumped

    def _owner_map(self, collect: Callable[[list[Socket]], procfs.OwnerMap] | None,
                   namespaces: list[NsRef], found: list[NsRef], dumped: list[Socket],
                   live: set[int], seq: int) -> tuple[procfs.OwnerMap, bool, int]:
        """Owners from the cache; a full walk when due or when the cache cannot place one.

        An unscheduled walk happens at most every FORCED_WALK_GAP samples, so
        a host where new sockets keep appearing that no process we can see
        holds does not pay a full walk every time. Returns the owner map,
        whether all of /proc was walked, and how many descriptors were read.
        """
        wanted = self._wanted(dumped, live)
        if collect is None:
            first, other = inventory.owner_pids(namespaces, found)
            cached = self._owners.pids()
            done = self._owners.update([*first, *(p for p in other if p in cached)],
                                       live, wanted)
            if done.complete or seq - self._last_full < FORCED_WALK_GAP:
                return self._owners.owner_map(), False, done.readlinks
            collect = inventory.start_owner_walk(namespaces, found)
        walked = collect(dumped)
        self._owners.full(walked, live)
        self._unowned = self._owners.missing(live)
        self._last_full = seq
        return self._owners.owner_map(), True, sum(walked.fd_counts.values())

    def _wanted(self, dumped: list[Socket], live: set[int]) -> set[int]:
        """Sockets that should have a visible owner: a miss among them is worth a walk.

        Not those a full walk already found no owner for, and without the
        right to read every process not those of other users.
        """
        if self._sees_all:
            return live - self._unowned if self._unowned else live
        uid = os.geteuid()
        return {sk.inode for sk in dumped if sk.inode and sk.uid == uid} - self._unowned

    def _refresh(self, processes: dict[int, Process], owner_map: procfs.OwnerMap) -> None:
        """On a full walk: drop what is kept for processes and sockets that are gone."""
        self._facts.forget_except(set(processes))
        self._protocols = {inode: proto for inode, proto in self._protocols.items()
                           if inode in owner_map.by_inode}

    def _diagnose(self, sample: Sample, whole: Snapshot) -> None:
        """The doctor on this sample (with the previous one) when it is due.

        Due every `doctor_every` samples; with 0 ("auto") as often as it can
        while it uses at most DOCTOR_SHARE of a CPU: a host with 143k sockets
        needs ~1.5 s per run, which every 15 s would be 10 % of a CPU for the
        doctor alone; an agent should stay within a few per cent.
        """
        if not self.doctor:
            return
        if sample.seq >= self._doctor_at or self._report is None:
            query = self.query if narrows(self.query) else None
            spent = time.thread_time()
            self._report = diagnose(whole, self._full_prev, config=self.doctor_config,
                                    query=query)
            spent = time.thread_time() - spent
            gap = self.doctor_every or min(DOCTOR_MAX_GAP, max(
                1, math.ceil(spent / (DOCTOR_SHARE * self.interval))))
            self._doctor_at = sample.seq + gap
            sample.doctor_ran = True
        sample.report = self._report


def _listener_owners(dumped: list[Socket], owner_map: procfs.OwnerMap) -> set[int]:
    """Owners of listeners with connections waiting: the doctor reads their threads."""
    pids: set[int] = set()
    for sk in [sk for sk in dumped if sk.state == TcpState.LISTEN]:
        if sk.recv_q:
            pids.update(o.pid for o in owner_map.by_inode.get(sk.inode, ()))
    return pids


def tune_gc() -> None:
    """The cyclic collector for a process that samples for hours (exporter, top, reap).

    The CLI turns it off for short commands; a daemon needs it back, but with
    its default thresholds a sample at 143k sockets triggered more than one
    full collection (0.13 s of CPU a sample, measured): what a sample creates
    is nearly all freed by reference counting, so collecting every 700
    allocations is wasted work. What start-up made is frozen (never garbage).
    """
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
    gc.enable()


class _Clock:
    """Wall and CPU time since it was made (CPU includes forked walkers)."""

    def __init__(self) -> None:
        self.wall = time.perf_counter()
        self.cpu = _cpu()

    def spent(self) -> tuple[float, float]:
        return time.perf_counter() - self.wall, _cpu() - self.cpu


def _cpu() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system
