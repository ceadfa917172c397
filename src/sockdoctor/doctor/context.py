"""Indexes over one Snapshot (and the previous one) shared by every rule.

Built in one pass over the sockets so that each rule only walks the states
it cares about: on a host with 100k+ sockets the doctor must stay within a
small factor of the scan itself.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..model import KEEPALIVE_TIMER, Process, Snapshot, Socket, TcpState
from ..sides import PORT_RANGE_SYSCTL, parse_port_range
from .config import DoctorConfig
from .finding import Finding, ProcessRef
from .text import command, duration_arg

_LOOPBACK_PREFIXES = ("127.", "::1", "::ffff:127.")


@dataclass
class Service:
    """What a group of sockets talks about: our listening port, or a remote service."""

    side: str  # "server" (our local port) or "client" (a peer's address and port)
    port: int
    addr: str = ""

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.side, self.addr, self.port)

    @property
    def label(self) -> str:
        if self.side == "server":
            return f":{self.port}"
        return f"{'[' + self.addr + ']' if ':' in self.addr else self.addr}:{self.port}"


@dataclass
class Context:
    snap: Snapshot
    prev: Snapshot | None
    cfg: DoctorConfig
    by_state: dict[int, list[Socket]] = field(default_factory=dict)
    listeners: dict[tuple[int, int], list[Socket]] = field(default_factory=dict)
    prev_by_state: dict[int, list[Socket]] = field(default_factory=dict)
    prev_cookies: dict[int, set[tuple[int, int]]] = field(default_factory=dict)
    interval_ms: int | None = None
    ages_known: bool = False
    threads_known: bool = False
    backlogged: set[tuple[int, int]] = field(default_factory=set)
    findings: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # seen, not (yet) a finding: Report.notes
    _ranges: dict[int, tuple[int, int]] = field(default_factory=dict)
    _owned_states: dict[int, dict[int, int]] | None = None

    @classmethod
    def build(cls, snap: Snapshot, prev: Snapshot | None, cfg: DoctorConfig) -> Context:
        ctx = cls(snap=snap, prev=prev, cfg=cfg)
        ctx.by_state = _by_state(snap.sockets)
        for sk in ctx.by_state.get(TcpState.LISTEN, ()):
            ctx.listeners.setdefault((sk.netns, sk.local_port), []).append(sk)
        ctx.ages_known = (snap.info_scanned or snap.age_scanned
                          or any(sk.age_ms is not None for sk in snap.sockets))
        ctx.threads_known = any(p.threads is not None for p in snap.processes.values())
        if prev is not None and prev.created < snap.created:
            ctx.interval_ms = int((snap.created - prev.created) * 1000)
            ctx.prev_by_state = _by_state(prev.sockets)
            ctx.prev_cookies = {st: {(sk.netns, sk.cookie) for sk in socks}
                                for st, socks in ctx.prev_by_state.items()}
        else:
            ctx.prev = None
        return ctx

    # --- sockets -------------------------------------------------------

    def state(self, st: int) -> list[Socket]:
        return self.by_state.get(st, [])

    def persisted(self, sk: Socket) -> bool:
        """The same socket (cookie) was in the same state in the previous sample."""
        cookies = self.prev_cookies.get(sk.state)
        return cookies is not None and (sk.netns, sk.cookie) in cookies

    def age(self, sk: Socket) -> int | None:
        """Best lower bound of the time in this state: tcp_info, or the sampling interval."""
        if self.interval_ms is None:
            return sk.age_ms
        return self.age_given(sk, self.persisted(sk))

    def age_given(self, sk: Socket, persisted: bool) -> int | None:
        """age() when persistence is already known (saves a lookup in hot loops)."""
        lower = self.interval_ms if persisted and self.interval_ms else None
        age = sk.age_ms
        if age is None:
            return lower
        if sk.timer == KEEPALIVE_TIMER and sk.state == TcpState.CLOSE_WAIT:
            age = probed_age(sk, age)
        return max(age, lower or 0)

    def is_listening(self, netns: int, port: int) -> bool:
        return (netns, port) in self.listeners

    def listener_pids(self, netns: int, port: int) -> set[int]:
        """The processes holding the listeners of a port (one, or a prefork server's all)."""
        return {o.pid for sk in self.listeners.get((netns, port), ()) for o in sk.owners}

    def port_range(self, netns: int) -> tuple[int, int]:
        rng = self._ranges.get(netns)
        if rng is None:
            rng = parse_port_range(self.sysctl(netns, PORT_RANGE_SYSCTL))
            self._ranges[netns] = rng
        return rng

    def is_ephemeral(self, netns: int, port: int) -> bool:
        lo, hi = self.port_range(netns)
        return lo <= port <= hi

    def is_client(self, sk: Socket) -> bool:
        """We connected out: our port is ephemeral and not a listening port."""
        if (sk.netns, sk.local_port) in self.listeners:
            return False
        lo, hi = self._ranges.get(sk.netns) or self.port_range(sk.netns)
        return lo <= sk.local_port <= hi

    def service(self, sk: Socket) -> Service:
        """Server side (our port is a service) or client side (we connected out)."""
        if self.is_client(sk):
            return Service("client", sk.peer_port, sk.peer_addr)
        return Service("server", sk.local_port)

    def service_key(self, sk: Socket) -> tuple[str, str, int]:
        """Service(...).key without building the object (hot loops)."""
        if self.is_client(sk):
            return ("client", sk.peer_addr, sk.peer_port)
        return ("server", "", sk.local_port)

    def owned_states(self, pid: int) -> dict[int, int]:
        """State -> count of the sockets a process holds (built on first use)."""
        if self._owned_states is None:
            table: dict[int, dict[int, int]] = defaultdict(dict)
            for st, socks in self.by_state.items():
                counts: dict[int, int] = defaultdict(int)
                for sk in socks:
                    owners = sk.owners
                    if len(owners) == 1:
                        counts[owners[0].pid] += 1
                    elif owners:
                        for p in {o.pid for o in owners}:
                            counts[p] += 1
                for p, n in counts.items():
                    table[p][st] = n
            self._owned_states = table
        return self._owned_states.get(pid, {})

    # --- namespaces ----------------------------------------------------

    def sysctl(self, netns: int, name: str) -> str | None:
        ns = self.snap.netns(netns)
        if ns is not None and name in ns.sysctls:
            return ns.sysctls[name]
        return self.snap.sysctls.get(name)

    def sysctl_int(self, netns: int, name: str) -> int | None:
        value = self.sysctl(netns, name)
        try:
            return int(value.split()[0]) if value else None
        except ValueError:
            return None

    def counter(self, netns: int, group: str, name: str) -> int | None:
        ns = self.snap.netns(netns)
        return ns.counters.get(group, {}).get(name) if ns else None

    def counter_delta(self, netns: int, group: str, name: str) -> int | None:
        """Growth of a kernel counter since the previous sample (None if unknown)."""
        if self.prev is None:
            return None
        now = self.counter(netns, group, name)
        ns = self.prev.netns(netns)
        before = ns.counters.get(group, {}).get(name) if ns else None
        if now is None or before is None or now < before:
            return None
        return now - before

    def ns_name(self, netns: int) -> str:
        return self.snap.netns_name(netns)

    def ns_selector(self, netns: int) -> str:
        """What `--netns` accepts for this namespace: its name when simple, else its inode."""
        ns = self.snap.netns(netns)
        if ns is None:
            return str(netns)
        if ns.kind in ("host", "named", "container") and is_plain(ns.name):
            return ns.name
        return str(ns.inode)

    # --- processes -----------------------------------------------------

    def process(self, pid: int) -> Process | None:
        return self.snap.processes.get(pid)

    def label(self, pid: int) -> str:
        if pid <= 0:
            return "an unseen process"
        proc = self.process(pid)
        return f"{proc.comm} (pid {pid})" if proc else f"pid {pid}"

    def ref(self, pid: int) -> ProcessRef:
        proc = self.process(pid)
        if proc is None:
            return ProcessRef(pid=pid)
        return ProcessRef(pid=pid, comm=proc.comm, user=proc.user, state=proc.state,
                          cmdline=" ".join(proc.cmdline)[:200])

    def refs(self, pids: list[int]) -> list[ProcessRef]:
        return [self.ref(pid) for pid in pids if pid > 0]

    # --- relief --------------------------------------------------------

    def kill(self, netns: int, states: list[str], *, pids: Sequence[int] = (), port: int = 0,
             older_than_ms: int | None = None, words: list[str] | None = None,
             process: str = "") -> tuple[str, list[str]]:
        """The `sockdoctor kill` command line for a set of sockets, and its argv.

        `pids` names the holding processes (--pid each; 0, an unseen one, is
        left out), `process` a name they share.
        """
        argv = ["sockdoctor", "kill", "--netns", self.ns_selector(netns)]
        for one in dict.fromkeys(p for p in pids if p > 0):
            argv += ["--pid", str(one)]
        if process:
            argv += ["--process", process]
        if port:
            argv += ["--port", str(port)]
        for st in states:
            argv += ["--state", st]
        if older_than_ms:
            argv += ["--older-than", duration_arg(older_than_ms)]
        argv += words or []
        return command(argv), argv


    def keepalive(self, netns: int, *, pid: int = 0, port: int = 0, idle_ms: int,
                  ) -> tuple[str, list[str]]:
        """The `sockdoctor keepalive` command line that arms a service's idle sockets.

        Probes start after the doctor's own idle threshold (these sockets are
        past it already, so the first probe goes out at once), every 1/60 of
        it (1 s to 1 min), three times: a vanished peer is reset within about
        three intervals, a live one answers from its kernel.
        """
        idle_s = max(1, min(32767, idle_ms // 1000))
        interval_s = max(1, min(60, idle_s // 60))
        argv = ["sockdoctor", "keepalive", "--netns", self.ns_selector(netns)]
        if pid > 0:
            argv += ["--pid", str(pid)]
        if port:
            argv += ["--port", str(port)]
        argv += ["--idle", duration_arg(idle_s * 1000), "--interval", f"{interval_s}s",
                 "--count", "3"]
        return command(argv), argv


def probed_age(sk: Socket, ack_age: int) -> int:
    """The age of a CLOSE-WAIT socket whose keepalive probes may have reset its last ACK.

    Each probe's answer refreshes tcp_info's last-ACK-received, so a leak
    under a 1 s keepalive would look 1 s old for ever. The keepalive timer
    fires when nothing was heard for the keepalive time K, so K is the last
    ACK's age plus the timer's time left. While the last data received (which
    probes do not refresh) is younger than K, no probe has gone out since
    the peer's FIN and the last ACK is exact. Otherwise the last data received
    is used: an upper bound of the time since the FIN (docs/age.md).
    """
    return sk.info.last_data_recv if keepalive_probed(sk) else ack_age  # type: ignore[union-attr]


def keepalive_probed(sk: Socket) -> bool:
    """Keepalive probes may have refreshed the last ACK of this CLOSE-WAIT socket."""
    info = sk.info
    if sk.timer != KEEPALIVE_TIMER or sk.state != TcpState.CLOSE_WAIT or info is None \
            or info.last_data_recv is None or sk.age_ms is None:
        return False
    return info.last_data_recv >= sk.age_ms + sk.expires_ms


def _by_state(sockets: list[Socket]) -> dict[int, list[Socket]]:
    out: dict[int, list[Socket]] = defaultdict(list)
    for sk in sockets:
        out[sk.state].append(sk)
    return dict(out)


def is_plain(name: str) -> bool:
    """A name a command line can carry as it is: no quoting, nothing to escape."""
    return bool(name) and all((c.isascii() and c.isalnum()) or c in "-_.:" for c in name)


def is_loopback(addr: str) -> bool:
    return addr.startswith(_LOOPBACK_PREFIXES)


def first_pid(sk: Socket) -> int:
    """The process a socket is attributed to: the lowest pid holding it (0: none seen)."""
    owners = sk.owners
    if len(owners) == 1:
        return owners[0].pid
    return min((o.pid for o in owners), default=0)
