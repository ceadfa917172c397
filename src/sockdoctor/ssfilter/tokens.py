"""From words to tokens: ss -F filter files, ss's re-tokenising, and token positions.

Words are split again on spaces and tabs, and a backslash escapes the next
character. Every token keeps its offset in the filter text (the words joined
by single spaces) so a FilterSyntaxError can point at it.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate

from ..errors import FilterSyntaxError, NotFoundError, PermissionDeniedError

STATE_WORDS = ("state", "exclude", "excl")

# Token kinds, named after ss's lexer.
NOT, AND, OR, LPAREN, RPAREN = "!", "&", "|", "(", ")"
EQ, NEQ, GEQ, LEQ, GT, LT = "=", "!=", ">=", "<=", ">", "<"
DST, SRC, DPORT, SPORT, DEV, FWMARK, CGROUP, AUTOBOUND = (
    "dst", "src", "dport", "sport", "dev", "fwmark", "cgroup", "autobound")
VALUE = "value"

_KEYWORDS: dict[str, str] = {
    "!": NOT, "not": NOT,
    "&": AND, "&&": AND, "and": AND,
    "|": OR, "||": OR, "or": OR,
    "(": LPAREN, ")": RPAREN,
    "dst": DST, "src": SRC, "dport": DPORT, "sport": SPORT, "dev": DEV,
    "fwmark": FWMARK, "cgroup": CGROUP, "autobound": AUTOBOUND,
    ">=": GEQ, "ge": GEQ, "geq": GEQ,
    "<=": LEQ, "le": LEQ, "leq": LEQ,
    "!=": NEQ, "ne": NEQ, "neq": NEQ,
    "=": EQ, "==": EQ, "eq": EQ,
    ">": GT, "gt": GT,
    "<": LT, "lt": LT,
}
STARTS_CONDITION = {NOT, LPAREN, DST, SRC, DPORT, SPORT, DEV, FWMARK, CGROUP, AUTOBOUND}


@dataclass(frozen=True)
class Token:
    """One token of the expression, with its offset for error messages."""

    kind: str
    text: str  # after backslash escapes are removed
    pos: int  # offset in the filter text (words joined by single spaces)


def word_starts(words: Sequence[str]) -> list[int]:
    """Offset of each word in the filter text (the words joined by single spaces)."""
    return [0, *accumulate(len(w) + 1 for w in words)][:len(words)]


def tokenize(words: Sequence[str], starts: Sequence[int], first: int) -> list[Token]:
    """The tokens of words[first:], each placed in the filter text."""
    return [t for k in range(first, len(words)) for t in split_word(words[k], starts[k])]


def split_word(word: str, base: int) -> list[Token]:
    """ss's get_token_from_line: split on space/tab; a backslash keeps the next char."""
    tokens = []
    i, n = 0, len(word)
    while i < n:
        while i < n and word[i] in " \t":
            i += 1
        if i >= n:
            break
        start, chars = i, []
        while i < n and word[i] not in " \t":
            if word[i] == "\\":
                i += 1
                if i >= n:
                    break
            chars.append(word[i])
            i += 1
        text = "".join(chars)
        if text:  # a lone trailing backslash escapes nothing: no empty token
            tokens.append(Token(_KEYWORDS.get(text, VALUE), text, base + start))
    return tokens


_FILE_LINE_MAX = 1022  # with its newline; ss reads lines into 1024 bytes with fgets


def read_filter_file(path: str) -> list[str]:
    """The lines of an ss -F file as words ('-' reads stdin).

    Like ss: lines starting with '#' (or, through an old ss slip, '0') are
    skipped, and words inside a file never count as the leading `state`/
    `exclude` words, so such a line is escaped to stay an expression token.
    """
    try:
        if path == "-":
            data = sys.stdin.read()
        else:
            with open(path, encoding="utf-8", errors="surrogateescape") as f:
                data = f.read()
    except FileNotFoundError as exc:
        raise NotFoundError(f"filter file '{path}' does not exist") from exc
    except PermissionError as exc:
        raise PermissionDeniedError(f"filter file '{path}' is not readable") from exc
    except OSError as exc:
        raise NotFoundError(f"cannot read filter file '{path}': {exc.strerror}") from exc
    words = []
    for number, line in enumerate(re.findall(r"[^\n]*\n|[^\n]+\Z", data), 1):
        if len(line) > _FILE_LINE_MAX:
            raise FilterSyntaxError(f"line {number} of filter file '{path}' is longer "
                                    f"than the {_FILE_LINE_MAX - 1} characters ss accepts")
        line = line.removesuffix("\n")
        if line.startswith(("#", "0")):
            continue
        words.append("\\" + line if line in STATE_WORDS else line)
    return words


def with_file_words(words: Sequence[str], file_words: Sequence[str]) -> list[str]:
    """The command line's words, then a filter file's.

    `state X` / `exclude X` at the head of the file join the command line's
    leading state words, so a file holding `state close-wait` works (ss itself
    refuses state words in a file: docs/design.md lists this difference).
    """
    lifted: list[str] = []
    rest = list(file_words)
    while rest:
        parts = rest[0].split()
        pairs: list[str] = []
        while len(parts) >= 2 and parts[0] in STATE_WORDS:
            pairs, parts = [*pairs, *parts[:2]], parts[2:]
        if not pairs:
            break
        lifted += pairs
        if parts:
            rest[0] = " ".join(parts)
            break
        rest.pop(0)
    head = 0
    while head + 1 < len(words) and words[head] in STATE_WORDS:
        head += 2
    return [*words[:head], *lifted, *words[head:], *rest]
