"""ss-compatible filter expressions (WORK IN PROGRESS: states only so far)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from .errors import FilterSyntaxError
from .model import ALL_STATES_MASK, Socket, TcpState, state_mask


class Expr(Protocol):
    def match(self, sk: Socket) -> bool: ...


@dataclass
class ParsedFilter:
    states: int | None
    expr: Expr | None


_STATE_NAMES = {
    "established": state_mask(TcpState.ESTABLISHED),
    "syn-sent": state_mask(TcpState.SYN_SENT),
    "syn-recv": state_mask(TcpState.SYN_RECV),
    "fin-wait-1": state_mask(TcpState.FIN_WAIT1),
    "fin-wait-2": state_mask(TcpState.FIN_WAIT2),
    "time-wait": state_mask(TcpState.TIME_WAIT),
    "closed": state_mask(TcpState.CLOSE),
    "close-wait": state_mask(TcpState.CLOSE_WAIT),
    "last-ack": state_mask(TcpState.LAST_ACK),
    "listening": state_mask(TcpState.LISTEN),
    "closing": state_mask(TcpState.CLOSING),
    "all": ALL_STATES_MASK,
}


def states_from_names(names: Sequence[str]) -> int:
    mask = 0
    for name in names:
        key = name.lower().replace("_", "-")
        if key not in _STATE_NAMES:
            raise FilterSyntaxError(f"unknown state '{name}'")
        mask |= _STATE_NAMES[key]
    return mask


def read_filter_file(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return f.read().split()


def parse(words: Sequence[str]) -> ParsedFilter:
    mask: int | None = None
    i = 0
    while i < len(words) and words[i] in ("state", "exclude"):
        if i + 1 >= len(words):
            raise FilterSyntaxError(f"'{words[i]}' needs a state name")
        bits = states_from_names([words[i + 1]])
        if words[i] == "state":
            mask = (mask or 0) | bits
        else:
            mask = (ALL_STATES_MASK if mask is None else mask) & ~bits
        i += 2
    if i < len(words):
        raise FilterSyntaxError(f"unsupported filter near '{words[i]}'")
    return ParsedFilter(mask, None)
