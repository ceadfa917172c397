"""What a kill may select and how it may act: the safety defaults live here.

A KillPolicy is plain data. With nothing said it selects CLOSE-WAIT sockets
only, acts by the safest method that works, refuses listeners and the
caller's own session, and refuses to act on more than 1000 sockets at once.
The command line, the reaper and the Python API all build one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import InitVar, dataclass

from ..errors import UsageError
from ..model import Snapshot, Socket, TcpState, state_mask
from ..query import Query, resolvable

__all__ = ["AUTO_ORDER", "DEAD_FDS", "DEFAULT_MAX", "DEFAULT_STATES", "METHODS", "OVER_MAX",
           "KillPolicy", "dead_fds_mode", "parse_rate", "resolvable"]

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

    where: the selection, a Query (states, an ss filter, ports, pids,
        process, age, family, netns), matched against a snapshot by
        Query.select as `ls` would. A query that names no state selects
        `default_states`: CLOSE-WAIT only (DEFAULT_STATES) for a kill;
        keepalive's policy (remedy/keepalive.py) passes ESTABLISHED. After
        construction `where` is always a Query with that default applied.
    states, older_than_ms: shorthands, given when the policy is made,
        merged into `where` (a kernel state mask, model.state_mask; a minimum
        age: the peer silent this long). Read them back from `query`.
    default_states: the states chosen when neither `where` nor `states`
        names one (given when the policy is made).
    methods: the methods allowed, in the order they are tried per socket;
        "auto" stands for fin, drain, destroy, rst.
    force: also act on listeners and on sockdoctor's own session.
    max_count: most sockets acted on; beyond it the plan is refused
        (over_max="refuse", the CLI) or the rest is left for later ("defer").
    rate: at most this many actions per second (0: no limit).
    dead_fds: descriptors of sockets in no TCP table (shutdown without
        close): "no", "also" (besides the selected sockets) or "only";
        dead_fds_mode() turns the `--dead-fds` switch into one of them.
    bare_close: `close` frees the descriptor number instead of parking an
        unconnected placeholder socket on it (see docs/kill.md).
    """

    where: Query | None = None
    states: InitVar[int | None] = None
    older_than_ms: InitVar[int | None] = None
    default_states: InitVar[int] = DEFAULT_STATES
    methods: tuple[str, ...] = ("auto",)
    force: bool = False
    max_count: int = DEFAULT_MAX
    over_max: str = "refuse"
    rate: float = 0.0
    dead_fds: str = "no"
    bare_close: bool = False

    def __post_init__(self, states: int | None, older_than_ms: int | None,
                      default_states: int) -> None:
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
        object.__setattr__(self, "where", _selection(self.where, states, older_than_ms,
                                                     default_states))

    @property
    def query(self) -> Query:
        """The whole selection (where, with the CLOSE-WAIT default applied)."""
        assert self.where is not None  # __post_init__ made it
        return self.where

    @property
    def state_mask(self) -> int:
        return self.query.states

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
        """selects() for many sockets of one snapshot: Query.select's test (Query.selector)."""
        if self.dead_fds == "only":
            return lambda sk: False
        return self.query.selector(snapshot)


def dead_fds_mode(dead_fds: bool, query: Query | None) -> str:
    """What `--dead-fds` (the CLI) and `kill(dead_fds=True)` (the library) mean.

    Alone, only the descriptors of sockets in no TCP table ("only": the
    CLOSE-WAIT default does not apply); with states named (--state or the
    filter's state words), those sockets as well ("also"). Other filter
    parts (--pid, --process) narrow the descriptors by their holder.
    """
    if not dead_fds:
        return "no"
    return "also" if query is not None and query.names_states else "only"


def _selection(where: Query | None, states: int | None, older_than_ms: int | None,
               default_states: int) -> Query:
    """`where` with the shorthands merged in, and `default_states` when no state is named."""
    query = where or Query()
    if states is not None:
        query = dataclasses.replace(query, states=query.states & states, named_states=True)
    elif not query.names_states:
        query = dataclasses.replace(query, states=default_states, named_states=True)
    if older_than_ms is not None:  # both ages must hold: the longer one
        older = max(older_than_ms, query.older_than_ms or 0)
        query = dataclasses.replace(query, older_than_ms=older)
    return query


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

