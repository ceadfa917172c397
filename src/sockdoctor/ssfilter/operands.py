"""Operands of conditions, read as ss reads them: addresses, prefixes, ports, devices.

Host names, service names and device names resolve where this process runs;
host names with characters no host name can have are not sent to DNS at all.
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass

from .. import ssfilter as _package  # resolve_host is looked up there, see below
from .cnumbers import get_unsigned, ipv4, strtol_int, strtoul

AF_INET, AF_INET6 = socket.AF_INET, socket.AF_INET6


class BadValue(Exception):
    """A value token that ss's lexer would refuse; the message is for the user."""


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
    v4 = ipv4(text)
    return None if v4 is None else Prefix(AF_INET, -1, v4 << 96)


def _netmask(text: str) -> int | None:
    """iproute2 get_netmask(): a number, or a dotted mask such as 255.255.0.0."""
    plen = get_unsigned(text)
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


_HOSTNAME = r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$"  # compiled (and cached by re) on first use


def resolve_host(name: str, fam: int) -> list[Prefix]:
    """Addresses of a host name, IPv4 first, as ss's gethostbyname2 calls order them.

    Names with characters no host name has are not looked up (ss would ask
    DNS and fail); tests replace sockdoctor.ssfilter.resolve_host to stay off
    the network, so the parser calls it through the package.
    """
    if not re.match(_HOSTNAME, name):
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


_NON_TCP = ("unix:", "link:", "netlink:", "vsock:")


def parse_hostcond(text: str, is_port: bool, fam: int = 0) -> HostCond:
    """ss's parse_hostcond() for TCP: '[v6]:port', 'addr/len:port', '*:port', ':port'.

    fam is the family an earlier 'inet:'/'inet6:' operand chose: in ss it sticks
    and applies to every later operand as well.
    """
    for prefix in _NON_TCP:
        if text.startswith(prefix):
            raise BadValue(f"'{prefix}' addresses never match TCP sockets")
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
            raise BadValue(f"'{text}' opens '[' without closing it")
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
    number = strtol_int(port)
    if number is not None:
        return number
    try:
        return socket.getservbyname(port, "tcp")
    except (OSError, ValueError):
        where = "" if port == token else f" in '{token}'"
        raise BadValue(f"'{port}'{where} is not a port number or a TCP service name") from None


def _parse_address(addr: str, fam: int, bracketed: bool) -> tuple[Prefix, ...]:
    prefix = parse_prefix(addr, fam)
    if prefix is not None:
        return (prefix,)
    found = _package.resolve_host(addr, fam)  # the package's name: the one tests replace
    if found:
        return tuple(found)
    if fam and parse_prefix(addr) is not None:
        version = "IPv4" if fam == AF_INET else "IPv6"
        raise BadValue(f"'{addr}' is not an {version} address, and an 'inet:' or 'inet6:' "
                       f"earlier in the filter allows only {version} from there on")
    hint = " (write IPv6 addresses in brackets, like [::1]:22)" if (
        ":" in addr and not bracketed) else ""
    raise BadValue(f"'{addr}' is not an address, a prefix or a known host name{hint}")


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
    value, end, overflow = strtoul(text)
    if end == 0 or end != len(text) or overflow or value > 0xFFFFFFFF:
        raise BadValue(f"'{text}' is not a network device of this namespace or an "
                       "interface index")
    return value
