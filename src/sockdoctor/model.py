"""Plain data: TCP states, sockets, owners, processes, namespaces, snapshots.

No I/O happens here. Everything is a msgspec Struct so a Snapshot encodes to
JSON and decodes back with validation (a corrupt file is a clear error, not a
crash deep inside a rule). Addresses and ports are stored flat on Socket rather
than in nested Endpoint objects: a host can hold hundreds of thousands of
sockets and every extra object per socket costs measurable time.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Annotated, Literal, NamedTuple

import msgspec

SCHEMA = "sockdoctor.snapshot/1"

# Ranges a decoded snapshot is checked against (a file is untrusted input: a
# state of 99 or a port of 10**30 is a corrupt file, not a crash in a rule).
# Constructing a Struct in Python does not check them: the scan stays as fast.
Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]
U32 = Annotated[int, msgspec.Meta(ge=0, le=2**32 - 1)]
# unsigned 64-bit: no upper bound (msgspec's cannot pass int64, and 2**64-1 is real:
# tcp_info's max_pacing_rate when unlimited); a huge one is only a large number
U64 = Annotated[int, msgspec.Meta(ge=0)]
Pid = Annotated[int, msgspec.Meta(ge=0, le=2**22)]  # PID_MAX_LIMIT
State = Annotated[int, msgspec.Meta(ge=1, le=13)]  # TcpState
Family = Literal[2, 10]  # AF_INET, AF_INET6
Seconds = Annotated[float, msgspec.Meta(ge=0, le=1e11)]  # a Unix time (finite)


class TcpState(IntEnum):
    """Kernel TCP states (include/net/tcp_states.h)."""

    ESTABLISHED = 1
    SYN_SENT = 2
    SYN_RECV = 3
    FIN_WAIT1 = 4
    FIN_WAIT2 = 5
    TIME_WAIT = 6
    CLOSE = 7
    CLOSE_WAIT = 8
    LAST_ACK = 9
    LISTEN = 10
    CLOSING = 11
    NEW_SYN_RECV = 12
    BOUND_INACTIVE = 13

    @property
    def ss_name(self) -> str:
        """The name `ss` prints in its State column (ESTAB, CLOSE-WAIT, ...)."""
        return SS_COLUMN_NAMES[self]

    @property
    def filter_name(self) -> str:
        """The name `ss` accepts after `state` (established, close-wait, ...)."""
        return SS_FILTER_NAMES[self]


class StateWords(NamedTuple):
    """Every name one TCP state goes by, in one row (the one state table)."""

    column: str  # ss's State column: ESTAB, CLOSE-WAIT, UNCONN
    filter: str  # what ss accepts after `state`: established, close-wait, closed
    event: str  # a state change (trace): ss's column, but a connection ends in CLOSE
    metric: str | None  # node_exporter's tcpstat label; None: a state it does not count


# The one state table: every other table is a column of it.
STATE_WORDS: dict[int, StateWords] = {
    TcpState.ESTABLISHED: StateWords("ESTAB", "established", "ESTAB", "established"),
    TcpState.SYN_SENT: StateWords("SYN-SENT", "syn-sent", "SYN-SENT", "syn_sent"),
    TcpState.SYN_RECV: StateWords("SYN-RECV", "syn-recv", "SYN-RECV", "syn_recv"),
    TcpState.FIN_WAIT1: StateWords("FIN-WAIT-1", "fin-wait-1", "FIN-WAIT-1", "fin_wait1"),
    TcpState.FIN_WAIT2: StateWords("FIN-WAIT-2", "fin-wait-2", "FIN-WAIT-2", "fin_wait2"),
    TcpState.TIME_WAIT: StateWords("TIME-WAIT", "time-wait", "TIME-WAIT", "time_wait"),
    TcpState.CLOSE: StateWords("UNCONN", "closed", "CLOSE", "close"),
    TcpState.CLOSE_WAIT: StateWords("CLOSE-WAIT", "close-wait", "CLOSE-WAIT", "close_wait"),
    TcpState.LAST_ACK: StateWords("LAST-ACK", "last-ack", "LAST-ACK", "last_ack"),
    TcpState.LISTEN: StateWords("LISTEN", "listening", "LISTEN", "listen"),
    TcpState.CLOSING: StateWords("CLOSING", "closing", "CLOSING", "closing"),
    TcpState.NEW_SYN_RECV: StateWords("SYN-RECV", "syn-recv", "SYN-RECV", None),
    TcpState.BOUND_INACTIVE: StateWords("UNCONN", "closed", "UNCONN", None),
}

SS_COLUMN_NAMES: dict[int, str] = {st: w.column for st, w in STATE_WORDS.items()}
SS_FILTER_NAMES: dict[int, str] = {st: w.filter for st, w in STATE_WORDS.items()}
EVENT_STATE_NAMES: dict[int, str] = {st: w.event for st, w in STATE_WORDS.items()}
# in kernel order, as node_exporter's tcpstat collector lists them
METRIC_STATE_NAMES: dict[int, str] = {st: w.metric for st, w in STATE_WORDS.items()
                                      if w.metric is not None}

# Kernel timer codes in inet_diag_msg.idiag_timer, named as ss names them.
TIMER_NAMES: dict[int, str] = {
    0: "off",
    1: "on",
    2: "keepalive",
    3: "timewait",
    4: "persist",
}

KEEPALIVE_TIMER = 2  # idiag_timer while only the keepalive timer is armed

ALL_STATES_MASK = sum(1 << s for s in TcpState if s not in (TcpState.NEW_SYN_RECV,
                                                              TcpState.BOUND_INACTIVE))


def state_mask(*states: int) -> int:
    """Bit mask of the given states, in the kernel's idiag_states layout."""
    mask = 0
    for s in states:
        mask |= 1 << int(s)
    return mask


# A connection without a descriptor in one of these states waits in an accept queue
# (SYN-RECV ones are request socks, not yet in the queue); in these, it is an orphan.
_QUEUE_STATES = frozenset({TcpState.ESTABLISHED, TcpState.CLOSE_WAIT})
# One short owner label for such sockets wherever sockets are grouped by owner
# (top, ls --summary); the exporter's `process` label spells it "accept-queue".
ACCEPT_QUEUE_OWNER = "(accept queue)"
ACCEPT_QUEUE_LABEL = "accept-queue"
NO_OWNER = "(no owner)"
_ORPHAN_STATES = frozenset({TcpState.FIN_WAIT1, TcpState.FIN_WAIT2, TcpState.LAST_ACK,
                            TcpState.CLOSING, TcpState.TIME_WAIT})


class TcpInfo(msgspec.Struct, gc=False, omit_defaults=True):
    """struct tcp_info as this kernel filled it (include/uapi/linux/tcp.h).

    Fields are in kernel order; an older kernel leaves the tail as None. The
    three bit-field bytes (wscale_bits, rate_flags, ecn_bits) are split into
    the named fields at the end by the decoder and then dropped.
    """

    state: U64 | None = None
    ca_state: U64 | None = None
    retransmits: U64 | None = None
    probes: U64 | None = None
    backoff: U64 | None = None
    options: U64 | None = None
    wscale_bits: U64 | None = None
    rate_flags: U64 | None = None
    rto: U64 | None = None
    ato: U64 | None = None
    snd_mss: U64 | None = None
    rcv_mss: U64 | None = None
    unacked: U64 | None = None
    sacked: U64 | None = None
    lost: U64 | None = None
    retrans: U64 | None = None
    fackets: U64 | None = None
    last_data_sent: U64 | None = None
    last_ack_sent: U64 | None = None
    last_data_recv: U64 | None = None
    last_ack_recv: U64 | None = None
    pmtu: U64 | None = None
    rcv_ssthresh: U64 | None = None
    rtt: U64 | None = None
    rttvar: U64 | None = None
    snd_ssthresh: U64 | None = None
    snd_cwnd: U64 | None = None
    advmss: U64 | None = None
    reordering: U64 | None = None
    rcv_rtt: U64 | None = None
    rcv_space: U64 | None = None
    total_retrans: U64 | None = None
    pacing_rate: U64 | None = None
    max_pacing_rate: U64 | None = None
    bytes_acked: U64 | None = None
    bytes_received: U64 | None = None
    segs_out: U64 | None = None
    segs_in: U64 | None = None
    notsent_bytes: U64 | None = None
    min_rtt: U64 | None = None
    data_segs_in: U64 | None = None
    data_segs_out: U64 | None = None
    delivery_rate: U64 | None = None
    busy_time: U64 | None = None
    rwnd_limited: U64 | None = None
    sndbuf_limited: U64 | None = None
    delivered: U64 | None = None
    delivered_ce: U64 | None = None
    bytes_sent: U64 | None = None
    bytes_retrans: U64 | None = None
    dsack_dups: U64 | None = None
    reord_seen: U64 | None = None
    rcv_ooopack: U64 | None = None
    snd_wnd: U64 | None = None
    rcv_wnd: U64 | None = None
    rehash: U64 | None = None
    total_rto: U64 | None = None
    total_rto_recoveries: U64 | None = None
    total_rto_time: U64 | None = None
    received_ce: U64 | None = None
    delivered_e1_bytes: U64 | None = None
    delivered_e0_bytes: U64 | None = None
    delivered_ce_bytes: U64 | None = None
    received_e1_bytes: U64 | None = None
    received_e0_bytes: U64 | None = None
    received_ce_bytes: U64 | None = None
    ecn_bits: U64 | None = None
    snd_wscale: U64 | None = None
    rcv_wscale: U64 | None = None
    delivery_rate_app_limited: U64 | None = None
    fastopen_client_fail: U64 | None = None
    ecn_mode: U64 | None = None
    accecn_opt_seen: U64 | None = None
    accecn_fail_mode: U64 | None = None


class SkMemInfo(msgspec.Struct, gc=False):
    """INET_DIAG_SKMEMINFO: the socket's memory accounting, as ss -m shows it."""

    rmem_alloc: U32
    rcvbuf: U32
    wmem_alloc: U32
    sndbuf: U32
    fwd_alloc: U32
    wmem_queued: U32
    optmem: U32
    backlog: U32
    drops: U32


class Owner(msgspec.Struct, frozen=True, gc=False):
    """One file descriptor through which a process holds a socket.

    gc=False: two ints cannot form a cycle, and a sampler keeps one per socket
    for hours, which the cyclic collector would otherwise scan again and again.
    """

    pid: Pid
    fd: U32


class Socket(msgspec.Struct, gc=False):
    """One TCP socket as the kernel reports it, plus what we joined to it.

    Positional construction and gc=False (a Socket never takes part in a
    reference cycle) make building a few hundred thousand of them about
    three times cheaper.

    `recv_q`/`send_q` follow ss: for LISTEN sockets they are the current
    accept-queue length and its maximum (the backlog).
    `age_ms` is a lower bound of the time since the peer last spoke, taken
    from tcp_info's last-ACK-received; see docs/age.md for what it means.
    """

    netns: U64
    family: Family
    state: State
    local_addr: str
    local_port: Port
    peer_addr: str
    peer_port: Port
    inode: U64
    cookie: U64
    uid: U32
    recv_q: U32
    send_q: U32
    timer: U32 = 0
    expires_ms: int = 0
    retrans: U32 = 0
    ifindex: U32 = 0
    owners: list[Owner] = msgspec.field(default_factory=list)
    age_ms: U64 | None = None
    shutdown: U32 | None = None
    cgroup_id: U64 | None = None
    mark: U32 | None = None
    cong: str | None = None
    info: TcpInfo | None = None
    mem: SkMemInfo | None = None
    # Raw tcp_info, kept instead of `info` by ScanOptions(info=True, lazy_info=True)
    # so that a huge listing decodes it a chunk at a time while writing (see tcpinfo.of()).
    info_blob: bytes | None = None
    # The congestion control's own diag attribute (bbr, dctcp, vegas), raw:
    # its attribute type in the first byte, then the body (linux/ccinfo.py).
    cc_info: bytes | None = None

    @property
    def tcp_state(self) -> TcpState:
        return TcpState(self.state)

    @property
    def queued(self) -> bool:
        """Never accept()ed: no descriptor yet, waiting in a listener's accept queue."""
        return self.inode == 0 and not self.owners and self.state in _QUEUE_STATES

    @property
    def orphaned(self) -> bool:
        """Closed by its program; the kernel alone finishes the close (or TIME-WAIT)."""
        return self.inode == 0 and self.state in _ORPHAN_STATES

    def owner_note(self) -> str:
        """Why a socket may legitimately have no owning file descriptor."""
        if self.owners:
            return ""
        st = self.state
        if st == TcpState.LISTEN:
            return "listener held by no process we can see (another user's, or the kernel's)"
        if st == TcpState.TIME_WAIT:
            return "TIME-WAIT: kept by the kernel only, no process holds it"
        if self.queued:
            return "accept queue: never accept()ed"
        if st == TcpState.SYN_RECV:
            return "a handshake in progress: no descriptor before accept()"
        if self.orphaned:
            return "orphaned: the program closed it, the kernel finishes the close"
        return "owner not visible (another user's process, or it just exited)"


class ThreadInfo(msgspec.Struct, frozen=True):
    """Where one thread of a process is blocked (/proc/PID/task/TID)."""

    tid: int
    state: str
    wchan: str = ""
    syscall: str = ""


class Runtime(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What a process runs, read without attaching to it (linux/runtime.py).

    kind: "go", "java", "python", "node" or "native"; libraries: what the
    doctor recognised ("net/http client", "HikariCP", "requests" ...), in the
    order found; program: the server or tool it is (gunicorn, nginx ...).
    """

    kind: str
    version: str = ""
    libraries: list[str] = msgspec.field(default_factory=list)
    program: str = ""


class Process(msgspec.Struct, kw_only=True):
    pid: Pid
    comm: str
    cmdline: list[str] = msgspec.field(default_factory=list)
    uid: int = -1
    user: str = ""
    state: str = ""
    ppid: Pid = 0  # the parent: prefork workers share the listener owner as parent
    cgroup: str = ""
    container: str = ""
    netns: int = 0
    fd_count: int = 0
    fd_limit: int = 0
    threads: list[ThreadInfo] | None = None
    runtime: Runtime | None = None  # with evidence, for the holders of stuck sockets


class Netns(msgspec.Struct, kw_only=True):
    """A network namespace, named as a person would recognise it."""

    inode: U64
    name: str
    kind: str  # "host", "named" (ip netns), "container", "process"
    pid: int = 0  # a process inside it, when one is known
    error: str = ""  # why it could not be scanned, if it could not
    sysctls: dict[str, str] = msgspec.field(default_factory=dict)  # net.* of this netns
    counters: dict[str, dict[str, int]] = msgspec.field(default_factory=dict)


class DeadSocketFd(msgspec.Struct, frozen=True):
    """A descriptor that points at a TCP socket found in no TCP table.

    The fields after `protocol` are what the socket itself still says, read
    through a duplicate (linux/deadsock.py); they keep their defaults when it
    could not be inspected (error_pending None).
    """

    pid: Pid
    fd: U32
    inode: U64
    protocol: str
    family: int = 0
    local_addr: str = ""
    local_port: Port = 0
    peer_addr: str = ""  # "" when it never had a peer (never connected)
    peer_port: Port = 0
    error_pending: bool | None = None  # a reset or timeout the program has not read yet
    info: TcpInfo | None = None  # TCP_INFO of the dead socket


class Snapshot(msgspec.Struct, kw_only=True):
    """Complete evidence of one scan; serialises to JSON and back."""

    schema: str = SCHEMA
    created: Seconds
    hostname: str
    kernel: str
    sockets: list[Socket]
    namespaces: list[Netns] = msgspec.field(default_factory=list)
    processes: dict[Pid, Process] = msgspec.field(default_factory=dict)
    sysctls: dict[str, str] = msgspec.field(default_factory=dict)  # host-wide (fs.*)
    dead_fds: list[DeadSocketFd] = msgspec.field(default_factory=list)
    owners_scanned: bool = False
    info_scanned: bool = False
    age_scanned: bool = False  # ages were asked for (a socket may still have none)
    warnings: list[str] = msgspec.field(default_factory=list)

    def netns(self, inode: int) -> Netns | None:
        for ns in self.namespaces:
            if ns.inode == inode:
                return ns
        return None

    def netns_name(self, inode: int) -> str:
        ns = self.netns(inode)
        return ns.name if ns else f"net:[{inode}]"
