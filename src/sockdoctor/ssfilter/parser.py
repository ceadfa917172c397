"""The entry point: leading `state`/`exclude` words, then ss's filter expression.

The expression itself is grammar.py's, compiled by evaluate.py; both load on
the first filter that has an expression (see the package docstring).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import FilterSyntaxError
from .states import SS_ALL, SS_CONN, STATE_HELP, scan_state
from .tokens import STATE_WORDS, tokenize, word_starts

if TYPE_CHECKING:
    from .evaluate import Filter


@dataclass
class ParsedFilter:
    """What `parse` found: the state words' mask and the compiled expression."""

    states: int | None  # kernel state bit mask, None when no state word was given
    expr: Filter | None


def parse(words: Sequence[str]) -> ParsedFilter:
    """Parse ss filter words: leading `state`/`exclude` words, then an expression."""
    words = list(words)
    text = " ".join(words)
    starts = word_starts(words)
    states, i = _parse_states(words, text, starts)
    tokens = tokenize(words, starts, i)
    if not tokens:
        return ParsedFilter(states, None)
    from .evaluate import Filter
    from .grammar import parse_expression
    tree, family = parse_expression(tokens, text)
    return ParsedFilter(states, Filter(tree, family))


def _parse_states(words: list[str], text: str, starts: list[int]) -> tuple[int | None, int]:
    mask, seen, i = SS_ALL, False, 0
    while i < len(words) and words[i] in STATE_WORDS:
        if i + 1 >= len(words):
            raise FilterSyntaxError(f"expected a state name after '{words[i]}' but the filter "
                                    "ended", text, len(text))
        bits = scan_state(words[i + 1])
        if bits is None:
            raise FilterSyntaxError(f"'{words[i + 1]}' is not a state name; use one of "
                                    f"{STATE_HELP}", text, starts[i + 1])
        if words[i] == "state":
            mask = (mask if seen else 0) | bits
        else:
            mask &= ~bits
        seen, i = True, i + 2
    if not seen:
        return None, i
    # ss keeps its default set (connected, no TIME-WAIT/SYN-RECV) when nothing is left
    return (mask or SS_CONN), i
