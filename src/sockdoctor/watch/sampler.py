"""The sampling engine: scan on an interval, cheaply, and diagnose each sample.

One engine for every continuous consumer (the exporter, top, trace, the
reaper, `doctor --interval`); what a sample holds is below (Sample) and in
docs/exporter.md ("The sampler"). A sample is an inventory.Scanner's scan
(the doctor's evidence at a sampler's cost, inventory.LIGHT) + Identities
(identity.py: which sockets are new or gone since the previous sample, and
since when each one has been in its state) + the doctor. The scanner's owner
source is the cache (linux/ownercache.py CachedOwners): a full walk of /proc
(or the kernel engine's) happens only on the first sample, every
`full_walk_every` samples, and when a socket cannot be placed otherwise;
sysctls are read as rarely (inventory.Memo).

A consumer that reads only watch/metrics.py's families (the exporter) calls
count_in_kernel(): then its steady samples take the kernel engine's counting
socket source (linux/bpf/aggregate.py): each namespace's sockets are counted
in the kernel per state and port, and only CLOSE-WAIT and LISTEN come up, to
be joined to owners (the cache rechecks just their holders) and assembled by
the same Scanner. Not the first sample, a scheduled full walk or one the
doctor runs on (it judges every socket), nor with a narrowing query.
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

from .. import inventory
from ..doctor import DoctorConfig, Report, diagnose
from ..errors import SockdoctorError
from ..inventory import LIGHT, Evidence, ScanOptions
from ..linux.bpf import aggregate, groups
from ..linux.bpf.aggregate import Pass
from ..linux.bpf.sockets import LISTING
from ..linux.ownercache import FORCED_WALK_GAP, CachedOwners
from ..model import Snapshot, Socket, TcpState
from ..query import Query
from .identity import Identities, Key

log = logging.getLogger("sockdoctor.watch")
# doctor_every=0 ("auto"): the doctor may use this share of one CPU (of the
# interval), and runs at least every DOCTOR_MAX_GAP samples whatever it costs
DOCTOR_SHARE = 0.02
DOCTOR_MAX_GAP = 8
_READ = ScanOptions(age=True)  # besides the evidence: each socket's age
COUNTED_EMIT = (TcpState.CLOSE_WAIT, TcpState.LISTEN)  # what watch/metrics.py breaks down


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
    # counted in the kernel (count_in_kernel): netns inode -> sockets per state and
    # ports in use; `snapshot` then holds only the CLOSE-WAIT and LISTEN sockets
    # (group_in_kernel: netns inode -> groups.GroupPass, the counted ESTABLISHED groups)
    tallies: dict[int, Pass] | dict[int, groups.GroupPass] | None = None

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
                 interval: float = 15.0, doctor: bool | DoctorConfig = True,
                 full_walk_every: int = 20, doctor_every: int = 1,
                 evidence: Evidence = LIGHT) -> None:
        """doctor: False, or the doctor on samples (True: with its default config);
        evidence: what each sample collects for it: inventory.LIGHT, or True for
        everything a one-off `doctor` reads, with owners exact on every sample
        (a full walk whenever the cache cannot place a socket)."""
        if interval <= 0:
            raise ValueError("interval must be positive")
        self.query = dataclasses.replace(inventory.as_query(query), netns="all")
        self.netns = netns or "all"
        self.interval = interval
        self.doctor = doctor is not False
        self.doctor_config = doctor if isinstance(doctor, DoctorConfig) else None
        self.full_walk_every = max(1, full_walk_every)
        self.doctor_every = max(0, doctor_every)  # 0: auto (see DOCTOR_SHARE)
        self.evidence: Evidence = evidence or LIGHT
        self._owners = CachedOwners(self.full_walk_every,
                                    forced_gap=1 if evidence is True else FORCED_WALK_GAP)
        self.scanner = inventory.Scanner(self._owners, self._owners.facts,
                                         inventory.Memo(self.full_walk_every), whole=True)
        self._ids = Identities()
        self._prev: Snapshot | None = None  # the previous sample, what the query selects
        self._full_prev: Snapshot | None = None  # the previous sample, every socket
        self._report: Report | None = None
        self._doctor_at = 1  # seq of the next sample the doctor runs on
        self._seq = 0
        self._lock = threading.Lock()
        self._latest: Sample | None = None
        self._counting: aggregate.Counting | None = None  # count_in_kernel()
        self._grouping: groups.Grouping | None = None  # group_in_kernel()
        self._group_when: Callable[[], bool] = bool

    def count_in_kernel(self) -> Sampler:
        """Steady samples may be counted in the kernel (see the module doc): for a
        consumer that reads only watch/metrics.py's families. Without the kernel
        engine nothing changes. close() unloads the program."""
        if self._counting is None:
            self._counting = aggregate.Counting(COUNTED_EMIT)
        return self

    def group_in_kernel(self, when: Callable[[], bool]) -> Sampler:
        """Steady samples may be grouped in the kernel for `top` (linux/bpf/groups.py):
        its placed ESTABLISHED sockets are counted per owner and service, not listed;
        `Sample.tallies` holds the groups. Only while `when()` says top's filter
        selects every socket. Without the kernel engine nothing changes."""
        if self._grouping is None:
            self._grouping = groups.Grouping()
        self._group_when = when
        return self

    def close(self) -> None:
        """Unload what the sampler keeps loaded in the kernel (also done when it is
        collected, or at exit); a later sample loads it again."""
        for source in (self._counting, self._grouping):
            if source is not None:
                source.close()

    @property
    def latest(self) -> Sample | None:
        with self._lock:
            return self._latest

    def note_state_change(self, netns: int, key: Key, new_state: int, when: float) -> None:
        """An exact state change seen by a tracer (netns 0: any namespace) of the socket
        `key` (family, local address, local port, peer address, peer port).

        The next sample takes `when` as the time the socket entered
        `new_state`, so its age becomes exact. Thread-safe.
        """
        self._ids.note(netns, key, new_state, when)

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
            # OSError stays caught: linux/ turns what its entry points raise into the
            # family (oserrors.os_edge: the namespace listing, sock_diag, entering a
            # namespace), but the owner walk still lets some through (procfs.list_pids'
            # listdir of /proc, the parallel walk's fork() and pipe(): EAGAIN, EMFILE),
            # the kernel engine's BpfError is itself an OSError (linux/bpf/libbpf.py),
            # and a watcher that runs for weeks must report them as a failed sample.
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
        counting = self._counting_now(seq)
        whole = self.scanner.scan(self.query, _READ, evidence=self.evidence, netns=self.netns,
                                  sockets=counting or LISTING)
        done = self._owners.last
        sample = Sample(seq, started, previous=self._prev, full_walk=done.full,
                        warnings=list(whole.warnings), readlinks=done.readlinks,
                        denied_pids=done.denied,
                        tallies=counting.tallies if counting is not None else None)
        # the sockets a grouping pass counts are followed by their since (if any)
        parked = (self._grouping.parked() or None) if self._grouping is not None else None
        sample.new, sample.gone, sample.first_seen = self._ids.update(whole.sockets, started,
                                                                      parked)
        if self._grouping is not None:  # placed in the kernel for the next grouped sample
            self._grouping.place(whole, sample.first_seen, whole=counting is None)
        sample.snapshot = self.query.apply(whole) if self.query.narrows else whole
        self._diagnose(sample, whole)  # not due on a counted sample: carried over
        if counting is None:
            self._full_prev = whole  # the doctor's previous: every socket
        self._prev = sample.snapshot
        sample.duration_s, sample.cpu_s = clock.spent()
        with self._lock:
            self._seq = seq
            self._latest = sample
        return sample

    def _counting_now(self, seq: int) -> aggregate.Counting | groups.Grouping | None:
        """The counting (or grouping) source if this sample may be counted (see the
        module doc), told which processes the report names besides the owners (for
        their metrics)."""
        counting = self._counting or (self._grouping if self._group_when() else None)
        if counting is None or self.query.narrows or self.evidence is True \
                or self._owners.walks_next() or not counting.usable():
            return None
        if self.doctor and (seq >= self._doctor_at or self._report is None):
            return None
        report = self._report
        named = frozenset(p.pid for f in report.findings for p in f.processes) \
            if report is not None else frozenset()
        # grouped: the placed sockets' owners are read too (their names head top's rows)
        counting.also = named if isinstance(counting, aggregate.Counting) \
            else named | counting.placed_pids
        return counting

    def _release(self) -> None:
        """Let the sample before the latest go before a new one is built.

        The latest sample keeps its snapshot, but its `previous` (two samples
        old by now) is dropped, so that at most two samples' sockets are held
        while a third is being dumped: at 143k sockets each is ~60 MB.
        """
        with self._lock:
            if self._latest is not None:
                self._latest.previous = None

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
            query = self.query if self.query.narrows else None
            spent = time.thread_time()
            self._report = diagnose(whole, self._full_prev, config=self.doctor_config,
                                    query=query)
            spent = time.thread_time() - spent
            gap = self.doctor_every or min(DOCTOR_MAX_GAP, max(
                1, math.ceil(spent / (DOCTOR_SHARE * self.interval))))
            self._doctor_at = sample.seq + gap
            sample.doctor_ran = True
        sample.report = self._report


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
