"""C number parsing as iproute2 does it (strtol/strtoul with base 0, inet_aton-like v4).

ss reads ports, prefix lengths, device indexes and IPv4 addresses with these C
routines, so '0x50', '010' and '127.1' mean here what they mean to ss.
"""

from __future__ import annotations

_C_SPACE = " \t\n\v\f\r"
_ULONG = 1 << 64
_HEX = "0123456789abcdefABCDEF"


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


def strtoul(text: str) -> tuple[int, int, bool]:
    """C strtoul(text, &end, 0): (value, end index, overflowed); end 0 = no digits."""
    value, neg, end = _c_number(text)
    if value >= _ULONG:
        return _ULONG - 1, end, True
    return ((_ULONG - value) % _ULONG if neg else value), end, False


def strtol_int(text: str) -> int | None:
    """iproute2 get_integer(): the whole string is a C long within int range."""
    value, neg, end = _c_number(text)
    if end == 0 or end != len(text):
        return None
    value = -value if neg else value
    return value if -(1 << 31) <= value < (1 << 31) else None


def get_unsigned(text: str) -> int | None:
    """iproute2 get_unsigned(): a whole-string C unsigned long in unsigned int range."""
    if not text:
        return None
    value, end, overflow = strtoul(text)
    if end == 0 or end != len(text) or overflow or value > 0xFFFFFFFF:
        return None
    return value


def ipv4(text: str) -> int | None:
    """iproute2 get_addr_ipv4(): up to four parts, each C-number; '127.1' is 127.1.0.0."""
    parts = [0, 0, 0, 0]
    rest = text
    for i in range(4):
        value, end, _ = strtoul(rest)
        if value > 255 or end == 0:
            return None
        parts[i] = value
        if end == len(rest):
            return int.from_bytes(bytes(parts), "big")
        if i == 3 or rest[end] != ".":
            return None
        rest = rest[end + 1:]
    return None
