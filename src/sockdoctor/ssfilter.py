"""ss-compatible filters: `state`/`exclude` words, then ss's filter expression.

The target is the `ss -Htan EXPR` of iproute2 6.1, oddities included, so that
anything a user learned with ss selects the same sockets here.

ss judges each socket twice: the kernel runs the filter compiled to inet_diag
bytecode, then ss walks the same tree in user space over what the kernel sent.
A socket is shown only when both say yes, and the two disagree in corners
(address families, ports truncated to 16 bits, `autobound`). So every condition
here answers with two bits, bit 0 for the kernel's verdict and bit 1 for ss's
own; `not` flips both, `and`/`or` combine them bitwise, and a socket matches
when both bits survive. A filter with `dev` has no bytecode (ss cannot compile
it), so only ss's own verdict counts there. Trees whose conditions cannot
disagree are compiled to plain booleans instead, which is faster.

Grammar (ss's yacc file): `and`/`or` have the same precedence and group to
the left, `a or b and c` is `(a or b) and c`; `not` binds to the next
condition; juxtaposition means `and`. Words are split again on spaces and tabs,
a backslash escapes the next character.

Where this deliberately differs from ss:
- `autobound`: the kernel's half asks whether the port was bound explicitly,
  which sock_diag does not report; every non-listener counts as not bound
  explicitly, so a client that bind()s a fixed port before connect() is
  judged differently. ss's half (port in ip_local_port_range) is exact, read
  in the namespace this process runs in.
- `fwmark`, `cgroup` and `unix:`/`link:`/`netlink:`/`vsock:` operands are
  refused with a clear error (ss accepts them and then lists nothing useful).
- device names and host names resolve where this process runs; host names
  with characters no host name can have are not sent to DNS at all.
- nesting deeper than 200 levels is refused.
"""

from __future__ import annotations

import re
import socket
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from itertools import accumulate
from typing import NoReturn, Protocol

from .errors import FilterSyntaxError, NotFoundError, PermissionDeniedError
from .model import Socket, TcpState

AF_INET, AF_INET6 = socket.AF_INET, socket.AF_INET6
BOTH = 3  # both verdicts say yes
_CACHE_LIMIT = 1 << 17  # distinct addresses remembered per condition
_MAX_DEPTH = 200  # nesting of '(' and 'not'


class Expr(Protocol):
    def match(self, sk: Socket) -> bool: ...


@dataclass
class ParsedFilter:
    states: int | None  # kernel state bit mask, None when no state word was given
    expr: Filter | None


# --- states -------------------------------------------------------------------

SS_ALL = (1 << 12) - 1  # ss's mask: bit 0 (its "unknown") up to CLOSING
SS_CONN = SS_ALL & ~((1 << TcpState.LISTEN) | (1 << TcpState.CLOSE)
                     | (1 << TcpState.TIME_WAIT) | (1 << TcpState.SYN_RECV))

_SS_STATE_NAMES: dict[str, int] = {
    "unknown": 1,
    "established": 1 << TcpState.ESTABLISHED,
    "syn-sent": 1 << TcpState.SYN_SENT,
    "syn-recv": 1 << TcpState.SYN_RECV,
    "syn-rcv": 1 << TcpState.SYN_RECV,
    "fin-wait-1": 1 << TcpState.FIN_WAIT1,
    "fin-wait-2": 1 << TcpState.FIN_WAIT2,
    "time-wait": 1 << TcpState.TIME_WAIT,
    "close": 1 << TcpState.CLOSE,
    "closed": 1 << TcpState.CLOSE,
    "unconnected": 1 << TcpState.CLOSE,
    "close-wait": 1 << TcpState.CLOSE_WAIT,
    "last-ack": 1 << TcpState.LAST_ACK,
    "listening": 1 << TcpState.LISTEN,
    "closing": 1 << TcpState.CLOSING,
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

_STATE_HELP = ("established, syn-sent, syn-recv, fin-wait-1, fin-wait-2, time-wait, closed, "
               "close-wait, last-ack, listening, closing, or a group: all, connected, "
               "synchronized, bucket, big")


def scan_state(name: str) -> int | None:
    """The mask ss gives a state name after `state`/`exclude` (any case), or None."""
    return _SS_STATE_NAMES.get(name.lower())


def states_from_names(names: Sequence[str]) -> int:
    """Mask for --state values: ss's names plus estab/listen/CLOSE_WAIT style spellings."""
    mask = 0
    for name in names:
        key = name.strip().lower().replace("_", "-")
        bits = _SS_STATE_NAMES.get(key, _STATE_ALIASES.get(key))
        if bits is None:
            raise FilterSyntaxError(f"'{name}' is not a TCP state; use one of {_STATE_HELP}")
        mask |= bits
    return mask


# --- filter files -------------------------------------------------------------

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
        words.append("\\" + line if line in _STATE_WORDS else line)
    return words


# --- tokens -------------------------------------------------------------------

_STATE_WORDS = ("state", "exclude", "excl")

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
_STARTS_CONDITION = {NOT, LPAREN, DST, SRC, DPORT, SPORT, DEV, FWMARK, CGROUP, AUTOBOUND}


@dataclass(frozen=True)
class Token:
    kind: str
    text: str  # after backslash escapes are removed
    pos: int  # offset in the filter text (words joined by single spaces)


def _split_word(word: str, base: int) -> list[Token]:
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
        tokens.append(Token(_KEYWORDS.get(text, VALUE), text, base + start))
    return tokens


# --- C number parsing, as ss does it --------------------------------------------

_C_SPACE = " \t\n\v\f\r"
_ULONG = 1 << 64


def _c_number(text: str) -> tuple[int, bool, int]:
    """Scan a C number like strtol/strtoul with base 0: (magnitude, negative, end).

    end is 0 when there are no digits; leading C white space and one sign are allowed.
    """
    i = 0
    while i < len(text) and text[i] in _C_SPACE:
        i += 1
    neg = text[i:i + 1] == "-"
    if text[i:i + 1] in ("+", "-"):
        i += 1
    base, digits = 10, "0123456789"
    if text[i:i + 2] in ("0x", "0X") and text[i + 2:i + 3] and text[i + 2] in _HEX:
        base, digits, i = 16, _HEX, i + 2
    elif text[i:i + 1] == "0":
        base, digits = 8, "01234567"
    start = i
    while i < len(text) and text[i] in digits:
        i += 1
    if i == start:
        return 0, False, 0
    return int(text[start:i], base), neg, i


_HEX = "0123456789abcdefABCDEF"


def _strtoul(text: str) -> tuple[int, int, bool]:
    """C strtoul(text, &end, 0): (value, end index, overflowed); end 0 = no digits."""
    value, neg, end = _c_number(text)
    if value >= _ULONG:
        return _ULONG - 1, end, True
    return ((_ULONG - value) % _ULONG if neg else value), end, False


def _strtol_int(text: str) -> int | None:
    """iproute2 get_integer(): the whole string is a C long within int range."""
    value, neg, end = _c_number(text)
    if end == 0 or end != len(text):
        return None
    value = -value if neg else value
    return value if -(1 << 31) <= value < (1 << 31) else None


def _get_unsigned(text: str) -> int | None:
    """iproute2 get_unsigned(): a whole-string C unsigned long in unsigned int range."""
    if not text:
        return None
    value, end, overflow = _strtoul(text)
    if end == 0 or end != len(text) or overflow or value > 0xFFFFFFFF:
        return None
    return value


def _ipv4(text: str) -> int | None:
    """iproute2 get_addr_ipv4(): up to four parts, each C-number; '127.1' is 127.1.0.0."""
    parts = [0, 0, 0, 0]
    rest = text
    for i in range(4):
        value, end, _ = _strtoul(rest)
        if value > 255 or end == 0:
            return None
        parts[i] = value
        if end == len(rest):
            return int.from_bytes(bytes(parts), "big")
        if i == 3 or rest[end] != ".":
            return None
        rest = rest[end + 1:]
    return None


# --- addresses ----------------------------------------------------------------

@dataclass(frozen=True)
class Prefix:
    """An address as ss stores it: v4 in the first 32 of 128 bits, rest zero."""

    family: int  # 0 (any), AF_INET, AF_INET6
    bits: int  # prefix length; 0 matches any address
    value: int  # 128-bit big-endian integer


def _get_addr(text: str, fam: int) -> Prefix | None:
    """iproute2 get_addr_1(): bits is -2 for 'default'/'any'/'all', else -1."""
    if text in ("default", "all", "any"):
        return Prefix(fam, -2, 0)
    if ":" in text:
        if fam not in (0, AF_INET6):
            return None
        try:
            raw = socket.inet_pton(AF_INET6, text)
        except (OSError, ValueError):
            return None
        return Prefix(AF_INET6, -1, int.from_bytes(raw, "big"))
    if fam not in (0, AF_INET):
        return None
    v4 = _ipv4(text)
    return None if v4 is None else Prefix(AF_INET, -1, v4 << 96)


def _netmask(text: str) -> int | None:
    """iproute2 get_netmask(): a number, or a dotted mask such as 255.255.0.0."""
    plen = _get_unsigned(text)
    if plen is not None:
        return plen
    addr = _get_addr(text, AF_INET)
    if addr is None or addr.family != AF_INET:
        return None
    host = ~(addr.value >> 96) & 0xFFFFFFFF
    if host & (host + 1):
        return None
    return 32 - host.bit_length()


def parse_prefix(text: str, fam: int = 0) -> Prefix | None:
    """iproute2 get_prefix_1(): address[/len or /mask]; None when it is not one."""
    addr_text, slash, mask_text = text.partition("/")
    addr = _get_addr(addr_text, fam)
    if addr is None:
        return None
    full = {AF_INET: 32, AF_INET6: 128}.get(addr.family, 0)
    if not slash:
        return Prefix(addr.family, 0 if addr.bits == -2 else full, addr.value)
    plen = None if addr.bits == -2 else _netmask(mask_text)
    if plen is None or plen > full:
        return None
    return Prefix(addr.family, plen, addr.value)


_HOSTNAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


def resolve_host(name: str, fam: int) -> list[Prefix]:
    """Addresses of a host name, IPv4 first, as ss's gethostbyname2 calls order them.

    Names with characters no host name has are not looked up (ss would ask
    DNS and fail); tests replace this function to stay off the network.
    """
    if not _HOSTNAME.match(name):
        return []
    found: list[Prefix] = []
    if fam in (0, AF_INET):
        try:
            for a in socket.gethostbyname_ex(name)[2]:
                found.append(Prefix(AF_INET, 32, int.from_bytes(socket.inet_aton(a)) << 96))
        except OSError:
            pass
    if fam in (0, AF_INET6):
        try:
            infos = socket.getaddrinfo(name, None, AF_INET6, socket.SOCK_STREAM)
        except OSError:
            infos = []
        for info in infos:
            raw = socket.inet_pton(AF_INET6, str(info[4][0]).split("%")[0])
            p = Prefix(AF_INET6, 128, int.from_bytes(raw, "big"))
            if p not in found:
                found.append(p)
    return found


@dataclass(frozen=True)
class HostCond:
    """A parsed `src`/`dst`/`sport =`/`dport =` operand (ss's struct aafilter)."""

    port: int = -1  # -1: any port
    prefixes: tuple[Prefix, ...] = ()  # empty: any address; several from a host name
    family: int = 0  # from 'inet:'/'inet6:' (here or earlier): ss then lists only that family

    @property
    def any_address(self) -> bool:
        return not self.prefixes or (self.prefixes[0].bits == 0 and self.prefixes[0].family == 0)


class _BadValue(Exception):
    """A value token that ss's lexer would refuse; the message is for the user."""


_NON_TCP = ("unix:", "link:", "netlink:", "vsock:")


def parse_hostcond(text: str, is_port: bool, fam: int = 0) -> HostCond:
    """ss's parse_hostcond() for TCP: '[v6]:port', 'addr/len:port', '*:port', ':port'.

    fam is the family an earlier 'inet:'/'inet6:' operand chose: in ss it sticks
    and applies to every later operand as well.
    """
    for prefix in _NON_TCP:
        if text.startswith(prefix):
            raise _BadValue(f"'{prefix}' addresses never match TCP sockets")
    if text.startswith("inet:"):
        fam, text = AF_INET, text[5:]
    elif text.startswith("inet6:"):
        fam, text = AF_INET6, text[6:]
    whole, addr, port = _split_hostport(text)
    if is_port:
        port = whole
    number = _parse_port(port, text) if port else -1
    prefixes: tuple[Prefix, ...] = ()
    if not is_port and addr and not addr.startswith("*"):
        prefixes = _parse_address(addr, fam, bracketed=text.startswith("["))
    return HostCond(number, prefixes, fam)


def _split_hostport(text: str) -> tuple[str, str, str | None]:
    """(operand without brackets, address part, port part or None) as ss splits them."""
    if text.startswith("["):
        inner, bracket, rest = text[1:].partition("]")
        if not bracket:
            raise _BadValue(f"'{text}' opens '[' without closing it")
        return inner, inner, rest
    if text.startswith("*"):
        return text, text, text[1:]
    slash = text.find("/")
    colon = text.rfind(":", slash if slash >= 0 else 0)
    if colon < 0:
        return text, text, None
    return text, text[:colon], text[colon:]


def _parse_port(port: str, token: str) -> int:
    port = port.removeprefix(":")
    if not port or port.startswith("*"):
        return -1
    number = _strtol_int(port)
    if number is not None:
        return number
    try:
        return socket.getservbyname(port, "tcp")
    except (OSError, ValueError):
        where = "" if port == token else f" in '{token}'"
        raise _BadValue(f"'{port}'{where} is not a port number or a TCP service name") from None


def _parse_address(addr: str, fam: int, bracketed: bool) -> tuple[Prefix, ...]:
    prefix = parse_prefix(addr, fam)
    if prefix is not None:
        return (prefix,)
    found = resolve_host(addr, fam)
    if found:
        return tuple(found)
    if fam and parse_prefix(addr) is not None:
        version = "IPv4" if fam == AF_INET else "IPv6"
        raise _BadValue(f"'{addr}' is not an {version} address, and an 'inet:' or 'inet6:' "
                        f"earlier in the filter allows only {version} from there on")
    hint = " (write IPv6 addresses in brackets, like [::1]:22)" if (
        ":" in addr and not bracketed) else ""
    raise _BadValue(f"'{addr}' is not an address, a prefix or a known host name{hint}")


def parse_device(text: str) -> int:
    """ss's parse_devcond(): a name in this namespace, 'ifN', or a number."""
    try:
        return socket.if_nametoindex(text)
    except (OSError, ValueError, UnicodeError):
        pass
    m = re.match(r"if[ \t\n\v\f\r]*([+-]?)(\d+)", text)
    if m:
        index = int(m.group(2)) % (1 << 32)
        index = (-index) % (1 << 32) if m.group(1) == "-" else index
        if index:
            return index
    value, end, overflow = _strtoul(text)
    if end == 0 or end != len(text) or overflow or value > 0xFFFFFFFF:
        raise _BadValue(f"'{text}' is not a network device of this namespace or an "
                        "interface index")
    return value


# --- the tree -----------------------------------------------------------------

@dataclass(frozen=True)
class Addr:
    """`src X`, `dst X`, `sport = X`, `dport = X` (ss's SCOND/DCOND)."""

    side: str  # "src" or "dst"
    cond: HostCond
    text: str  # the operand as written
    is_port: bool = False

    def render(self) -> str:
        if self.is_port:
            return f"{'sport' if self.side == SRC else 'dport'} = {_escape(self.text)}"
        return f"{self.side} {_escape(self.text)}"


@dataclass(frozen=True)
class PortCmp:
    """`sport >= N` style comparisons; `>` and `<` are ss's NOT of `<=` and `>=`."""

    side: str
    op: str  # GEQ or LEQ
    port: int
    text: str

    def render(self) -> str:
        return f"{'sport' if self.side == SRC else 'dport'} {self.op} {_escape(self.text)}"


@dataclass(frozen=True)
class Dev:
    ifindex: int
    text: str

    def render(self) -> str:
        return f"dev = {_escape(self.text)}"


@dataclass(frozen=True)
class Autobound:
    def render(self) -> str:
        return "autobound"


@dataclass(frozen=True)
class Not:
    item: Node

    def render(self) -> str:
        return f"! {_group(self.item)}"


@dataclass(frozen=True)
class And:
    items: tuple[Node, ...]

    def render(self) -> str:
        return " & ".join(_group(i) for i in self.items)


@dataclass(frozen=True)
class Or:
    items: tuple[Node, ...]

    def render(self) -> str:
        return " | ".join(_group(i) for i in self.items)


Node = Addr | PortCmp | Dev | Autobound | Not | And | Or


def _group(node: Node) -> str:
    text = node.render()
    return f"( {text} )" if isinstance(node, And | Or) else text


def _escape(text: str) -> str:
    return re.sub(r"([\\ \t])", r"\\\1", text)


def walk(node: Node) -> Iterator[Node]:
    yield node
    if isinstance(node, Not):
        yield from walk(node.item)
    elif isinstance(node, And | Or):
        for item in node.items:
            yield from walk(item)


# --- parsing ------------------------------------------------------------------

def parse(words: Sequence[str]) -> ParsedFilter:
    """Parse ss filter words: leading `state`/`exclude` words, then an expression."""
    words = list(words)
    text = " ".join(words)
    starts = [0, *accumulate(len(w) + 1 for w in words)][:len(words)]
    states, i = _parse_states(words, text, starts)
    tokens = [t for k in range(i, len(words)) for t in _split_word(words[k], starts[k])]
    if not tokens:
        return ParsedFilter(states, None)
    tree, family = _Parser(tokens, text).run()
    return ParsedFilter(states, Filter(tree, family))


def _parse_states(words: list[str], text: str, starts: list[int]) -> tuple[int | None, int]:
    mask, seen, i = SS_ALL, False, 0
    while i < len(words) and words[i] in _STATE_WORDS:
        if i + 1 >= len(words):
            raise FilterSyntaxError(f"expected a state name after '{words[i]}' but the filter "
                                    "ended", text, len(text))
        bits = scan_state(words[i + 1])
        if bits is None:
            raise FilterSyntaxError(f"'{words[i + 1]}' is not a state name; use one of "
                                    f"{_STATE_HELP}", text, starts[i + 1])
        if words[i] == "state":
            mask = (mask if seen else 0) | bits
        else:
            mask &= ~bits
        seen, i = True, i + 2
    if not seen:
        return None, i
    # ss keeps its default set (connected, no TIME-WAIT/SYN-RECV) when nothing is left
    return (mask or SS_CONN), i


_OPERAND = {SRC: "an address", DST: "an address", SPORT: "a port", DPORT: "a port",
            DEV: "a device"}


class _Parser:
    """Recursive descent over ss's grammar (one precedence level, left to right)."""

    def __init__(self, tokens: list[Token], text: str) -> None:
        self.tokens, self.text, self.i = tokens, text, 0
        self.family = 0  # from the latest 'inet:'/'inet6:' operand; ss keeps it for the rest

    def run(self) -> tuple[Node, int]:
        tree = self.exprlist(0, None)
        tok = self.peek()
        if tok is not None:
            if tok.kind == RPAREN:
                self.fail("found ')' without a matching '('", tok)
            if tok.text in _STATE_WORDS:
                self.unexpected_start(tok, None)
            self.fail(f"expected 'and', 'or' or another condition but found '{tok.text}'", tok)
        return tree, self.family

    def peek(self) -> Token | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self) -> Token:
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def fail(self, message: str, tok: Token | None) -> NoReturn:
        raise FilterSyntaxError(message, self.text, len(self.text) if tok is None else tok.pos)

    def found(self, tok: Token | None) -> str:
        return "the filter ended" if tok is None else f"found '{tok.text}'"

    def exprlist(self, depth: int, after: Token | None) -> Node:
        items = [self.expr(depth, after)]
        op = None
        while (tok := self.peek()) is not None:
            if tok.kind in (AND, OR):
                self.take()
                nxt, after = tok.kind, tok
            elif tok.kind in _STARTS_CONDITION:
                nxt, after = AND, None
            else:
                break
            right = self.expr(depth, after)
            if op is not None and nxt != op:
                items = [(And if op == AND else Or)(tuple(items))]
            op = nxt
            items.append(right)
        if op is None:
            return items[0]
        return (And if op == AND else Or)(tuple(items))

    def expr(self, depth: int, after: Token | None) -> Node:
        if depth > _MAX_DEPTH:
            self.fail("the filter is nested too deeply", self.peek())
        tok = self.peek()
        if tok is None or tok.kind not in _STARTS_CONDITION:
            self.unexpected_start(tok, after)
        tok = self.take()
        if tok.kind == LPAREN:
            inner = self.exprlist(depth + 1, tok)
            close = self.peek()
            if close is None or close.kind != RPAREN:
                what = "but the filter ended" if close is None else \
                    f"or another condition but found '{close.text}'"
                self.fail(f"expected ')' {what}", close)
            self.take()
            return inner
        if tok.kind == NOT:
            return Not(self.expr(depth + 1, tok))
        if tok.kind == AUTOBOUND:
            return Autobound()
        if tok.kind in (FWMARK, CGROUP):
            self.fail(f"'{tok.text}' conditions are not supported by sockdoctor", tok)
        return self.condition(tok)

    def unexpected_start(self, tok: Token | None, after: Token | None) -> NoReturn:
        if tok is not None and tok.text in _STATE_WORDS:
            self.fail(f"'{tok.text}' must come first, as a word of its own, before any "
                      "condition", tok)
        if tok is not None and tok.kind == RPAREN and after is None:
            self.fail("found ')' without a matching '('", tok)
        if tok is not None and tok.kind == RPAREN and after.kind == LPAREN:
            self.fail("expected a condition inside '( )' but found ')'", tok)
        where = f" after '{after.text}'" if after is not None else ""
        self.fail(f"expected a condition{where} but {self.found(tok)}", tok)

    def condition(self, kw: Token) -> Node:
        op_tok = self.peek()
        op = op_tok.kind if op_tok is not None and op_tok.kind in (
            EQ, NEQ, GEQ, LEQ, GT, LT) else None
        allowed = {SRC: (EQ,), DST: (EQ,), DEV: (EQ, NEQ)}.get(kw.kind,
                                                               (EQ, NEQ, GEQ, LEQ, GT, LT))
        if op is not None:
            if op not in allowed:
                hint = f"; write 'not {kw.text} ...' instead" if op == NEQ else ""
                self.fail(f"'{op_tok.text}' cannot follow '{kw.text}'{hint}", op_tok)
            self.take()
        value = self.peek()
        if value is None or value.kind != VALUE:
            spelled = f"{kw.text} {op_tok.text}" if op is not None else kw.text
            self.fail(f"expected {_OPERAND[kw.kind]} after '{spelled}' but "
                      f"{self.found(value)}", value)
        self.take()
        try:
            return self.build(kw.kind, op, value.text)
        except _BadValue as exc:
            message = str(exc)
        raise FilterSyntaxError(message, self.text, value.pos)

    def build(self, kind: str, op: str | None, text: str) -> Node:
        if kind == DEV:
            node: Node = Dev(parse_device(text), text)
            return Not(node) if op == NEQ else node
        is_port = kind in (SPORT, DPORT)
        cond = parse_hostcond(text, is_port, self.family)
        if cond.family:
            self.family = cond.family
        side = SRC if kind in (SRC, SPORT) else DST
        if op in (None, EQ):
            return Addr(side, cond, text, is_port)
        if op == NEQ:
            return Not(Addr(side, cond, text, is_port))
        if op in (GEQ, LEQ):
            return PortCmp(side, op, cond.port, text)
        return Not(PortCmp(side, LEQ if op == GT else GEQ, cond.port, text))


# --- compiling ----------------------------------------------------------------

Pred = Callable[[Socket], int]
Bool = Callable[[Socket], bool]


class Filter:
    """A compiled expression; `match(sk)` says whether `ss` would list the socket."""

    def __init__(self, tree: Node, family: int = 0) -> None:
        self.tree = tree
        self.family = family
        # without bytecode (a `dev` anywhere) ss's own verdict is the only one
        self.kernel = not any(isinstance(n, Dev) for n in walk(tree))
        exact: set[int] = set()
        self.exact = not self.kernel or _mark_exact(tree, exact)
        if self.exact:
            pred = _compile_bool(tree)
        else:
            paired = _compile_pair(tree, exact)
            pred = lambda sk: paired(sk) == BOTH  # noqa: E731
        if family:
            inner = pred
            pred = lambda sk: sk.family == family and inner(sk)  # noqa: E731
        self.match: Bool = pred  # type: ignore[assignment]

    def __str__(self) -> str:
        return self.tree.render()

    def __repr__(self) -> str:
        return f"Filter({self.tree.render()!r})"


def _mark_exact(node: Node, exact: set[int]) -> bool:
    """Collect the ids of subtrees on which the kernel and ss cannot disagree."""
    if isinstance(node, Not):
        ok = _mark_exact(node.item, exact)
    elif isinstance(node, And | Or):
        ok = all([_mark_exact(i, exact) for i in node.items])
    else:
        ok = _exact(node)
    if ok:
        exact.add(id(node))
    return ok


def _exact(node: Node) -> bool:
    """Conditions on which the kernel and ss can never disagree."""
    if isinstance(node, Addr):
        return node.cond.any_address
    if isinstance(node, PortCmp):
        return 0 <= node.port <= 0xFFFF
    return not isinstance(node, Autobound)


def _compile_bool(node: Node) -> Bool:
    """ss's own verdict as a plain boolean (used when the kernel cannot differ)."""
    if isinstance(node, Not):
        negated = _negated_leaf(node.item)
        if negated is not None:
            return negated
        inner = _compile_bool(node.item)
        return lambda sk: not inner(sk)
    if isinstance(node, And | Or):
        parts = [_compile_bool(i) for i in node.items]
        return _all(parts) if isinstance(node, And) else _any(parts)
    if isinstance(node, Addr) and not node.cond.any_address:
        pair = _addr_pair(node)
        return lambda sk: pair(sk) >= 2  # ss's own bit
    return _LEAF_BOOL[type(node)](node)


def _all(parts: list[Bool]) -> Bool:
    if len(parts) == 2:
        a, b = parts
        return lambda sk: a(sk) and b(sk)
    if len(parts) == 3:
        a, b, c = parts
        return lambda sk: a(sk) and b(sk) and c(sk)

    def conj(sk: Socket) -> bool:  # a loop: all() over a generator is slower
        for p in parts:  # noqa: SIM110
            if not p(sk):
                return False
        return True
    return conj


def _any(parts: list[Bool]) -> Bool:
    if len(parts) == 2:
        a, b = parts
        return lambda sk: a(sk) or b(sk)
    if len(parts) == 3:
        a, b, c = parts
        return lambda sk: a(sk) or b(sk) or c(sk)

    def disj(sk: Socket) -> bool:
        for p in parts:  # noqa: SIM110
            if p(sk):
                return True
        return False
    return disj


def _negated_leaf(node: Node) -> Bool | None:
    """`not` folded into a port or device comparison: one call instead of two."""
    if isinstance(node, PortCmp):
        limit = node.port
        if node.op == GEQ:
            return _port_cmp(node.side, LEQ, limit - 1)
        return _port_cmp(node.side, GEQ, limit + 1)
    if isinstance(node, Dev):
        index = node.ifindex
        return lambda sk: sk.ifindex != index
    if isinstance(node, Addr) and node.cond.any_address and node.cond.port != -1:
        want = node.cond.port
        if node.side == SRC:
            return lambda sk: sk.local_port != want
        return lambda sk: sk.peer_port != want
    return None


def _port_eq(node: Addr) -> Bool:
    want = node.cond.port
    if want == -1:
        return lambda sk: True
    if node.side == SRC:
        return lambda sk: sk.local_port == want
    return lambda sk: sk.peer_port == want


def _port_cmp(side: str, op: str, limit: int) -> Bool:
    if side == SRC:
        if op == GEQ:
            return lambda sk: sk.local_port >= limit
        return lambda sk: sk.local_port <= limit
    if op == GEQ:
        return lambda sk: sk.peer_port >= limit
    return lambda sk: sk.peer_port <= limit


def _dev(node: Dev) -> Bool:
    index = node.ifindex
    return lambda sk: sk.ifindex == index


def _autobound(_node: Autobound) -> Bool:
    low, high = ephemeral_range()
    return lambda sk: low <= sk.local_port <= high


_LEAF_BOOL: dict[type, Callable] = {
    Addr: _port_eq,
    PortCmp: lambda n: _port_cmp(n.side, n.op, n.port),
    Dev: _dev,
    Autobound: _autobound,
}


def _compile_pair(node: Node, exact: set[int]) -> Pred:
    """Both verdicts at once: bit 0 the kernel's, bit 1 ss's own."""
    if id(node) in exact:
        same = _compile_bool(node)
        return lambda sk: BOTH if same(sk) else 0
    if isinstance(node, Not):
        inner = _compile_pair(node.item, exact)
        return lambda sk: inner(sk) ^ BOTH
    if isinstance(node, And):
        parts = [_compile_pair(i, exact) for i in node.items]
        if len(parts) == 2:
            a, b = parts
            return lambda sk: (r := a(sk)) and r & b(sk)

        def conj(sk: Socket) -> int:
            r = BOTH
            for p in parts:
                r &= p(sk)
                if not r:
                    break
            return r
        return conj
    if isinstance(node, Or):
        parts = [_compile_pair(i, exact) for i in node.items]
        if len(parts) == 2:
            a, b = parts
            return lambda sk: BOTH if (r := a(sk)) == BOTH else r | b(sk)

        def disj(sk: Socket) -> int:
            r = 0
            for p in parts:
                r |= p(sk)
                if r == BOTH:
                    break
            return r
        return disj
    return _leaf_pair(node)


def _leaf_pair(node: Node) -> Pred:
    if isinstance(node, Addr) and not node.cond.any_address:
        return _addr_pair(node)
    if isinstance(node, PortCmp):
        # the bytecode holds the port in 16 bits, ss compares full ints
        kernel = _port_cmp(node.side, node.op, node.port & 0xFFFF)
        own = _port_cmp(node.side, node.op, node.port)
        return lambda sk: kernel(sk) | own(sk) << 1
    if isinstance(node, Autobound):
        # The kernel asks "was the port not bound explicitly?" and sock_diag does
        # not tell; taking every non-listener as not explicitly bound is right
        # except for clients that bind() a fixed port before connect().
        in_range = _autobound(node)
        listen = TcpState.LISTEN
        return lambda sk: (sk.state != listen) | in_range(sk) << 1
    leaf = _LEAF_BOOL[type(node)](node)
    return lambda sk: BOTH if leaf(sk) else 0


def _addr_pair(node: Addr) -> Pred:
    """Address (and port) condition with a per-address memo of both verdicts."""
    want = node.cond.port
    cache: dict[str, int] = {}
    get = cache.get
    verdicts = _address_verdicts(node.cond)

    def miss(address: str) -> int:
        if len(cache) >= _CACHE_LIMIT:
            cache.clear()
        r = cache[address] = verdicts(address)
        return r

    local = node.side == SRC

    def addr_only(sk: Socket) -> int:
        address = sk.local_addr if local else sk.peer_addr
        r = get(address)
        return miss(address) if r is None else r

    def with_port(sk: Socket) -> int:
        if (sk.local_port if local else sk.peer_port) != want:
            return 0
        address = sk.local_addr if local else sk.peer_addr
        r = get(address)
        return miss(address) if r is None else r

    return addr_only if want == -1 else with_port


def _address_verdicts(cond: HostCond) -> Callable[[str], int]:
    """Both verdicts for one socket address (a string as inet_ntop writes it)."""
    head, chain = cond.prefixes[0], cond.prefixes
    if len(chain) == 1:
        return _single_prefix_verdicts(head)

    def verdicts(address: str) -> int:
        family, value, mapped = _address_value(address)
        kernel = _kernel_addr_match(head, family, value, mapped)
        # ss itself: any address of the chain, compared as raw bits whatever the family
        own = False
        for p in chain:
            if _prefix_match(value, p) or (p.family == AF_INET and mapped is not None
                                           and _prefix_match(mapped, p)):
                own = True
                break
        return kernel | own << 1
    return verdicts


def _single_prefix_verdicts(p: Prefix) -> Callable[[str], int]:
    """The common case, inlined: this runs once per distinct address."""
    shift, want, fam = 128 - p.bits, p.value >> (128 - p.bits), p.family
    pton, v4_filter = socket.inet_pton, p.family == AF_INET

    def verdicts(address: str) -> int:
        if ":" not in address:
            hit = (int.from_bytes(pton(AF_INET, address)) << 96) >> shift == want
            if fam == AF_INET6:
                return hit << 1  # the kernel refuses the family, ss compares raw bits
            return BOTH if hit else 0
        value = int.from_bytes(pton(AF_INET6, address))
        own = value >> shift == want
        mapped_hit = (v4_filter and value >> 32 == 0xFFFF
                      and ((value & 0xFFFFFFFF) << 96) >> shift == want)
        own = own or mapped_hit
        kernel = mapped_hit if v4_filter else own
        return kernel | own << 1
    return verdicts


def _kernel_addr_match(p: Prefix, family: int, value: int, mapped: int | None) -> bool:
    """inet_diag_bc_run's host condition (the bytecode holds only the first address)."""
    if p.family and p.family != family:
        return p.family == AF_INET and mapped is not None and _prefix_match(mapped, p)
    return p.bits == 0 or _prefix_match(value, p)


def _prefix_match(value: int, p: Prefix) -> bool:
    return (value ^ p.value) >> (128 - p.bits) == 0


def _address_value(address: str) -> tuple[int, int, int | None]:
    """(family, 128-bit value, the v4 part of a v4-mapped address or None)."""
    if ":" in address:
        value = int.from_bytes(socket.inet_pton(AF_INET6, address))
        mapped = (value & 0xFFFFFFFF) << 96 if value >> 32 == 0xFFFF else None
        return AF_INET6, value, mapped
    return AF_INET, int.from_bytes(socket.inet_pton(AF_INET, address)) << 96, None


_ephemeral: tuple[int, int] | None = None


def ephemeral_range() -> tuple[int, int]:
    """ip_local_port_range of this namespace, read once (ss's fallback: 1024-4999)."""
    global _ephemeral
    if _ephemeral is None:
        try:
            with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
                low, high = (int(x) for x in f.read().split()[:2])
            _ephemeral = (low, high)
        except (OSError, ValueError):
            _ephemeral = (1024, 4999)
    return _ephemeral
