"""What to look for: an ss-compatible filter plus the flags people actually type.

A Query splits into what the kernel can do for us (the state mask, sent with
the dump request) and a Python predicate for the rest. It also says what the
scan must collect to answer it (owners for --pid/--process, tcp_info for
--older-than), so a narrow question stays cheap.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import msgspec

from . import ssfilter
from .errors import UsageError
from .model import ALL_STATES_MASK, Process, Snapshot, Socket

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, None: 1000}


def parse_duration(text: str) -> int:
    """'90s', '10m', '2h', '1d', '500ms' (a bare number means seconds) -> milliseconds."""
    m = _DURATION.match(text)
    if not m:
        raise UsageError(f"'{text}' is not a duration; write it like 30s, 10m, 2h or 1d")
    return int(float(m.group(1)) * _UNIT_MS[m.group(2)])


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
    notes: list[str] = field(default_factory=list)

    @classmethod
    def build(cls, filter_words: Sequence[str] | str = (), *, states: Sequence[str] = (),
              ports: Sequence[int] = (), pids: Sequence[int] = (), process: str = "",
              older_than: str | None = None, netns: str = "all", family: int = 0,
              filter_file: str | None = None) -> Query:
        """Combine filter text (ss syntax) and flags; every part must hold (AND)."""
        words = filter_words.split() if isinstance(filter_words, str) else list(filter_words)
        if filter_file:
            words += ssfilter.read_filter_file(filter_file)
        parsed = ssfilter.parse(words)
        mask = parsed.states if parsed.states is not None else ALL_STATES_MASK
        if states:
            mask &= ssfilter.states_from_names(states)
        return cls(
            states=mask,
            expr=parsed.expr,
            ports=frozenset(ports),
            pids=frozenset(pids),
            process=process,
            older_than_ms=parse_duration(older_than) if older_than else None,
            netns=netns or "all",
            family=family,
            text=" ".join(words),
        )

    @property
    def needs_owners(self) -> bool:
        return bool(self.pids or self.process)

    @property
    def needs_age(self) -> bool:
        return self.older_than_ms is not None

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

    def match_owner(self, sk: Socket, processes: dict[int, Process]) -> bool:
        """The --pid and --process parts, once owners are joined."""
        if self.pids and not any(o.pid in self.pids for o in sk.owners):
            return False
        if self.process:
            names = (processes.get(o.pid) for o in sk.owners)
            if not any(p is not None and p.comm == self.process for p in names):
                return False
        return True

    def apply(self, snapshot: Snapshot) -> Snapshot:
        """The part of a saved snapshot this query selects (for `--from FILE`)."""
        keep_ns = {ns.inode for ns in snapshot.namespaces
                   if self.netns in ("all", "", ns.name, str(ns.inode))
                   or (self.netns == "host" and ns.kind == "host")}
        sockets = [sk for sk in snapshot.sockets
                   if sk.netns in keep_ns and self.match_socket(sk)
                   and (not self.needs_owners or self.match_owner(sk, snapshot.processes))]
        return msgspec.structs.replace(snapshot, sockets=sockets)
