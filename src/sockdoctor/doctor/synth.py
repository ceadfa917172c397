"""Synthetic snapshots for tests, docs and demos of the rules: no kernel involved.

    b = SnapshotBuilder()
    b.process(4242, "python3", threads=[("S", "epoll_wait", "ep_poll")])
    b.listener(8080, pid=4242)
    b.sockets(40, "close-wait", "10.0.0.1:8080", "10.0.0.2", pid=4242, age_ms=600_000)
    report = diagnose(b.build())

Addresses are "addr:port" or a bare address (an ephemeral port is picked).
`advance(seconds)` ages every socket, so two `build()` calls make a
previous/current pair in which the same sockets (cookies) persist.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from typing import TypedDict, Unpack

import msgspec

from ..model import (
    SS_FILTER_NAMES,
    DeadSocketFd,
    Netns,
    Owner,
    Process,
    Snapshot,
    Socket,
    TcpInfo,
    TcpState,
    ThreadInfo,
)

HOST_NS = 4026531840
DEFAULT_SYSCTLS: dict[str, str] = {
    "net.ipv4.tcp_fin_timeout": "60", "net.ipv4.tcp_keepalive_time": "7200",
    "net.ipv4.tcp_keepalive_intvl": "75", "net.ipv4.tcp_keepalive_probes": "9",
    "net.ipv4.tcp_tw_reuse": "2", "net.ipv4.tcp_max_tw_buckets": "262144",
    "net.ipv4.tcp_max_orphans": "262144", "net.ipv4.tcp_orphan_retries": "0",
    "net.ipv4.tcp_retries2": "15", "net.ipv4.tcp_syn_retries": "6",
    "net.ipv4.tcp_synack_retries": "5", "net.ipv4.tcp_max_syn_backlog": "4096",
    "net.ipv4.tcp_syncookies": "1", "net.ipv4.tcp_abort_on_overflow": "0",
    "net.ipv4.ip_local_port_range": "32768 60999", "net.ipv4.ip_local_reserved_ports": "",
    "net.core.somaxconn": "4096", "net.ipv4.tcp_invalid_ratelimit": "500",
}
_ORPHAN_STATES = (TcpState.FIN_WAIT1, TcpState.FIN_WAIT2, TcpState.LAST_ACK, TcpState.CLOSING)
_TIME_WAIT_MS = 60_000
_PROCESS = {"state": "S", "fd_limit": 1024, "user": "app", "ppid": 1}


class SocketFields(TypedDict, total=False):
    """Fields of a synthetic Socket a test may set (the rest the builder fills in)."""

    age_ms: int | None
    recv_q: int
    send_q: int
    inode: int | None
    timer: int
    expires_ms: int
    retrans: int


class ProcessFields(TypedDict, total=False):
    """Fields of a synthetic Process a test may set."""

    state: str
    fd_limit: int
    user: str
    ppid: int


def state_of(name: str | int) -> int:
    """'close-wait', 'CLOSE_WAIT' or TcpState.CLOSE_WAIT -> 8."""
    if isinstance(name, int):
        return name
    key = name.lower().replace("_", "-")
    for st, word in SS_FILTER_NAMES.items():
        if word == key or TcpState(st).name.lower().replace("_", "-") == key:
            return st
    raise ValueError(f"unknown TCP state {name!r}")


class SnapshotBuilder:
    def __init__(self, *, created: float = 1_700_000_000.0, hostname: str = "testhost",
                 kernel: str = "6.18.0", info: bool = True) -> None:
        self.created = created
        self.hostname = hostname
        self.kernel = kernel
        self.info = info
        self.namespaces: dict[str, Netns] = {}
        self.socket_list: list[Socket] = []
        self.processes: dict[int, Process] = {}
        self.dead_fds: list[DeadSocketFd] = []
        self.host_sysctls: dict[str, str] = {"fs.file-nr": "2048 0 9223372036854775807"}
        self._cookies = itertools.count(1)
        self._inodes = itertools.count(100_000)
        self._fds: dict[int, itertools.count] = defaultdict(lambda: itertools.count(3))
        self._ports: dict[tuple[int, str], itertools.count] = defaultdict(
            lambda: itertools.count(40_000))
        self._fixed_fd_count: dict[int, int] = {}
        self.netns("host", kind="host", inode=HOST_NS)

    # --- namespaces and processes ----------------------------------------

    def netns(self, name: str, *, sysctls: dict[str, str] | None = None,
              counters: dict[str, dict[str, int]] | None = None, kind: str = "named",
              inode: int | None = None) -> int:
        if name in self.namespaces:
            ns = self.namespaces[name]
        else:
            ns = Netns(inode=inode or HOST_NS + 1 + len(self.namespaces), name=name, kind=kind,
                       sysctls=dict(DEFAULT_SYSCTLS),
                       counters={"TcpExt": {"ListenOverflows": 0, "ListenDrops": 0}})
            self.namespaces[name] = ns
        ns.sysctls.update(sysctls or {})
        for group, values in (counters or {}).items():
            ns.counters.setdefault(group, {}).update(values)
        return ns.inode

    def process(self, pid: int, comm: str = "python3", *,
                threads: list[tuple[str, str, str]] | None = None, fd_count: int | None = None,
                netns: str = "host", **fields: Unpack[ProcessFields]) -> Process:
        """threads: (state letter, syscall, wchan) per thread; None = not collected.

        `fields` set the Process's own fields (state "S", fd_limit 1024, user
        "app" and ppid 1 unless given).
        """
        infos = None if threads is None else [
            ThreadInfo(tid=pid + i, state=st, syscall=sc, wchan=wc)
            for i, (st, sc, wc) in enumerate(threads)]
        proc = Process(pid=pid, comm=comm, cmdline=[comm], uid=1000,
                       netns=self.netns(netns), threads=infos, **{**_PROCESS, **fields})
        self.processes[pid] = proc
        if fd_count is not None:
            self._fixed_fd_count[pid] = fd_count
        return proc

    # --- sockets -------------------------------------------------------

    def socket(self, state: str | int, local: str, peer: str, *, pid: int | None = None,
               pids: tuple[int, ...] = (), netns: str = "host",
               **fields: Unpack[SocketFields]) -> Socket:
        """One socket; `pid` and `pids` hold it, `fields` set the Socket's own fields.

        Unless given: age 0 (none in TIME-WAIT, which gets its timer), queues,
        timer and retransmissions 0, a fresh inode when held (0 otherwise).
        """
        ns = self.netns(netns)
        laddr, lport = self._endpoint(ns, local)
        paddr, pport = self._endpoint(ns, peer)
        holders = ([pid] if pid is not None else []) + list(pids)
        values: dict = {"age_ms": 0, "recv_q": 0, "send_q": 0, **fields}
        if values.get("inode") is None:
            values["inode"] = next(self._inodes) if holders else 0
        st = state_of(state)
        if st == TcpState.TIME_WAIT:
            values.update(timer=3, expires_ms=values.get("expires_ms") or _TIME_WAIT_MS // 2,
                          age_ms=None)
        if not self.info:
            values["age_ms"] = None
        sk = Socket(netns=ns, family=10 if ":" in laddr else 2, state=st, local_addr=laddr,
                    local_port=lport, peer_addr=paddr, peer_port=pport,
                    cookie=next(self._cookies), uid=1000,
                    owners=[Owner(p, next(self._fds[p])) for p in holders], **values)
        self.socket_list.append(sk)
        return sk

    def sockets(self, n: int, state: str | int, local: str, peer: str, **kw) -> list[Socket]:
        return [self.socket(state, local, peer, **kw) for _ in range(n)]

    def listener(self, port: int, *, pid: int | None = None, addr: str = "0.0.0.0",
                 backlog: int = 128, queue: int = 0, netns: str = "host",
                 pids: tuple[int, ...] = ()) -> Socket:
        """pids: more holders (a prefork server's workers inherit the listener)."""
        return self.socket("listening", f"{addr}:{port}", "0.0.0.0:0" if ":" not in addr
                           else "[::]:0", pid=pid, netns=netns, recv_q=queue, send_q=backlog,
                           age_ms=None, pids=pids)

    def queued(self, n: int, state: str, local: str, peer: str, listener: Socket,
               **kw) -> list[Socket]:
        """Connections in a listener's accept queue (inode 0); bumps its Recv-Q."""
        socks = self.sockets(n, state, local, peer, inode=0, **kw)
        listener.recv_q += n
        return socks

    def dead_fd(self, pid: int, n: int = 1, protocol: str = "TCP", *, peer: str = "",
                local: str = "10.0.0.2:40000", error: bool | None = None,
                info: TcpInfo | None = None) -> None:
        """Dead descriptors; with `error` given, as inspected (peer "" = never connected)."""
        laddr, _, lport = local.rpartition(":")
        paddr, _, pport = peer.rpartition(":")
        for _ in range(n):
            self.dead_fds.append(DeadSocketFd(
                pid=pid, fd=next(self._fds[pid]), inode=next(self._inodes), protocol=protocol,
                family=2 if error is not None else 0, local_addr=laddr if error is not None
                else "", local_port=int(lport) if error is not None else 0,
                peer_addr=paddr, peer_port=int(pport) if pport else 0, error_pending=error,
                info=info if error is not None else None))

    def remove(self, socks: list[Socket]) -> None:
        gone = {id(sk) for sk in socks}
        self.socket_list = [sk for sk in self.socket_list if id(sk) not in gone]

    def advance(self, seconds: float) -> None:
        """Let time pass: every socket gets older, TIME-WAIT closer to expiry."""
        ms = int(seconds * 1000)
        self.created += seconds
        for sk in self.socket_list:
            if sk.age_ms is not None:
                sk.age_ms += ms
            if sk.state == TcpState.TIME_WAIT:
                sk.expires_ms = max(0, sk.expires_ms - ms)

    def _endpoint(self, ns: int, text: str) -> tuple[str, int]:
        if text.startswith("["):
            addr, _, port = text[1:].partition("]:")
            return addr, int(port)
        if text.count(":") == 1:
            addr, port = text.split(":")
            return addr, int(port)
        return text, next(self._ports[(ns, text)])

    # --- the snapshot --------------------------------------------------

    def build(self) -> Snapshot:
        sockets = [msgspec.structs.replace(sk) for sk in self.socket_list]
        namespaces = [self._with_sockstat(ns, sockets) for ns in self.namespaces.values()]
        return Snapshot(
            created=self.created, hostname=self.hostname, kernel=self.kernel,
            sockets=sockets, namespaces=namespaces, processes=self._processes(sockets),
            sysctls=dict(self.host_sysctls), dead_fds=list(self.dead_fds),
            owners_scanned=True, info_scanned=self.info)

    def _processes(self, sockets: list[Socket]) -> dict[int, Process]:
        counts: dict[int, int] = defaultdict(lambda: 3)
        for sk in sockets:
            for o in sk.owners:
                counts[o.pid] += 1
        for d in self.dead_fds:
            counts[d.pid] += 1
        return {pid: msgspec.structs.replace(
                    p, fd_count=self._fixed_fd_count.get(pid, counts[pid]))
                for pid, p in self.processes.items()}

    @staticmethod
    def _with_sockstat(ns: Netns, sockets: list[Socket]) -> Netns:
        mine = [sk for sk in sockets if sk.netns == ns.inode]
        stat = {"inuse": sum(1 for sk in mine if sk.state != TcpState.TIME_WAIT),
                "orphan": sum(1 for sk in mine if sk.state in _ORPHAN_STATES and not sk.inode),
                "tw": sum(1 for sk in mine if sk.state == TcpState.TIME_WAIT)}
        counters = {k: dict(v) for k, v in ns.counters.items()}
        counters["sockstat.TCP"] = {**stat, **counters.get("sockstat.TCP", {})}
        return msgspec.structs.replace(ns, sysctls=dict(ns.sysctls), counters=counters)
