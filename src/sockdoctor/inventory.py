"""scan(query) -> Snapshot: the one place that joins kernel, /proc and namespaces."""

from __future__ import annotations

import errno
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from .errors import PermissionDeniedError
from .linux import deadsock, procfs, sockdiag
from .linux import netns as netns_mod
from .model import ALL_STATES_MASK, Netns, Process, Snapshot, Socket
from .query import Query
from .render.fmt import plural
from .selectors import unknown_netns, unknown_pids, unknown_process

Progress = Callable[[str], None]


@dataclass
class _NsResult:
    sockets: list[Socket]
    sysctls: dict[str, str]
    counters: dict[str, dict[str, int]]


def scan(query: Query | str | None = None, *, owners: bool = True, info: bool = False,
         mem: bool = False, age: bool = False, extended: bool = False, evidence: bool = False,
         netns: str | None = None, progress: Progress | None = None,
         lazy_info: bool = False) -> Snapshot:
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
    """
    if query is None or isinstance(query, str):
        query = Query.build(query or ())
    say = progress or (lambda _msg: None)
    wanted = netns if netns is not None else query.netns
    warnings: list[str] = []
    check_selection(query)

    namespaces, all_namespaces = _namespaces(wanted, warnings)
    need_owners = owners or query.needs_owners or evidence
    first_pids, other_pids = _owner_pids(namespaces, all_namespaces)
    collect_owners = procfs.socket_owners_async(first_pids) if need_owners else None
    # The doctor's evidence needs every socket of the namespace (a descriptor is
    # only "dead" if its socket is in no table at all), whatever the query says.
    dump_states = ALL_STATES_MASK if evidence else query.states
    opts = sockdiag.DumpOptions(states=dump_states, info=info,
                                age=age or query.needs_age, mem=mem,
                                attrs=extended or evidence, lazy_info=lazy_info,
                                bytecode=_kernel_filter(query, evidence))
    say(f"dumping TCP sockets in {plural(len(namespaces), 'network namespace')}")
    families = (query.family,) if query.family else (socket.AF_INET, socket.AF_INET6)
    netns_records, dumped = _dump_all(namespaces, opts, families, evidence, warnings)
    sockets = [sk for sk in dumped if query.match_socket(sk)]

    processes: dict[int, Process] = {}
    dead_fds = []
    if collect_owners is not None:
        say(f"finding owners of {len(sockets)} sockets in /proc")
        owner_map = collect_owners()
        pids, unowned = owner_map.attach(sockets)
        if other_pids and unowned:
            owner_map.update(procfs.socket_owners(other_pids))  # held from outside the netns
            pids, _ = owner_map.attach(sockets)
        if owner_map.denied_pids and os.geteuid() != 0:  # root is refused only by odd inits
            warnings.append(
                f"{owner_map.denied_pids} processes of other users were not readable: their "
                "sockets show no owner (run as root to see them)")
        for pid in sorted(pids):
            proc = procfs.process_info(pid, owner_map.fd_counts.get(pid, 0), threads=evidence)
            if proc is not None:
                processes[pid] = proc
        if query.needs_owners:
            sockets = [sk for sk in sockets if query.match_owner(sk, processes)]
            keep = {o.pid for sk in sockets for o in sk.owners}
            processes = {pid: p for pid, p in processes.items() if pid in keep}
        if evidence:
            dead_fds = deadsock.inspect_all(procfs.dead_tcp_fds(
                owner_map, {sk.inode for sk in dumped},
                {ns.inode for ns in netns_records if not ns.error}))
            for pid in {d.pid for d in dead_fds} - processes.keys():
                proc = procfs.process_info(pid, owner_map.fd_counts.get(pid, 0), threads=True)
                if proc is not None:
                    processes[pid] = proc
            _add_fd_pressure(processes, owner_map)

    return Snapshot(
        created=time.time(),
        hostname=socket.gethostname(),
        kernel=os.uname().release,
        sockets=sockets,
        namespaces=netns_records,
        processes=processes,
        sysctls=procfs.read_sysctls(procfs.GLOBAL_SYSCTLS) if evidence else {},
        dead_fds=dead_fds,
        owners_scanned=need_owners,
        info_scanned=info,
        age_scanned=opts.age or info,
        warnings=warnings,
    )


def check_selection(query: Query) -> None:
    """--pid and --process must name a running process: else exit 3, with a hint.

    Checked before any scan, in every command (ls, doctor, kill, snapshot).
    """
    missing = [pid for pid in sorted(query.pids) if not procfs.pid_exists(pid)]
    if missing:
        raise unknown_pids(missing, " is running")
    if query.process:
        names = procfs.process_names()
        if not any(query.match_process(proc) for proc in names):
            raise unknown_process(query.process, (p.comm for p in names), " is running")


def _kernel_filter(query: Query, evidence: bool) -> bytes:
    """An in-kernel port filter for --port, so a narrow question dumps only its sockets.

    Python still applies the whole query afterwards; this only saves parsing
    sockets that cannot match. The doctor's evidence needs everything.
    """
    if evidence or not query.ports or len(query.ports) > sockdiag.MAX_FILTER_PORTS:
        return b""
    return sockdiag.port_filter(query.ports)


def _owner_pids(selected: list[netns_mod.NsRef], found: list[netns_mod.NsRef]
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


def _namespaces(wanted: str, warnings: list[str]
                ) -> tuple[list[netns_mod.NsRef], list[netns_mod.NsRef]]:
    found, _denied = netns_mod.discover()
    selected = netns_mod.select(found, wanted)
    if not selected and os.geteuid() != 0:
        raise PermissionDeniedError(
            f"--netns: no network namespace '{wanted}' is visible to this user: "
            "finding and entering "
            "other namespaces needs root")
    if not selected:
        raise unknown_netns(wanted, found)
    if os.geteuid() != 0:
        own = netns_mod.current_inode()
        # Without root other namespaces cannot even be seen reliably, so "all"
        # always gets the note, whether or not some were found.
        if wanted in ("all", "") or any(ns.inode != own for ns in selected):
            warnings.append("not root: only the current network namespace is scanned "
                            "(entering others needs CAP_SYS_ADMIN)")
        selected = [ns for ns in selected if ns.inode == own] or selected[:0]
        if not selected:
            raise PermissionDeniedError(
                f"--netns: entering network namespace '{wanted}' needs root "
                "(CAP_SYS_ADMIN)")
    return selected, found


def _dump_all(namespaces: list[netns_mod.NsRef], opts: sockdiag.DumpOptions,
              families: tuple[int, ...], evidence: bool,
              warnings: list[str]) -> tuple[list[Netns], list[Socket]]:
    def job(ns: netns_mod.NsRef) -> Callable[[], _NsResult]:
        def run() -> _NsResult:
            sock = sockdiag.open_socket()
            try:
                sockets = sockdiag.dump(sock, opts, netns=ns.inode, families=families)
            finally:
                sock.close()
            if not evidence:
                return _NsResult(sockets, {}, {})
            return _NsResult(sockets, procfs.read_sysctls(procfs.NET_SYSCTLS),
                             procfs.read_counters())
        return run

    if len(namespaces) == 1:
        results: list = [_run_guarded(namespaces[0], job(namespaces[0]))]
    else:
        results = netns_mod.run_many([(ns, job(ns)) for ns in namespaces])
    records: list[Netns] = []
    sockets: list[Socket] = []
    for ns, result in zip(namespaces, results, strict=True):
        record = Netns(inode=ns.inode, name=ns.name, kind=ns.kind, pid=ns.pid)
        if isinstance(result, FileNotFoundError) and len(namespaces) > 1:
            continue  # the namespace went away while we scanned: nothing to report
        if isinstance(result, BaseException):
            record.error = _describe(result)
            warnings.append(f"network namespace {ns.name}: {record.error}")
            if len(namespaces) == 1:
                _reraise_user_error(result)
        else:
            sockets.extend(result.sockets)
            record.sysctls = result.sysctls
            record.counters = result.counters
        records.append(record)
    return records, sockets


def _run_guarded(ns: netns_mod.NsRef, fn: Callable[[], _NsResult]) -> _NsResult | BaseException:
    try:
        return netns_mod.run_in(ns, fn)
    except (OSError, sockdiag.NetlinkParseError, sockdiag.DumpInterrupted) as exc:
        return exc


def _describe(exc: BaseException) -> str:
    if isinstance(exc, PermissionError) or getattr(exc, "errno", None) == errno.EPERM:
        return "permission denied (needs root)"
    if isinstance(exc, sockdiag.DumpInterrupted):
        return "the kernel kept interrupting the dump (sockets changing too fast); try again"
    return str(exc) or exc.__class__.__name__


def _reraise_user_error(exc: BaseException) -> None:
    if isinstance(exc, PermissionError) or getattr(exc, "errno", None) == errno.EPERM:
        raise PermissionDeniedError(f"cannot scan that namespace: {_describe(exc)}") from exc
    raise exc


def join_owners(sockets: list[Socket], owner_map: procfs.OwnerMap) -> None:
    """Give each socket the descriptors that hold it (inode 0: none can)."""
    owner_map.attach(sockets)


def _add_fd_pressure(processes: dict[int, Process], owner_map: procfs.OwnerMap) -> None:
    for pid, proc in processes.items():
        proc.fd_count = owner_map.fd_counts.get(pid, proc.fd_count)
