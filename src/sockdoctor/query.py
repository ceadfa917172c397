"""What to look for: an ss-compatible filter plus the flags people actually type.

A Query records what the user named (states, ports, pids, process, age,
namespaces, family, an ss expression) and is applied to a snapshot in one
place, `Query.select`: ls --from, the doctor's scope, the kill and reap
policies, the sampler, top and trace all go through it (the kill planner,
which walks the sockets itself, through its per-socket form `Query.selector`;
trace, whose events are not a snapshot, through `Query.selects`). The
kernel-side part of the same question (the state mask and the port bytecode
sent with the dump request) is `Query.kernel_filter`. It also says what the
scan must collect to answer it (owners for --pid/--process, tcp_info for
--older-than), so a narrow question stays cheap.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TypedDict, Unpack

import msgspec

from . import ssfilter
from .errors import SockdoctorError, UsageError
from .model import ALL_STATES_MASK, Netns, Process, Snapshot, Socket
from .selectors import (
    process_matcher,
    select_netns,
    unknown_netns,
    unknown_pids,
    unknown_process,
)
from .ssfilter.tokens import with_file_words

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, None: 1000}
# The longest duration anything takes (an interval, --older-than, a timeout): one
# year. Past it a wait overflows a C timeout (threading, select) or is a typo.
MAX_DURATION_MS = 365 * 86_400_000


def parse_duration(text: str, option: str = "") -> int:
    """'90s', '10m', '2h', '1d', '500ms' (a bare number means seconds) -> milliseconds.

    At most MAX_DURATION_MS (365d). `option` names the flag in the error
    ("--older-than: 'x' is not a duration ...").
    """
    lead = f"{option}: " if option else ""
    m = _DURATION.match(text) if len(text) < 40 else None
    if not m:
        shown = text[:40].encode("unicode_escape").decode("ascii")
        raise UsageError(f"{lead}'{shown}' is not a duration; write it like 30s, "
                         "10m, 2h or 1d")
    ms = float(m.group(1)) * _UNIT_MS[m.group(2)]
    if ms > MAX_DURATION_MS:
        raise UsageError(f"{lead}'{text.strip()}' is longer than a duration may be "
                         "(at most 365d)")
    return int(ms)


class Named(TypedDict, total=False):
    """The flags of `Query.build`, as the command line names them (all optional)."""

    states: Sequence[str]  # --state: ss state names
    ports: Sequence[int]  # --port: local or peer port
    pids: Sequence[int]  # --pid
    process: str  # --process: exact name or glob
    older_than: str | None  # --older-than: a duration ("10m")
    netns: str  # --netns
    family: int  # 0 (both), socket.AF_INET or socket.AF_INET6 (-4 / -6)
    filter_file: str | None  # -F FILE: ss filter text read from a file


@dataclass(frozen=True)
class KernelFilter:
    """What the kernel can decide for a query while it dumps (sock_diag)."""

    states: int  # the state mask sent with the dump request
    bytecode: bytes  # an INET_DIAG_REQ_BYTECODE port program; b"" for none
    ports: frozenset[int] = frozenset()  # the ports `bytecode` accepts (the BPF source reads them)


@dataclass
class Query:
    """A parsed question about sockets. Build with `Query.build(...)`."""

    states: int = ALL_STATES_MASK
    expr: ssfilter.Expr | None = None
    ports: frozenset[int] = frozenset()
    pids: frozenset[int] = frozenset()
    process: str = ""
    older_than_ms: int | None = None
    netns: str = "all"
    family: int = 0  # 0: both, socket.AF_INET or socket.AF_INET6 (-4 / -6)
    text: str = ""
    named_states: bool = False  # states were named (--state, state words), even "all"
    _process_match: Callable[[str, Sequence[str]], bool] | None = field(
        default=None, repr=False, compare=False)

    @classmethod
    def build(cls, filter_words: Sequence[str] | str = (), **named: Unpack[Named]) -> Query:
        """Combine filter text (ss syntax) and flags (Named); every part must hold (AND)."""
        unknown = sorted(set(named) - set(Named.__annotations__))
        if unknown:  # **named must not swallow a misspelt flag silently
            raise TypeError(f"Query.build() got an unexpected keyword argument '{unknown[0]}'")
        words = filter_words.split() if isinstance(filter_words, str) else list(filter_words)
        if named.get("filter_file"):
            words = with_file_words(words, ssfilter.read_filter_file(named["filter_file"]))
        pids, ports = named.get("pids", ()), named.get("ports", ())
        bad = sorted(p for p in pids if p <= 0)
        if bad:
            raise UsageError(f"--pid takes a process id (a number above 0), not {bad[0]}")
        bad = sorted(p for p in ports if not 0 < p <= 65535)
        if bad:
            raise UsageError(f"--port takes a port from 1 to 65535, not {bad[0]}")
        parsed = ssfilter.parse(words)
        states = named.get("states", ())
        process, older = named.get("process") or "", named.get("older_than")
        return cls(
            states=_state_mask(parsed.states, states),
            expr=parsed.expr,
            ports=frozenset(ports),
            pids=frozenset(pids),
            process=process,
            older_than_ms=parse_duration(older, "--older-than") if older else None,
            netns=named.get("netns") or "all",
            family=named.get("family", 0),
            text=" ".join(words),
            named_states=bool(states) or parsed.states is not None,
            _process_match=process_matcher(process) if process else None,
        )

    @property
    def names_states(self) -> bool:
        """Did the question name states (--state, `state`/`exclude`, also in a -F file)?"""
        return self.named_states or self.states != ALL_STATES_MASK

    @property
    def narrows(self) -> bool:
        """Does the query select fewer than all sockets of its namespaces?

        The one answer to "did the user narrow it?" (doctor's scope, the
        sampler, top, the reaper's command-line filter). --netns is not part
        of it: it chooses namespaces, not sockets in them.
        """
        return bool((self.states & ALL_STATES_MASK) != ALL_STATES_MASK or self.expr is not None
                    or self.ports or self.needs_owners or self.needs_age or self.family)

    @property
    def needs_owners(self) -> bool:
        return bool(self.pids or self.process)

    @property
    def needs_age(self) -> bool:
        return self.older_than_ms is not None

    def learn(self, namespaces: Iterable[Netns]) -> None:
        """What the filter needs from a snapshot's namespace records (`autobound`: each
        namespace's own port range). Call before judging that snapshot's sockets."""
        if self.expr is not None:
            self.expr.learn(namespaces)

    def kernel_filter(self, evidence: bool = False) -> KernelFilter:
        """The part of this query the kernel applies while dumping.

        Python still applies the whole query afterwards (select); this only
        saves parsing sockets that cannot match. The doctor's evidence needs
        every socket of a namespace (a descriptor is "dead" only if its socket
        is in no table at all), so with `evidence` nothing is filtered.
        """
        from .linux import sockdiag  # the kernel's encoding lives below, in linux/

        if evidence:
            return KernelFilter(ALL_STATES_MASK, b"")
        if not self.ports or len(self.ports) > sockdiag.MAX_FILTER_PORTS:
            return KernelFilter(self.states, b"")
        return KernelFilter(self.states, sockdiag.port_filter(self.ports), self.ports)

    def match_socket(self, sk: Socket) -> bool:
        """Everything that can be decided from the socket alone."""
        if not (self.states >> sk.state) & 1:
            return False
        if self.family and sk.family != self.family:
            return False
        if self.ports and sk.local_port not in self.ports and sk.peer_port not in self.ports:
            return False
        if self.older_than_ms is not None and (sk.age_ms is None
                                               or sk.age_ms < self.older_than_ms):
            return False
        return self.expr is None or self.expr.match(sk)

    def match_process(self, proc: Process) -> bool:
        """Does `--process` name this process (exact name or glob: selectors.process_matcher)?"""
        if not self.process:
            return True
        match = self._process_match or process_matcher(self.process)
        return match(proc.comm, proc.cmdline)

    def match_owner(self, sk: Socket, processes: dict[int, Process]) -> bool:
        """The --pid and --process parts, once owners are joined."""
        if self.pids and not any(o.pid in self.pids for o in sk.owners):
            return False
        if self.process:
            procs = (processes.get(o.pid) for o in sk.owners)
            if not any(p is not None and self.match_process(p) for p in procs):
                return False
        return True

    def selects(self, sk: Socket, processes: dict[int, Process]) -> bool:
        """The whole query on one socket whose namespace was chosen (owners joined)."""
        return self.match_socket(sk) and (not self.needs_owners
                                          or self.match_owner(sk, processes))

    def select(self, snapshot: Snapshot, *, strict: bool = False, source: str = "the snapshot",
               sockets: Iterable[Socket] | None = None) -> list[Socket]:
        """The sockets of `snapshot` this query selects: THE place a query meets a snapshot.

        In the namespaces `netns` names (Query.namespaces), of the states,
        ports, family, age, expression, pids and process asked for, in the
        snapshot's order. strict: a --netns that names nothing in the
        snapshot is a NotFoundError naming `source` (else nothing is
        selected). sockets: a subset of the snapshot's sockets to choose
        from (default: all).
        """
        pool = snapshot.sockets if sockets is None else sockets
        if self.netns in ("", "all") and not self.narrows:
            return list(pool)
        test = self.selector(snapshot, strict=strict, source=source)
        return [sk for sk in pool if test(sk)]

    def selector(self, snapshot: Snapshot, *, strict: bool = False,
                 source: str = "the snapshot") -> Callable[[Socket], bool]:
        """select() as a test of one socket of `snapshot`, for a caller that walks the
        sockets itself (the kill planner): the namespaces are decided once, here."""
        self.learn(snapshot.namespaces)  # `autobound`: each namespace's own port range
        inodes = None if self.netns in ("", "all") else {
            ns.inode for ns in self.namespaces(snapshot, strict=strict, source=source)}
        mask, processes = self.states, snapshot.processes
        owners, match = self.needs_owners, self.match_socket
        narrows = self.narrows
        by_state_only = not (owners or self.family or self.ports or self.needs_age
                             or self.expr is not None)

        def test(sk: Socket) -> bool:
            if inodes is not None and sk.netns not in inodes:
                return False
            if not narrows:
                return True
            if not (mask >> sk.state) & 1:  # the usual first "no", without a call
                return False
            return by_state_only or (match(sk) and (not owners or self.match_owner(sk, processes)))
        return test

    def namespaces(self, snapshot: Snapshot, *, strict: bool = False,
                   source: str = "the snapshot") -> list[Netns]:
        """The namespaces of `snapshot` that `netns` names, as every command decides it
        (selectors.select_netns: names, inodes, host, container ids, pids it knows).

        A form only the live system can resolve ("self", a PID the snapshot
        does not know) was already resolved by the scan that made a snapshot
        of one namespace: that one. strict: naming nothing is a NotFoundError.
        """
        if self.netns in ("", "all"):
            return list(snapshot.namespaces)
        try:
            return self.namespaces_in(snapshot, source)
        except SockdoctorError:
            if strict:
                raise
        if not resolvable(self.netns) and len(snapshot.namespaces) == 1:
            return list(snapshot.namespaces)
        return []

    def namespaces_in(self, snapshot: Snapshot, source: str = "the snapshot") -> list[Netns]:
        """The namespaces of a saved snapshot that `--netns` names; none is a NotFoundError."""
        chosen = select_netns(snapshot.namespaces, self.netns, own=None,
                              netns_of_pid=lambda pid: _netns_of_pid(snapshot, pid))
        if not chosen and self.netns not in ("", "all"):
            raise unknown_netns(self.netns, snapshot.namespaces, f" in {source}")
        return chosen

    def check_processes(self, snapshot: Snapshot, source: str = "the snapshot") -> None:
        """--pid and --process must name a process the snapshot knows (exit 3, with a hint)."""
        missing = [pid for pid in self.pids if pid not in snapshot.processes]
        if missing:
            raise unknown_pids(missing, f" in {source} (it held no TCP socket then)")
        procs = snapshot.processes.values()
        if self.process and not any(self.match_process(p) for p in procs):
            raise unknown_process(self.process, (p.comm for p in procs), f" in {source}")

    def apply(self, snapshot: Snapshot, source: str = "the snapshot") -> Snapshot:
        """The part of a saved snapshot this query selects (for `--from FILE`):
        select(strict=True), after checking that --pid/--process name a process in it."""
        self.check_processes(snapshot, source)
        return msgspec.structs.replace(snapshot, sockets=self.select(snapshot, strict=True,
                                                                     source=source))


def resolvable(wanted: str) -> bool:
    """A --netns value a snapshot can decide by itself (not a PID, not "self")."""
    return not (wanted.isdigit() and len(wanted) < 8) and wanted not in ("self", "current")


def _state_mask(parsed: int | None, names: Sequence[str]) -> int:
    """The filter's state words and --state together (both must hold)."""
    mask = parsed if parsed is not None else ALL_STATES_MASK
    if names:
        try:
            mask &= ssfilter.states_from_names(names)
        except UsageError as exc:
            raise UsageError(f"--state: {exc}") from None
        if not mask:
            raise UsageError(f"--state {' '.join(names)} and the filter's state words "
                             "select no state in common: give the states once")
    return mask


def _netns_of_pid(snapshot: Snapshot, pid: int) -> int | None:
    proc = snapshot.processes.get(pid)
    if proc is not None and proc.netns:
        return proc.netns
    return next((ns.inode for ns in snapshot.namespaces if ns.pid == pid), None)
