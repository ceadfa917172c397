"""TCP state names and groups, as ss spells them after `state`/`exclude`, plus --state's."""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import FilterSyntaxError
from ..model import SS_FILTER_NAMES, TcpState

SS_ALL = (1 << 12) - 1  # ss's mask: bit 0 (its "unknown") up to CLOSING
SS_CONN = SS_ALL & ~((1 << TcpState.LISTEN) | (1 << TcpState.CLOSE)
                     | (1 << TcpState.TIME_WAIT) | (1 << TcpState.SYN_RECV))

# ss's own states, bit 0 (its "unknown") up to CLOSING, by the one state table's
# filter names (model.STATE_WORDS), then ss's other spellings and its groups.
_SS_STATE_NAMES: dict[str, int] = {
    "unknown": 1,
    **{name: 1 << st for st, name in SS_FILTER_NAMES.items() if st <= TcpState.CLOSING},
    "syn-rcv": 1 << TcpState.SYN_RECV,
    "close": 1 << TcpState.CLOSE,
    "unconnected": 1 << TcpState.CLOSE,
    "all": SS_ALL,
    "connected": SS_ALL & ~((1 << TcpState.CLOSE) | (1 << TcpState.LISTEN)),
    "synchronized": SS_ALL & ~((1 << TcpState.CLOSE) | (1 << TcpState.LISTEN)
                               | (1 << TcpState.SYN_SENT)),
    "bucket": (1 << TcpState.SYN_RECV) | (1 << TcpState.TIME_WAIT),
    "big": SS_ALL & ~((1 << TcpState.SYN_RECV) | (1 << TcpState.TIME_WAIT)),
}

# Friendlier spellings for --state (not accepted after `state`, as in ss).
_STATE_ALIASES: dict[str, int] = {
    "estab": 1 << TcpState.ESTABLISHED,
    "listen": 1 << TcpState.LISTEN,
    "unconn": 1 << TcpState.CLOSE,
    "fin-wait1": 1 << TcpState.FIN_WAIT1,
    "fin-wait2": 1 << TcpState.FIN_WAIT2,
}

STATE_HELP = ("established, syn-sent, syn-recv, fin-wait-1, fin-wait-2, time-wait, closed, "
              "close-wait, last-ack, listening, closing, or a group: all, connected, "
              "synchronized, bucket, big")


# Every spelling of a state is read the same: close-wait, close_wait, CLOSE-WAIT,
# CLOSE_WAIT, closewait (any case). Output has one spelling per kind (docs/json.md).
_ANY_NAME = {**_SS_STATE_NAMES, **_STATE_ALIASES}
_BARE_SS = {k.replace("-", ""): v for k, v in _SS_STATE_NAMES.items()}
_BARE_ANY = {k.replace("-", ""): v for k, v in _ANY_NAME.items()}


def state_key(name: str) -> str:
    """The one spelling a state name is looked up by: lower case, '-' between words."""
    return name.strip().lower().replace("_", "-")


def _lookup(name: str, table: dict[str, int], bare: dict[str, int]) -> int | None:
    key = state_key(name)
    return table.get(key, bare.get(key.replace("-", "")))


def scan_state(name: str) -> int | None:
    """The mask of a state name after `state`/`exclude` (any case and spelling), or None."""
    return _lookup(name, _SS_STATE_NAMES, _BARE_SS)


def states_from_names(names: Sequence[str]) -> int:
    """Mask for --state values: ss's names plus estab/listen/CLOSE_WAIT style spellings."""
    mask = 0
    for name in names:
        bits = _lookup(name, _ANY_NAME, _BARE_ANY)
        if bits is None:
            raise FilterSyntaxError(f"'{name}' is not a TCP state; use one of {STATE_HELP}")
        mask |= bits
    return mask
