"""scan(query) -> Snapshot: the one place that joins kernel, /proc and namespaces.

scan() is a sequence of steps that the sampler (watch/sampler.py) also calls
one by one, with its own owner cache in place of the full /proc walk:
select_namespaces -> dump_namespaces -> (owners) attach_owners -> Snapshot.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

from .errors import NotFoundError, PermissionDeniedError, SockdoctorError
from .linux import deadsock, procfs, runtime, sockdiag
from .linux import netns as netns_mod
from .linux.bpf import owners as bpf_owners
from .linux.bpf import sockets as bpf_sockets
from .model import (
    ALL_STATES_MASK,
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

Progress = Callable[[str], None]


@dataclass
class _NsResult:
    sockets: list[Socket]
    sysctls: dict[str, str]
    counters: dict[str, dict[str, int]]


@dataclass
class Facts:
    """Where process facts come from: /proc each time, or a cache (the sampler's).

    `process(pid, fd_count, threads)` gives one process (None if gone);
    `protocols` remembers the protocol of socket inodes already looked at, so
    that the dead-descriptor check does not ask again for the same socket.
    """

    process: Callable[[int, int, bool], Process | None] = procfs.process_info
    protocols: dict[int, str] | None = None


def scan(query: Query | str | None = None, *, owners: bool = True, info: bool = False,
         mem: bool = False, age: bool = False, extended: bool = False, evidence: bool = False,
         netns: str | None = None, progress: Progress | None = None,
         lazy_info: bool = False, counters: bool = False) -> Snapshot:
    """Every TCP socket matching `query`, in every selected network namespace.

    owners: join each socket to the (pid, fd) pairs holding it (walks /proc/*/fd).
    info: decode tcp_info and the congestion control for each socket.
    age: fetch only the age estimate (tcp_info's last-ACK-received).
    extended: decode what `ss -e` adds: shutdown state, cgroup id, mark.
    evidence: also collect what the doctor needs: sysctls, counters, thread
        states of owning processes, descriptors of dead TCP sockets.
    lazy_info: with info, keep tcp_info undecoded (Socket.info_blob; read it
        with linux.tcpinfo.of()): a listing that streams its output then never
        holds every decoded tcp_info at once.
    netns: "all" (default), "host", a name from `ip netns`, a PID or an inode;
        overrides the query's own setting when given.
    counters: read each namespace's /proc/net/{snmp,sockstat} (ss -s's numbers).
    """
    query = as_query(query)
    say = progress or (lambda _msg: None)
    check_selection(query)
    warnings: list[str] = []
    namespaces, all_namespaces = select_namespaces(
        netns if netns is not None else query.netns, warnings)
    need_owners = owners or query.needs_owners or evidence
    collect_owners = start_owner_walk(namespaces, all_namespaces) if need_owners else None
    opts = dump_options(query, info=info, age=age, mem=mem, extended=extended,
                        evidence=evidence, lazy_info=lazy_info)
    say(f"dumping TCP sockets in {plural(len(namespaces), 'network namespace')}")
    netns_records, dumped = dump_namespaces(namespaces, opts, families(query), warnings,
                                            sysctls=evidence, counters=evidence or counters)
    if evidence and opts.age and not info:
        add_keepalive_info(namespaces, dumped, families(query))
    query.learn(netns_records)  # `autobound`: each namespace's own port range
    sockets = [sk for sk in dumped if query.match_socket(sk)]
    joined = Joined(sockets)
    if collect_owners is not None:
        say(f"finding owners of {len(sockets)} sockets in /proc")
        owner_map = collect_owners(sockets)
        warn_denied(owner_map, warnings)
        joined = attach_owners(sockets, dumped, owner_map, query, netns_records,
                               evidence=evidence)
        if evidence:
            add_runtimes(joined)
    return assemble(joined, netns_records, warnings, owners=need_owners, info=info,
                    age=opts.age or info, evidence=evidence)


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
                 extended: bool = False, evidence: bool = False,
                 lazy_info: bool = False) -> sockdiag.DumpOptions:
    """What to ask the kernel for. The doctor's evidence needs every socket of the
    namespace (a descriptor is only "dead" if its socket is in no table at all),
    whatever the query says."""
    return sockdiag.DumpOptions(states=ALL_STATES_MASK if evidence else query.states,
                                info=info, age=age or query.needs_age, mem=mem,
                                attrs=extended or evidence, lazy_info=lazy_info,
                                bytecode=_kernel_filter(query, evidence),
                                ports=query.ports)


def start_owner_walk(selected: list[netns_mod.NsRef], found: list[netns_mod.NsRef]
                     ) -> Callable[[list[Socket]], procfs.OwnerMap]:
    """Start the full /proc owner walk now; the returned function finishes it.

    It takes the sockets found meanwhile: processes outside the scanned
    namespaces are walked only if one of them is still without an owner.
    The owner source is the kernel engine's iter/task_file program when it
    is in use (every process in one kernel pass), else the /proc walk.
    """
    kernel_walk = bpf_owners.start()
    first_pids, other_pids = owner_pids(selected, found)
    if kernel_walk is not None:
        return _from_kernel(kernel_walk, first_pids, other_pids)
    collect = procfs.socket_owners_async(first_pids)

    def finish(sockets: list[Socket]) -> procfs.OwnerMap:
        owner_map = collect()
        if other_pids and any(sk.inode and sk.inode not in owner_map.by_inode
                              for sk in sockets):
            owner_map.update(procfs.socket_owners(other_pids))  # held from outside the netns
        return owner_map
    return finish


def _from_kernel(kernel_walk: Callable[[], procfs._Walk], first_pids: list[int],
                 other_pids: list[int]) -> Callable[[list[Socket]], procfs.OwnerMap]:
    """The kernel engine saw every process: keep what the /proc walk would have read."""
    def finish(sockets: list[Socket]) -> procfs.OwnerMap:
        walk = kernel_walk()
        if not other_pids:
            return walk.to_map()
        owner_map = bpf_owners.subset(walk, set(first_pids)).to_map()
        if any(sk.inode and sk.inode not in owner_map.by_inode for sk in sockets):
            owner_map.update(bpf_owners.subset(walk, set(other_pids)).to_map())
        return owner_map
    return finish


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


def attach_owners(sockets: list[Socket], dumped: list[Socket], owner_map: procfs.OwnerMap,
                  query: Query, records: list[Netns], *, evidence: bool,
                  facts: Facts | None = None, threads: set[int] | None = None,
                  live: set[int] | None = None) -> Joined:
    """Join owners, read their processes, apply --pid/--process, find dead descriptors.

    `threads`: the processes whose thread states to read (default: with
    evidence, every owner); `facts`: where process facts come from; `live`:
    the inodes of `dumped`, if the caller has them already.
    """
    facts = facts or Facts()
    pids = join_owners(sockets, owner_map)
    counts = owner_map.fd_counts
    processes: dict[int, Process] = {}
    for pid in sorted(pids):
        want_threads = evidence and (threads is None or pid in threads)
        proc = facts.process(pid, counts.get(pid, 0), want_threads)
        if proc is not None:
            processes[pid] = proc
    if query.needs_owners:
        sockets = [sk for sk in sockets if query.match_owner(sk, processes)]
        keep = {o.pid for sk in sockets for o in sk.owners}
        processes = {pid: p for pid, p in processes.items() if pid in keep}
    dead_fds: list[DeadSocketFd] = []
    if evidence:
        dead_fds = deadsock.inspect_all(procfs.dead_tcp_fds(
            owner_map, live if live is not None else {sk.inode for sk in dumped},
            {ns.inode for ns in records if not ns.error}, facts.protocols))
        for pid in {d.pid for d in dead_fds} - processes.keys():
            proc = facts.process(pid, counts.get(pid, 0), True)
            if proc is not None:
                processes[pid] = proc
    return Joined(sockets, processes, dead_fds)


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
            again = netns_mod.run_in(ns, partial(_dump_once, opts, ns.inode, fams))
        except (SockdoctorError, sockdiag.NetlinkParseError):
            continue  # the ages keep their lower bound
        for fresh in again:
            sk = wanted.get((fresh.netns, fresh.cookie))
            if sk is not None:
                sk.info = fresh.info


def _dump_once(opts: sockdiag.DumpOptions, inode: int, fams: tuple[int, ...]) -> list[Socket]:
    return sockdiag.dump_here(opts, netns=inode, families=fams)


def assemble(joined: Joined, records: list[Netns], warnings: list[str], *, owners: bool,
             info: bool, age: bool, evidence: bool, created: float | None = None,
             host_sysctls: dict[str, str] | None = None) -> Snapshot:
    if host_sysctls is None:
        host_sysctls = procfs.read_sysctls(procfs.GLOBAL_SYSCTLS) if evidence else {}
    return Snapshot(
        created=time.time() if created is None else created,
        hostname=socket.gethostname(),
        kernel=os.uname().release,
        sockets=joined.sockets,
        namespaces=records,
        processes=joined.processes,
        sysctls=host_sysctls,
        dead_fds=joined.dead_fds,
        owners_scanned=owners,
        info_scanned=info,
        age_scanned=age,
        warnings=warnings,
    )


def _kernel_filter(query: Query, evidence: bool) -> bytes:
    """An in-kernel port filter for --port (Query.kernel_filter says why and when)."""
    return query.kernel_filter(evidence).bytecode


def owner_pids(selected: list[netns_mod.NsRef], found: list[netns_mod.NsRef]
                ) -> tuple[list[int], list[int]]:
    """Processes to walk for owners: those inside the scanned namespaces first.

    A socket is nearly always held by a process of its own namespace, so when
    only some namespaces are scanned the other processes are walked only if a
    socket is still without an owner afterwards. (A socket passed to a process
    in another namespace that also stays held inside is then listed with its
    inside holders only.)
    """
    pids = procfs.list_pids()
    if len(selected) == len(found):
        return pids, []
    inside = {ns.inode for ns in selected}
    first, rest = [], []
    for pid in pids:
        (first if procfs.netns_inode(pid) in inside else rest).append(pid)
    return first, rest


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
                    counters: bool = False) -> tuple[list[Netns], list[Socket]]:
    """Dump each namespace (in parallel), with its net.* sysctls and TCP counters if asked.

    A namespace that cannot be scanned gets its error in its record and a
    warning; when it is the only one, the error is raised.
    """
    def job(ns: netns_mod.NsRef) -> Callable[[], _NsResult]:
        def run() -> _NsResult:
            sockets = (kernel_dump(ns.inode) if kernel_dump is not None
                       else _dump_once(opts, ns.inode, families))
            # The port range always: it decides a socket's side (sides.py, ls --json).
            return _NsResult(sockets,
                             procfs.read_sysctls(procfs.NET_SYSCTLS if sysctls
                                                 else (PORT_RANGE_SYSCTL,)),
                             procfs.read_counters() if counters else {})
        return run

    # the socket source, chosen once: the kernel engine's iter/tcp pass or sock_diag
    with bpf_sockets.source(opts, families) as kernel_dump:
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
