"""What the exporter serves, computed once per sample: plain data, no I/O.

The metric names, labels and meanings are the contract of docs/exporter.md.
Cardinality is bounded by design: no pid or peer-address label unless asked
for (`pid=True`), and at most `max_series` series per family — the rest is
folded into one series whose `process` (and every label that differs among
the folded series) reads `other`, so sums stay exact. Families labelled only
by namespace keep whole namespaces (every state) and fold the smallest.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import reduce
from operator import attrgetter

from ..doctor.context import first_pid
from ..doctor.finding import SEVERITY_RANK, Report
from ..jsontext import untrusted
from ..linux.procfs import pod_uid
from ..model import ACCEPT_QUEUE_LABEL, METRIC_STATE_NAMES, Snapshot, Socket, TcpState
from ..sides import DEFAULT_PORT_RANGE, Sides
from ..words import netns_names
from .sampler import Sample

OTHER = "other"
STATE_NAMES = METRIC_STATE_NAMES  # node_exporter's spelling (tcpstat collector)
_ACCEPT_QUEUE, _ORPHAN = -1, -2  # owner "pids" of sockets no process holds
# sockdoctor_finding_severity's values: 0 stays "no finding" in PromQL arithmetic
SEVERITY_LEVEL: dict[str, int] = {name: rank + 1 for name, rank in SEVERITY_RANK.items()}
_NETNS, _STATE, _LPORT = attrgetter("netns"), attrgetter("state"), attrgetter("local_port")


@dataclass
class Family:
    """One metric family: name, help, label names and (label values, value) samples."""

    name: str
    help: str
    labels: tuple[str, ...] = ()
    kind: str = "gauge"  # or "counter" (name ends in _total)
    samples: list[tuple[tuple[str, ...], float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        # Every label value escaped once, here: a process or namespace name is any
        # bytes a local user chose (jsontext.untrusted: injective, docs/exporter.md).
        self.samples = [(tuple(map(untrusted, labels)), value)
                        for labels, value in self.samples]


# --[no-]collector.NAME: the optional families, on by default (--no-collector.doctor
# also stops the doctor itself)
COLLECTORS: dict[str, tuple[str, ...]] = {
    "doctor": ("sockdoctor_finding_sockets", "sockdoctor_findings",
               "sockdoctor_doctor_last_run_timestamp_seconds"),
    "listen_queue": ("sockdoctor_listen_queue_length", "sockdoctor_listen_queue_limit"),
    "process_fds": ("sockdoctor_process_open_fds", "sockdoctor_process_max_fds"),
    "ephemeral_ports": ("sockdoctor_ephemeral_ports_used_ratio",),
    "netns_info": ("sockdoctor_netns_info",),
}


@dataclass(frozen=True)
class Options:
    max_series: int = 100  # per family
    pid: bool = False  # add a `pid` label where there is a process (more series)
    off: frozenset[str] = frozenset()  # names of COLLECTORS switched off


@dataclass
class Health:
    """What the exporter counts across samples (its own health)."""

    samples: int = 0
    errors: int = 0
    full_walks: int = 0
    last_success: float = 0.0
    not_root: bool = False
    version: str = ""
    build: dict[str, str] = field(default_factory=dict)  # build_info's labels but version


def build_labels() -> dict[str, str]:
    """build_info's labels besides version: Python, the engine in use (C or pure), and
    the revision when known (SOCKDOCTOR_REVISION, or a REVISION file written at build)."""
    import os
    import platform

    from ..linux import native

    revision = os.environ.get("SOCKDOCTOR_REVISION", "").strip()
    if not revision:
        try:
            with open(os.path.join(os.path.dirname(os.path.dirname(__file__)),
                                   "REVISION")) as f:
                revision = f.read(100).strip()
        except OSError:
            pass
    return {"python_version": platform.python_version(),
            "engine": "C" if native.fast is not None else "pure",
            "revision": untrusted(revision) or "unknown"}


def build(sample: Sample, health: Health, opts: Options) -> list[Family]:
    """Every family for one sample. A failed sample serves only the health families
    (like a failed node_exporter collector), never data from an older sample."""
    dropped: dict[str, int] = {}
    families: list[Family] = []
    snap = sample.snapshot
    if snap is not None:
        view = _View(snap, sample, opts)
        families += view.namespaces(dropped)
        families += view.close_wait(dropped)
        if "listen_queue" not in opts.off:
            families += view.listeners(dropped)
        if "process_fds" not in opts.off:
            families += view.processes(dropped, sample.report)
        if "doctor" not in opts.off:
            families += view.findings(dropped, sample.report)
    families += _health(sample, health)
    off = {name for collector in opts.off for name in COLLECTORS[collector]}
    families.append(Family("sockdoctor_series_dropped",
                           "Series folded into process=\"other\" (or netns=\"other\") by "
                           "--max-series, per metric family.", ("metric",),
                           samples=[((name,), float(n)) for name, n in sorted(dropped.items())
                                    if name not in off]))
    return [f for f in families if f.name not in off]


class _View:
    """One snapshot seen as metric rows: who holds what, labelled and bounded."""

    def __init__(self, snap: Snapshot, sample: Sample, opts: Options) -> None:
        self.snap, self.sample, self.opts = snap, sample, opts
        self.names = netns_names(snap)  # escaped by Family
        self.listeners_ = [sk for sk in snap.sockets if sk.state == TcpState.LISTEN]
        self.sides = Sides(snap, self.listeners_)  # the rule of ls --json's side/service
        self.listening, self.ranges = self.sides.listening, self.sides.ranges
        self.pod = {pid: pod_uid(p.cgroup) for pid, p in snap.processes.items()}
        self.groups = self._close_wait_groups()

    # --- labels ------------------------------------------------------------

    def ns(self, inode: int) -> str:
        return self.names.get(inode) or f"net:[{inode}]"

    def who(self, pid: int) -> tuple[str, ...]:
        """process, container, pod_uid (and pid with --label pid) of an owner."""
        proc = self.snap.processes.get(pid) if pid > 0 else None
        name = (proc.comm if proc else "unknown") if pid >= 0 else (
            ACCEPT_QUEUE_LABEL if pid == _ACCEPT_QUEUE else "orphan")
        labels = (name, proc.container if proc else "", self.pod.get(pid, "") if proc else "")
        return (*labels, str(pid) if pid > 0 else "") if self.opts.pid else labels

    def who_labels(self) -> tuple[str, ...]:
        return ("process", "container", "pod_uid", *(("pid",) if self.opts.pid else ()))

    def owner(self, sk: Socket) -> int:
        if sk.owners:
            return first_pid(sk)
        if sk.inode:
            return 0  # held by a process we cannot see
        return _ACCEPT_QUEUE if (sk.netns, sk.local_port) in self.listening else _ORPHAN

    # --- families ----------------------------------------------------------

    def _counts(self) -> tuple[Counter[tuple[int, int]], Counter[int]]:
        """Sockets per (netns, state) and per netns: counted in the kernel (the
        sample's tallies, Sampler.count_in_kernel) or here."""
        tallies = self.sample.tallies
        if tallies is not None:
            counts = Counter({(inode, st): n for inode, t in tallies.items()
                              for st, n in t.states.items()})
            return counts, Counter({inode: t.sockets for inode, t in tallies.items()})
        socks = self.snap.sockets
        counts = Counter(zip(map(_NETNS, socks), map(_STATE, socks), strict=True))
        return counts, Counter(map(_NETNS, socks))

    def namespaces(self, dropped: dict[str, int]) -> list[Family]:
        counts, totals = self._counts()
        inodes = [ns.inode for ns in self.snap.namespaces if not ns.error]
        kept = set(sorted(inodes, key=lambda i: (-totals[i], self.ns(i)))[:self.opts.max_series])
        fold = {i: self.ns(i) if i in kept else OTHER for i in inodes}
        states: Counter[tuple[str, str]] = Counter()
        for inode in inodes:
            for st, name in STATE_NAMES.items():
                states[(fold[inode], name)] += counts[(inode, st)]
        ratio = dict.fromkeys(fold.values(), 0.0)
        for inode, used in self._ports_used().items():
            if inode in fold:
                lo, hi = self.ranges[inode]
                name = fold[inode]
                ratio[name] = max(ratio.get(name, 0.0), used / (hi - lo + 1))
        folded = len(inodes) - len(kept)
        for name, per in (("sockdoctor_tcp_sockets", len(STATE_NAMES)),
                          ("sockdoctor_ephemeral_ports_used_ratio", 1)):
            dropped[name] = folded * per
        info = [((fold[i], ns.kind, str(ns.inode)), 1.0) for ns in self.snap.namespaces
                if (i := ns.inode) in kept]
        return [
            Family("sockdoctor_tcp_sockets", "TCP sockets by network namespace and state "
                   "(node_exporter's state names).", ("netns", "state"),
                   samples=sorted((k, float(v)) for k, v in states.items())),
            Family("sockdoctor_ephemeral_ports_used_ratio",
                   "Local ports in net.ipv4.ip_local_port_range in use (by any socket but "
                   "listeners) over the size of the range.", ("netns",),
                   samples=sorted(((k,), v) for k, v in ratio.items())),
            Family("sockdoctor_netns_info", "Scanned network namespaces: kind and inode.",
                   ("netns", "kind", "inode"), samples=sorted(info)),
        ]

    def _ports_used(self) -> dict[int, int]:
        """Per namespace: distinct local ports in the ephemeral range, listeners' excepted."""
        socks = self.snap.sockets
        used: Counter[int] = Counter()
        tallies = self.sample.tallies
        pairs = {(inode, port) for inode, t in tallies.items() for port in t.ports} \
            if tallies is not None else \
            set(zip(map(_NETNS, socks), map(_LPORT, socks), strict=True))
        for inode, port in pairs:
            lo, hi = self.ranges.get(inode, DEFAULT_PORT_RANGE)
            if lo <= port <= hi and (inode, port) not in self.listening:
                used[inode] += 1
        return used

    def _close_wait_groups(self) -> dict[tuple[int, int, bool, int], list[int]]:
        """(netns, owner pid, client side?, port) -> [count, oldest age ms] of CLOSE-WAIT.

        The one loop here that runs over many sockets (on a leaking host, most
        of them), so it is written out with local names.
        """
        groups: dict[tuple[int, int, bool, int], list[int]] = {}
        first_seen, started = self.sample.first_seen, self.sample.started
        close_wait = [sk for sk in self.snap.sockets if sk.state == TcpState.CLOSE_WAIT]
        for sk, client in zip(close_wait, self.sides.clients(close_wait), strict=True):
            owners = sk.owners
            pid = (owners[0].pid if len(owners) == 1 else first_pid(sk)) if owners \
                else self.owner(sk)
            netns, port = sk.netns, sk.local_port
            key = (netns, pid, client, sk.peer_port if client else port)
            age = sk.age_ms or 0
            since = first_seen.get(sk.cookie)
            if since is not None and (started - since) * 1000 > age:
                age = int((started - since) * 1000)
            group = groups.get(key)
            if group is None:
                groups[key] = [1, age]
            else:
                group[0] += 1
                if age > group[1]:
                    group[1] = age
        return groups

    def series(self, labels: tuple[str, ...], merge: Merge, rank: Rank,
               force: int) -> _Series:
        """Rows for the families of one group, bounded by --max-series."""
        return _Series(labels, merge, rank, force, self.opts.max_series)

    def close_wait(self, dropped: dict[str, int]) -> list[Family]:
        """CLOSE-WAIT by namespace, owner and side, with the oldest age of each group."""
        rows = self.series(("netns", "process", "side", "port", *self.who_labels()[1:]),
                           _add_max, lambda v: (v[0], v[1]), force=1)
        for (inode, pid, client, port), (count, age) in self.groups.items():
            who = self.who(pid)
            rows.add((self.ns(inode), who[0], "client" if client else "server", str(port),
                      *who[1:]), [count, age / 1000])
        return rows.families(dropped, _CLOSE_WAIT)

    def listeners(self, dropped: dict[str, int]) -> list[Family]:
        rows = self.series(("netns", "process", "port", *self.who_labels()[1:]), _add, _fill,
                           force=1)
        for sk in self.listeners_:
            who = self.who(self.owner(sk))
            rows.add((self.ns(sk.netns), who[0], str(sk.local_port), *who[1:]),
                     [float(sk.recv_q), float(sk.send_q)])
        return rows.families(dropped, _LISTEN_QUEUE)

    def processes(self, dropped: dict[str, int], report: Report | None) -> list[Family]:
        """Descriptors of the processes that hold stuck sockets (CLOSE-WAIT or a finding)."""
        pids = {pid for _ns, pid, _client, _port in self.groups if pid > 0}
        if report is not None:
            pids.update(p.pid for f in report.findings for p in f.processes)
        rows = self.series(("netns", *self.who_labels()), _fuller, _fill, force=1)
        for pid in pids:
            proc = self.snap.processes.get(pid)
            if proc is not None:
                rows.add((self.ns(proc.netns), *self.who(pid)),
                         [float(proc.fd_count), float(proc.fd_limit)])
        return rows.families(dropped, _PROCESS_FDS)

    def findings(self, dropped: dict[str, int], report: Report | None) -> list[Family]:
        """One series per finding identity (no severity label: it changes as a leak ages,
        and a label change would start a new series); the severity is a value."""
        rows = self.series(("netns", "rule", "process", "port", *self.who_labels()[1:]),
                           _add_max, lambda v: (v[2], v[0]), force=2)
        for f in report.findings if report is not None else ():
            proc = f.processes[0] if f.processes else None
            who = self.who(proc.pid) if proc else ("", "", "", *(("",) if self.opts.pid else ()))
            rows.add((f.netns, f.rule, who[0], str(f.ports[0]) if f.ports else "", *who[1:]),
                     [float(f.sockets), 1.0, float(SEVERITY_LEVEL[f.severity])])
        return rows.families(dropped, _FINDINGS)


# (name, help) of the families each group of rows makes, one per value column
_CLOSE_WAIT = (
    ("sockdoctor_close_wait_sockets", "CLOSE-WAIT sockets by namespace, owner and side "
     "(server: port is our listening port; client: port is the remote service's)."),
    ("sockdoctor_close_wait_oldest_seconds", "Age of the oldest CLOSE-WAIT socket of each "
     "group: a lower bound of the time since the peer closed (docs/age.md)."))
_LISTEN_QUEUE = (
    ("sockdoctor_listen_queue_length", "Connections waiting in a listener's accept queue (ss "
     "Recv-Q of a LISTEN socket)."),
    ("sockdoctor_listen_queue_limit", "Size of that accept queue: the backlog (ss Send-Q of a "
     "LISTEN socket)."))
_PROCESS_FDS = (
    ("sockdoctor_process_open_fds", "Open descriptors of processes holding stuck sockets "
     "(several with one name: the fullest)."),
    ("sockdoctor_process_max_fds", "Their descriptor limit (soft RLIMIT_NOFILE; 0: unlimited "
     "or unknown)."))
_FINDINGS = (
    ("sockdoctor_finding_sockets", "Sockets concerned by each of the doctor's findings on the "
     "latest sample (no series when healthy; `sockdoctor doctor` explains them)."),
    ("sockdoctor_findings", "Number of the doctor's findings (some concern no socket: "
     "sysctls, descriptor limits)."),
    ("sockdoctor_finding_severity", "The doctor's severity of each finding: 1 info, 2 "
     "warning, 3 critical (the highest of the findings a series sums up)."))


def _health(sample: Sample, health: Health) -> list[Family]:
    snap = sample.snapshot
    failed_ns = sum(bool(ns.error) for ns in snap.namespaces) if snap else 0
    incomplete = [(("other_namespaces_not_scanned",), float(health.not_root)),
                  (("processes_unreadable",), float(sample.denied_pids)),
                  (("namespaces_failed",), float(failed_ns))]
    doctor_at = sample.report.snapshot.created if sample.report is not None else 0.0
    return [
        Family("sockdoctor_up", "1 if the latest sample succeeded, 0 if it failed.",
               samples=[((), 0.0 if sample.error else 1.0)]),
        Family("sockdoctor_scan_incomplete", "What the latest sample could not see: without "
               "root other namespaces (1), processes whose descriptors were unreadable, "
               "namespaces whose scan failed (counts).", ("reason",), samples=incomplete),
        Family("sockdoctor_scan_duration_seconds", "Wall time of the latest sample.",
               samples=[((), sample.duration_s)]),
        Family("sockdoctor_scan_cpu_seconds", "CPU time of the latest sample (with the /proc "
               "walkers).", samples=[((), sample.cpu_s)]),
        Family("sockdoctor_last_scan_timestamp_seconds", "When the latest successful sample "
               "started (Unix time).", samples=[((), health.last_success)]),
        Family("sockdoctor_doctor_last_run_timestamp_seconds", "When the sample the findings "
               "come from started (Unix time; 0: no doctor).", samples=[((), doctor_at)]),
        Family("sockdoctor_samples_total", "Samples taken.", kind="counter",
               samples=[((), float(health.samples))]),
        Family("sockdoctor_scan_errors_total", "Samples that failed.", kind="counter",
               samples=[((), float(health.errors))]),
        Family("sockdoctor_full_walks_total", "Samples that walked all of /proc for owners.",
               kind="counter", samples=[((), float(health.full_walks))]),
        Family("sockdoctor_build_info", "The running exporter: version, Python version, "
               "engine (C: the compiled fast path; pure: Python only) and revision.",
               ("version", *health.build), samples=[((health.version,
                                                       *health.build.values()), 1.0)]),
    ]


def fold(rows: dict[tuple[str, ...], list[float]], limit: int,
         rank: Callable[[list[float]], tuple], merge: Callable[[list[float], list[float]],
                                                                list[float]],
         force: int) -> tuple[dict[tuple[str, ...], list[float]], int]:
    """Keep the `limit` highest-ranked rows and fold the rest into one.

    The folded row's label at index `force` (the process) reads "other", and
    so does every other label whose value differs among the folded rows.
    Returns the rows and how many were folded.
    """
    if len(rows) <= limit:
        return rows, 0
    order = sorted(rows.items(), key=lambda kv: (tuple(-x for x in rank(kv[1])), kv[0]))
    kept = dict(order[:limit])
    rest = order[limit:]
    width = len(rest[0][0])
    key = tuple(OTHER if i == force or len({k[i] for k, _ in rest}) > 1 else rest[0][0][i]
                for i in range(width))
    value = reduce(merge, (v for _, v in rest))
    kept[key] = merge(kept[key], value) if key in kept else value
    return kept, len(rest)


Rows = dict[tuple[str, ...], list[float]]
Merge = Callable[[list[float], list[float]], list[float]]
Rank = Callable[[list[float]], tuple]


class _Series:
    """Rows of label values -> value columns for a few families that share labels.

    Rows with the same labels merge; past `limit` the lowest-ranked rows fold
    into one (fold()); each value column becomes one family.
    """

    def __init__(self, labels: tuple[str, ...], merge: Merge, rank: Rank, force: int,
                 limit: int) -> None:
        self.labels, self.merge, self.rank, self.force, self.limit = \
            labels, merge, rank, force, limit
        self.rows: Rows = {}

    def add(self, key: tuple[str, ...], value: list[float]) -> None:
        rows = self.rows
        rows[key] = self.merge(rows[key], value) if key in rows else value

    def families(self, dropped: dict[str, int],
                 specs: tuple[tuple[str, str], ...]) -> list[Family]:
        """One family per (name, help), from the kept rows' columns in order."""
        kept, folded = fold(self.rows, self.limit, self.rank, self.merge, self.force)
        out = []
        for column, (name, help_text) in enumerate(specs):
            dropped[name] = folded
            out.append(Family(name, help_text, self.labels, samples=_column(kept, column)))
        return out


def _column(rows: dict[tuple[str, ...], list[float]], index: int
            ) -> list[tuple[tuple[str, ...], float]]:
    return sorted((key, float(values[index])) for key, values in rows.items())


def _add(a: list[float], b: list[float]) -> list[float]:
    return [x + y for x, y in zip(a, b, strict=True)]


def _add_max(a: list[float], b: list[float]) -> list[float]:
    """Counts add up, the last column (an age, a severity) takes the maximum."""
    return [*(x + y for x, y in zip(a[:-1], b[:-1], strict=True)), max(a[-1], b[-1])]


def _fill(v: list[float]) -> tuple[float, float]:
    return (v[0] / v[1] if v[1] else 0.0, v[0])


def _fuller(a: list[float], b: list[float]) -> list[float]:
    """Of two (open, limit) pairs, the one closer to its limit: fds do not add up."""
    return a if _fill(a) >= _fill(b) else b

