"""What to look for: an ss-compatible filter plus the flags people actually type.

A Query splits into what the kernel can do for us (the state mask, sent with
the dump request) and a Python predicate for the rest. It also says what the
scan must collect to answer it (owners for --pid/--process, tcp_info for
--older-than), so a narrow question stays cheap.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import msgspec

from . import ssfilter
from .errors import UsageError
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
    _process_match: Callable[[str, Sequence[str]], bool] | None = field(
        default=None, repr=False, compare=False)

    @classmethod
    def build(cls, filter_words: Sequence[str] | str = (), *, states: Sequence[str] = (),
              ports: Sequence[int] = (), pids: Sequence[int] = (), process: str = "",
              older_than: str | None = None, netns: str = "all", family: int = 0,
              filter_file: str | None = None) -> Query:
        """Combine filter text (ss syntax) and flags; every part must hold (AND)."""
        words = filter_words.split() if isinstance(filter_words, str) else list(filter_words)
        if filter_file:
            words = with_file_words(words, ssfilter.read_filter_file(filter_file))
        bad = sorted(p for p in pids if p <= 0)
        if bad:
            raise UsageError(f"--pid takes a process id (a number above 0), not {bad[0]}")
        bad = sorted(p for p in ports if not 0 < p <= 65535)
        if bad:
            raise UsageError(f"--port takes a port from 1 to 65535, not {bad[0]}")
        parsed = ssfilter.parse(words)
        mask = parsed.states if parsed.states is not None else ALL_STATES_MASK
        if states:
            try:
                mask &= ssfilter.states_from_names(states)
            except UsageError as exc:
                raise UsageError(f"--state: {exc}") from None
            if not mask:
                raise UsageError(f"--state {' '.join(states)} and the filter's state words "
                                 "select no state in common: give the states once")
        return cls(
            states=mask,
            expr=parsed.expr,
            ports=frozenset(ports),
            pids=frozenset(pids),
            process=process or "",
            older_than_ms=parse_duration(older_than, "--older-than") if older_than else None,
            netns=netns or "all",
            family=family,
            text=" ".join(words),
            _process_match=process_matcher(process) if process else None,
        )

    @property
    def names_states(self) -> bool:
        """Did the question name states (--state, `state`/`exclude`, also in a -F file)?"""
        return self.states != ALL_STATES_MASK

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
        """The whole query on one socket of a snapshot (owners already joined)."""
        return self.match_socket(sk) and (not self.needs_owners
                                          or self.match_owner(sk, processes))

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
        """The part of a saved snapshot this query selects (for `--from FILE`)."""
        self.check_processes(snapshot, source)
        self.learn(snapshot.namespaces)
        keep_ns = {ns.inode for ns in self.namespaces_in(snapshot, source)}
        sockets = [sk for sk in snapshot.sockets
                   if sk.netns in keep_ns and self.selects(sk, snapshot.processes)]
        return msgspec.structs.replace(snapshot, sockets=sockets)


def _netns_of_pid(snapshot: Snapshot, pid: int) -> int | None:
    proc = snapshot.processes.get(pid)
    if proc is not None and proc.netns:
        return proc.netns
    return next((ns.inode for ns in snapshot.namespaces if ns.pid == pid), None)
