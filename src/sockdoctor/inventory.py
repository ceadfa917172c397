"""Scanner(owner_source).scan(query) -> Snapshot: the one place that joins kernel,
/proc and namespaces.

A scan is: select_namespaces -> start the owner source -> dump_namespaces
from the socket source -> finish the owners -> processes (and, with
evidence, dead descriptors) -> Snapshot. The owner source (linux/owners.py)
is the full /proc walk, the kernel engine's iter/task_file walk (chosen per
scan by owners.choose()), or the sampler's cache (watch/sampler.py); the
socket source (linux/bpf/sockets.py) is every socket from iter/tcp or
sock_diag, or the kernel engine's counting pass (bpf/aggregate.py: a few
sockets, the rest counted; the exporter's sampler); scan() is the one-call
entry point.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Literal

from .errors import NotFoundError, PermissionDeniedError, SockdoctorError
from .linux import deadsock, procfs, runtime, sockdiag
from .linux import netns as netns_mod
from .linux import owners as owner_sources
from .linux.bpf import sockets as bpf_sockets
from .linux.bpf.sockets import SocketSource
from .linux.owners import Facts, Found, OwnerSource, Scope
from .model import (
    KEEPALIVE_TIMER,
    DeadSocketFd,
    Netns,
    Process,
    Snapshot,
    Socket,
    TcpState,
    state_mask,
)
from .query import Query
from .selectors import unknown_netns, unknown_pids, unknown_process
from .sides import PORT_RANGE_SYSCTL
from .words import plural

__all__ = ["LIGHT", "Facts", "Memo", "OwnerSource", "ScanOptions", "Scanner", "SocketSource",
           "scan"]

Progress = Callable[[str], None]
# What a scan collects for the doctor: True, everything (sysctls, counters,
# thread states of every owner, dead descriptors, runtimes, ages refreshed
# past keepalive probes); LIGHT, what a sampler affords every few seconds
# (the same without runtimes, the keepalive re-dump and shutdown/cgroup/mark,
# thread states of queued listeners' owners only); False, none.
LIGHT = "light"
Evidence = bool | Literal["light"]


@dataclass
class _NsResult:
    sockets: list[Socket]
    sysctls: dict[str, str]
    counters: dict[str, dict[str, int]]


@dataclass(frozen=True)
class ScanOptions:
    """What to read of each socket and namespace besides its identity, state and queues."""

    info: bool = False  # decode tcp_info and the congestion control
    mem: bool = False  # socket memory (ss -m)
    age: bool = False  # only the age estimate (tcp_info's last-ACK-received)
    extended: bool = False  # what `ss -e` adds: shutdown state, cgroup id, mark
    # with info, keep tcp_info undecoded (Socket.info_blob; read it with
    # linux.tcpinfo.of()): a listing that streams its output then never holds
    # every decoded tcp_info at once
    lazy_info: bool = False
    counters: bool = False  # each namespace's /proc/net/{snmp,sockstat} (ss -s)


def scan(query: Query | str | None = None, options: ScanOptions = ScanOptions(), *,
         owners: bool = True, evidence: bool = False, netns: str | None = None,
         progress: Progress | None = None) -> Snapshot:
    """Every TCP socket matching `query`, in every selected network namespace.

    options: what to read besides (tcp_info, memory, ages, ...: ScanOptions).
    owners: join each socket to the (pid, fd) pairs holding it (all of /proc,
        or the kernel engine's walk: linux/owners.py choose()).
    evidence: also collect what the doctor needs: sysctls, counters, thread
        states of owning processes, descriptors of dead TCP sockets.
    netns: "all" (default), "host", a name from `ip netns`, a PID or an inode;
        overrides the query's own setting when given.
    """
    query = as_query(query)
    check_selection(query)
    return Scanner(progress=progress).scan(query, options, owners=owners, evidence=evidence,
                                           netns=netns)


@dataclass
class Memo:
    """What a long-running scanner (the sampler's) keeps between scans.

    Sysctls change rarely: a namespace's are read every `every` scans (the
    first included) and when it is new, the host's every `every` scans; in
    between the last ones are reused (the port range is read every time: it
    decides sides). A namespace keeps the name it was first given.
    """

    every: int = 20
    scans: int = 0
    due: bool = False  # this scan re-reads the sysctls
    names: dict[int, str] = field(default_factory=dict)
    sysctls: dict[int, dict[str, str]] = field(default_factory=dict)
    host: dict[str, str] = field(default_factory=dict)

    def begin(self, namespaces: list[netns_mod.NsRef]) -> bool:
        """Count a scan; whether it reads its namespaces' sysctls."""
        self.scans += 1
        self.due = self.scans == 1 or (self.scans - 1) % max(1, self.every) == 0
        return self.due or any(ns.inode not in self.sysctls for ns in namespaces)

    def fill(self, records: list[Netns], read: bool) -> None:
        for record in records:
            record.name = self.names.setdefault(record.inode, record.name)
            if read and record.sysctls:
                self.sysctls[record.inode] = record.sysctls
            else:
                record.sysctls = {**self.sysctls.get(record.inode, {}), **record.sysctls}

    def host_sysctls(self) -> dict[str, str]:
        if self.due or not self.host:
            self.host = procfs.read_sysctls(procfs.GLOBAL_SYSCTLS)
        return self.host


@dataclass
class _Run:
    """One scan's inputs and what it gathered on the way."""

    query: Query
    options: ScanOptions
    evidence: Evidence
    owners: bool
    dump: sockdiag.DumpOptions
    sockets: SocketSource = bpf_sockets.LISTING
    created: float = field(default_factory=time.time)
    warnings: list[str] = field(default_factory=list)


class Scanner:
    """Scans the host's TCP sockets: kernel -> linux/ -> Snapshot (see the module doc).

    owners: where owners come from (linux/owners.py); None: owners.choose()
        at each scan (the kernel engine's walk when it pays off, else /proc).
    facts: where process facts come from (default: /proc each time).
    memo: what to keep between scans (Memo); None: nothing.
    whole: keep every dumped socket: the query narrows only the kernel's dump
        (the sampler selects afterwards and keeps the whole for its doctor).
    progress: told what the scan is doing (a terminal's status line).
    """

    def __init__(self, owners: OwnerSource | None = None, facts: Facts | None = None,
                 memo: Memo | None = None, *, whole: bool = False,
                 progress: Progress | None = None) -> None:
        self.owners = owners
        self.facts = facts or Facts()
        self.memo = memo
        self.whole = whole
        self.progress = progress

    def scan(self, query: Query | str | None = None, options: ScanOptions = ScanOptions(), *,
             owners: bool = True, evidence: Evidence = False, netns: str | None = None,
             sockets: SocketSource = bpf_sockets.LISTING) -> Snapshot:
        """One scan of the namespaces `netns` (default: the query's); see scan().

        sockets: where they come from (default: every one, from iter/tcp or
        sock_diag); a counting source (bpf/aggregate.py, the sampler's) gives
        only some, and then no dead descriptors are looked for (that needs
        every socket), but the processes it names (`also`) are read.
        Unlike scan() it does not check --pid/--process first (check_selection).
        """
        query = as_query(query)
        o = options
        run = _Run(query, options, evidence, owners or query.needs_owners or bool(evidence),
                   dump_options(query, info=o.info, age=o.age, mem=o.mem, extended=o.extended,
                                evidence=evidence, lazy_info=o.lazy_info), sockets)
        namespaces, found = select_namespaces(query.netns if netns is None else netns,
                                              run.warnings)
        finish = None
        if run.owners:
            finish = (self.owners or owner_sources.choose()).start(Scope(namespaces, found))
        self._say(f"dumping TCP sockets in {plural(len(namespaces), 'network namespace')}")
        records, dumped = self._dump(run, namespaces)
        if evidence is True and run.dump.age and not o.info:
            add_keepalive_info(namespaces, dumped, families(query))
        every = Found(dumped, sockets.complete, sockets.also)
        chosen = every  # whole: the caller selects afterwards (Query.select learns then)
        if not self.whole:
            query.learn(records)  # `autobound`: each namespace's own port range
            chosen = Found([sk for sk in dumped if query.match_socket(sk)],
                           sockets.complete, sockets.also)
        joined = Joined(chosen.sockets)
        if finish is not None:
            self._say(f"finding owners of {len(chosen.sockets)} sockets")
            owner_map = finish(chosen)
            warn_denied(owner_map, run.warnings)
            joined = self._attach(run, chosen, every, owner_map, records)
            if evidence is True:
                add_runtimes(joined)
        return self._assemble(run, joined, records)

    def _say(self, message: str) -> None:
        if self.progress is not None:
            self.progress(message)

    def _dump(self, run: _Run, namespaces: list[netns_mod.NsRef]
              ) -> tuple[list[Netns], list[Socket]]:
        read = self.memo.begin(namespaces) if self.memo else bool(run.evidence)
        records, dumped = dump_namespaces(namespaces, run.dump, families(run.query),
                                          run.warnings, sysctls=read,
                                          counters=bool(run.evidence) or run.options.counters,
                                          source=run.sockets)
        if self.memo:
            self.memo.fill(records, read)
        return records, dumped

    def _attach(self, run: _Run, chosen: Found, every: Found, owner_map: procfs.OwnerMap,
                records: list[Netns]) -> Joined:
        """Join owners, read their processes, apply --pid/--process, find dead descriptors."""
        pids = join_owners(chosen.sockets, owner_map)
        counts = owner_map.fd_counts
        # whose thread states the doctor reads: every owner, or (LIGHT) queued listeners'
        threads = _listener_owners(every.sockets, owner_map) if run.evidence == LIGHT else None
        joined = Joined(chosen.sockets)
        for pid in sorted(pids):
            want_threads = bool(run.evidence) and (threads is None or pid in threads)
            proc = self.facts.process(pid, counts.get(pid, 0), want_threads)
            if proc is not None:
                joined.processes[pid] = proc
        query = run.query
        if query.needs_owners and not self.whole:
            joined.sockets = [sk for sk in joined.sockets
                              if query.match_owner(sk, joined.processes)]
            keep = {o.pid for sk in joined.sockets for o in sk.owners}
            joined.processes = {pid: p for pid, p in joined.processes.items() if pid in keep}
        if run.evidence and every.complete:
            self._add_dead_fds(joined, every, owner_map, records)
        self._add_processes(joined, every.also, owner_map)
        return joined

    def _add_processes(self, joined: Joined, pids: frozenset[int],
                       owner_map: procfs.OwnerMap) -> None:
        """Facts of these processes too, whether or not they hold a socket found."""
        for pid in pids - joined.processes.keys():
            proc = self.facts.process(pid, owner_map.fd_counts.get(pid, 0), False)
            if proc is not None:
                joined.processes[pid] = proc

    def _add_dead_fds(self, joined: Joined, every: Found, owner_map: procfs.OwnerMap,
                      records: list[Netns]) -> None:
        """Descriptors of TCP sockets in no table of the scanned namespaces, and their holders."""
        joined.dead_fds = deadsock.inspect_all(procfs.dead_tcp_fds(
            owner_map, every.live, {ns.inode for ns in records if not ns.error},
            self.facts.protocols))
        for pid in {d.pid for d in joined.dead_fds} - joined.processes.keys():
            proc = self.facts.process(pid, owner_map.fd_counts.get(pid, 0), True)
            if proc is not None:
                joined.processes[pid] = proc

    def _assemble(self, run: _Run, joined: Joined, records: list[Netns]) -> Snapshot:
        if self.memo is not None:
            host_sysctls = self.memo.host_sysctls()
        else:
            host_sysctls = procfs.read_sysctls(procfs.GLOBAL_SYSCTLS) if run.evidence else {}
        return Snapshot(
            created=run.created,
            hostname=socket.gethostname(),
            kernel=os.uname().release,
            sockets=joined.sockets,
            namespaces=records,
            processes=joined.processes,
            sysctls=host_sysctls,
            dead_fds=joined.dead_fds,
            owners_scanned=run.owners,
            info_scanned=run.options.info,
            age_scanned=run.dump.age or run.options.info,
            warnings=run.warnings,
        )


def as_query(query: Query | str | None) -> Query:
    if query is None or isinstance(query, str):
        return Query.build(query or ())
    return query


def check_selection(query: Query) -> None:
    """--pid and --process must name a running process: else exit 3, with a hint.

    Checked before any scan, in every command (ls, doctor, kill, snapshot):
    a typo is the user's mistake, not an empty answer.
    """
    missing = [pid for pid in sorted(query.pids) if not procfs.pid_exists(pid)]
    if missing:
        raise unknown_pids(missing, " is running")
    if query.process:
        names = procfs.process_names()
        if not any(query.match_process(proc) for proc in names):
            raise unknown_process(query.process, (p.comm for p in names), " is running")


def families(query: Query) -> tuple[int, ...]:
    return (query.family,) if query.family else (socket.AF_INET, socket.AF_INET6)


def dump_options(query: Query, *, info: bool = False, age: bool = False, mem: bool = False,
                 extended: bool = False, evidence: Evidence = False,
                 lazy_info: bool = False) -> sockdiag.DumpOptions:
    """What to ask the kernel for. The doctor's evidence needs every socket of the
    namespace (a descriptor is only "dead" if its socket is in no table at all),
    whatever the query says."""
    kernel = query.kernel_filter(bool(evidence))  # the states and ports, decided there
    return sockdiag.DumpOptions(states=kernel.states, info=info, age=age or query.needs_age,
                                mem=mem, attrs=extended or evidence is True, lazy_info=lazy_info,
                                bytecode=kernel.bytecode, ports=kernel.ports)


def warn_denied(owner_map: procfs.OwnerMap, warnings: list[str]) -> None:
    if owner_map.denied_pids and not procfs.sees_every_process():  # odd inits refuse root
        warnings.append(
            f"{owner_map.denied_pids} processes of other users were not readable: their "
            "sockets show no owner (run as root to see them)")


@dataclass
class Joined:
    """Sockets with their owners joined, the owning processes and dead descriptors."""

    sockets: list[Socket]
    processes: dict[int, Process] = field(default_factory=dict)
    dead_fds: list[DeadSocketFd] = field(default_factory=list)


def _listener_owners(dumped: list[Socket], owner_map: procfs.OwnerMap) -> set[int]:
    """Owners of listeners with connections waiting: the doctor reads their threads."""
    pids: set[int] = set()
    for sk in dumped:
        if sk.state == TcpState.LISTEN and sk.recv_q:
            pids.update(o.pid for o in owner_map.by_inode.get(sk.inode, ()))
    return pids


# The sockets whose holders' runtime the doctor names: the stuck ones, and
# listeners with a queue (whose workers may be busy).
_RUNTIME_STATES = frozenset({TcpState.CLOSE_WAIT, TcpState.FIN_WAIT2})


def add_runtimes(joined: Joined) -> None:
    """Read the runtime of each process holding a stuck socket or a queued listener."""
    pids = {o.pid for sk in joined.sockets for o in sk.owners
            if sk.state in _RUNTIME_STATES or (sk.state == TcpState.LISTEN and sk.recv_q)}
    for pid in pids:
        proc = joined.processes.get(pid)
        if proc is not None and proc.runtime is None:
            proc.runtime = runtime.runtime_of(pid)


def add_keepalive_info(namespaces: list[netns_mod.NsRef], dumped: list[Socket],
                       fams: tuple[int, ...]) -> None:
    """Full tcp_info for CLOSE-WAIT sockets whose keepalive probes reset their age.

    A keepalive probe's answer refreshes tcp_info's last-ACK-received, the
    age's usual source; last-data-received is not refreshed by it (docs/age.md).
    Only those sockets' namespaces are dumped again, CLOSE-WAIT only.
    """
    wanted = {(sk.netns, sk.cookie): sk for sk in dumped
              if sk.state == TcpState.CLOSE_WAIT and sk.timer == KEEPALIVE_TIMER
              and sk.info is None}
    if not wanted:
        return
    opts = sockdiag.DumpOptions(states=state_mask(TcpState.CLOSE_WAIT), info=True)
    inodes = {key[0] for key in wanted}
    for ns in namespaces:
        if ns.inode not in inodes:
            continue
        try:
            again = netns_mod.run_in(ns, partial(sockdiag.dump_here, opts, netns=ns.inode,
                                                 families=fams))
        except (SockdoctorError, sockdiag.NetlinkParseError):
            continue  # the ages keep their lower bound
        for fresh in again:
            sk = wanted.get((fresh.netns, fresh.cookie))
            if sk is not None:
                sk.info = fresh.info


def select_namespaces(wanted: str, warnings: list[str]
                      ) -> tuple[list[netns_mod.NsRef], list[netns_mod.NsRef]]:
    found, _denied = netns_mod.discover()
    selected = netns_mod.select(found, wanted)
    may_enter = netns_mod.can_enter_others()
    if not selected and not may_enter:
        raise PermissionDeniedError(
            f"--netns: no network namespace '{wanted}' is visible to this user: finding and "
            "entering other namespaces needs root")
    if not selected:
        raise unknown_netns(wanted, found)
    if not may_enter:
        own = netns_mod.current_inode()
        who = "not root" if os.geteuid() != 0 else "without CAP_SYS_ADMIN"
        # Without it other namespaces cannot even be seen reliably, so "all"
        # always gets the note, whether or not some were found.
        if wanted in ("all", "") or any(ns.inode != own for ns in selected):
            warnings.append(f"{who}: only the current network namespace is scanned "
                            "(entering others needs CAP_SYS_ADMIN)")
        selected = [ns for ns in selected if ns.inode == own] or selected[:0]
        if not selected:
            raise PermissionDeniedError(
                f"--netns: entering network namespace '{wanted}' needs root (CAP_SYS_ADMIN)")
    return selected, found


def dump_namespaces(namespaces: list[netns_mod.NsRef], opts: sockdiag.DumpOptions,
                    families: tuple[int, ...], warnings: list[str], *, sysctls: bool = False,
                    counters: bool = False, source: SocketSource = bpf_sockets.LISTING
                    ) -> tuple[list[Netns], list[Socket]]:
    """Dump each namespace (in parallel) from `source`, with its net.* sysctls and TCP
    counters if asked.

    A namespace that cannot be scanned gets its error in its record and a
    warning; when it is the only one, the error is raised.
    """
    def job(ns: netns_mod.NsRef) -> Callable[[], _NsResult]:
        def run() -> _NsResult:
            sockets = (kernel_dump(ns.inode) if kernel_dump is not None
                       else sockdiag.dump_here(opts, netns=ns.inode, families=families))
            # The port range always: it decides a socket's side (sides.py, ls --json).
            return _NsResult(sockets,
                             procfs.read_sysctls(procfs.NET_SYSCTLS if sysctls
                                                 else (PORT_RANGE_SYSCTL,)),
                             procfs.read_counters() if counters else {})
        return run

    # the socket source, opened once for the scan (iter/tcp, sock_diag, or counting)
    with source.open(opts, families) as kernel_dump:
        if len(namespaces) == 1:
            results: list = [_run_guarded(namespaces[0], job(namespaces[0]))]
        else:
            results = netns_mod.run_many([(ns, job(ns)) for ns in namespaces])
    records: list[Netns] = []
    sockets: list[Socket] = []
    for ns, result in zip(namespaces, results, strict=True):
        record = Netns(inode=ns.inode, name=ns.name, kind=ns.kind, pid=ns.pid)
        if isinstance(result, NotFoundError) and len(namespaces) > 1:
            continue  # the namespace went away while we scanned: nothing to report
        if isinstance(result, BaseException):
            record.error = str(result) or result.__class__.__name__
            warnings.append(f"network namespace {ns.name}: {record.error}")
            if len(namespaces) == 1:
                _raise_for(ns, result)
        else:
            sockets.extend(result.sockets)
            record.sysctls = result.sysctls
            record.counters = result.counters
        records.append(record)
    return records, sockets


def _run_guarded(ns: netns_mod.NsRef, fn: Callable[[], _NsResult]) -> _NsResult | BaseException:
    try:
        return netns_mod.run_in(ns, fn)
    except (SockdoctorError, sockdiag.NetlinkParseError) as exc:
        return exc  # linux/ raised it as sockdoctor's error already (oserrors.py)


def _raise_for(ns: netns_mod.NsRef, exc: BaseException) -> None:
    """The one namespace asked for could not be scanned: its error, saying which."""
    if isinstance(exc, SockdoctorError):
        exc.args = (f"cannot scan network namespace {ns.name}: {exc}",)
    raise exc


def join_owners(sockets: list[Socket], owner_map: procfs.OwnerMap) -> set[int]:
    """Give each socket the descriptors that hold it (inode 0: none can); returns their pids."""
    pids, _unowned = owner_map.attach(sockets)  # the C join when it is built
    return pids
