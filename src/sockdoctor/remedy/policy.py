"""What a kill may select and how it may act: the safety defaults live here.

A KillPolicy is plain data. With nothing said it selects CLOSE-WAIT sockets
only, acts by the safest method that works, refuses listeners and the
caller's own session, and refuses to act on more than 1000 sockets at once.
The command line, the reaper and the Python API all build one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..errors import SockdoctorError, UsageError
from ..model import Snapshot, Socket, TcpState, state_mask
from ..query import Query

METHODS = ("auto", "fin", "drain", "destroy", "close", "rst")
# What `auto` tries, safest first. `close` is never chosen unasked.
AUTO_ORDER = ("fin", "drain", "destroy", "rst")
DEFAULT_STATES = state_mask(TcpState.CLOSE_WAIT)
DEFAULT_MAX = 1000
OVER_MAX = ("refuse", "defer")
DEAD_FDS = ("no", "also", "only")


@dataclass(frozen=True, kw_only=True)
class KillPolicy:
    """Which sockets a kill selects, by which methods, within which limits.

    states: kernel state mask (model.state_mask); None means CLOSE-WAIT only.
    older_than_ms: only sockets whose peer has been silent this long (age).
    where: any further selection (an ss filter, ports, pids, process, family,
        netns), matched against the snapshot as `ls` would.
    methods: the methods allowed, in the order they are tried per socket;
        "auto" stands for fin, drain, destroy, rst.
    force: also act on listeners and on sockdoctor's own session.
    max_count: most sockets acted on; beyond it the plan is refused
        (over_max="refuse", the CLI) or the rest is left for later ("defer").
    rate: at most this many actions per second (0: no limit).
    dead_fds: descriptors of sockets in no TCP table (shutdown without
        close): "no", "also" (besides the selected sockets) or "only".
    bare_close: `close` frees the descriptor number instead of parking an
        unconnected placeholder socket on it (see docs/kill.md).
    """

    states: int | None = None
    older_than_ms: int | None = None
    where: Query | None = None
    methods: tuple[str, ...] = ("auto",)
    force: bool = False
    max_count: int = DEFAULT_MAX
    over_max: str = "refuse"
    rate: float = 0.0
    dead_fds: str = "no"
    bare_close: bool = False

    def __post_init__(self) -> None:
        bad = [m for m in self.methods if m not in METHODS]
        if bad or not self.methods:
            raise UsageError(f"unknown method '{bad[0] if bad else ''}' "
                             f"(choose from {', '.join(METHODS)})")
        if self.max_count < 1:
            raise UsageError("the maximum number of sockets must be at least 1")
        if self.rate < 0:
            raise UsageError("the rate must be above zero")
        if self.over_max not in OVER_MAX or self.dead_fds not in DEAD_FDS:
            raise UsageError(f"over_max is one of {OVER_MAX}, dead_fds one of {DEAD_FDS}")

    @property
    def state_mask(self) -> int:
        return DEFAULT_STATES if self.states is None else self.states

    @property
    def order(self) -> tuple[str, ...]:
        """The concrete methods to try, in order ("auto" expanded, no repeats)."""
        out: list[str] = []
        for name in self.methods:
            for method in (AUTO_ORDER if name == "auto" else (name,)):
                if method not in out:
                    out.append(method)
        return tuple(out)

    @property
    def label(self) -> str:
        return ",".join(self.methods)

    @property
    def asked(self) -> bool:
        """A single method was named: its refusals are given as they are."""
        return self.methods != ("auto",) and len(self.order) == 1

    def selects(self, sk: Socket, snapshot: Snapshot) -> bool:
        """Whether this policy chooses `sk` (a socket of `snapshot`)."""
        return self.selector(snapshot)(sk)

    def selector(self, snapshot: Snapshot) -> Callable[[Socket], bool]:
        """selects() for many sockets of one snapshot (the namespaces are decided once)."""
        mask, older, where = self.state_mask, self.older_than_ms, self.where
        if self.dead_fds == "only":
            return lambda sk: False
        spaces = None if where is None or where.netns in ("", "all") else \
            named_namespaces(where, snapshot)
        if where is not None:
            where.learn(snapshot.namespaces)  # `autobound`: each namespace's own range

        def selects(sk: Socket) -> bool:
            if not (mask >> sk.state) & 1:
                return False
            if older is not None and (sk.age_ms is None or sk.age_ms < older):
                return False
            if where is None:
                return True
            if (spaces is not None and sk.netns not in spaces) or not where.match_socket(sk):
                return False
            return not where.needs_owners or where.match_owner(sk, snapshot.processes)
        return selects


def named_namespaces(where: Query, snapshot: Snapshot) -> set[int]:
    """The namespaces of `snapshot` that `where.netns` names, as every command decides it
    (selectors.select_netns: names, inodes, host, container ids, pids it knows).

    A form only the live system can resolve ("self", a PID the snapshot does
    not know) was already resolved by the scan that made the snapshot.
    """
    try:
        return {ns.inode for ns in where.namespaces_in(snapshot)}
    except SockdoctorError:
        pass
    if not resolvable(where.netns) and len(snapshot.namespaces) == 1:
        return {snapshot.namespaces[0].inode}
    return set()


def resolvable(wanted: str) -> bool:
    """A --netns value a snapshot can decide by itself (not a PID, not "self")."""
    return not (wanted.isdigit() and len(wanted) < 8) and wanted not in ("self", "current")


def parse_rate(text: str | None) -> float:
    """'50/s', '2.5' -> actions per second (None or '' -> 0, no limit)."""
    if not text:
        return 0.0
    try:
        rate = float(text.strip().removesuffix("/s"))
    except ValueError:
        raise UsageError(f"'{text}' is not a rate; write it like 50/s") from None
    if not rate > 0 or rate == float("inf"):
        raise UsageError(f"'{text}': the rate must be a number above zero, like 50/s")
    return rate

