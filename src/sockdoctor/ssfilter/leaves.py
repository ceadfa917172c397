"""Single conditions compiled to closures over a Socket: one verdict, or both.

A paired closure answers with two bits, bit 0 for the kernel's verdict and
bit 1 for ss's own (evaluate.py says why); a boolean one gives ss's own.
Address conditions remember both verdicts per distinct address, since the
same few addresses recur over thousands of sockets.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterable

from ..model import Netns, Socket, TcpState
from .operands import HostCond, Prefix
from .tokens import GEQ, LEQ, SRC
from .tree import Addr, Autobound, Dev, Node, PortCmp

AF_INET, AF_INET6 = socket.AF_INET, socket.AF_INET6
BOTH = 3  # both verdicts say yes
_CACHE_LIMIT = 1 << 17  # distinct addresses remembered per condition

Pred = Callable[[Socket], int]
Bool = Callable[[Socket], bool]


def leaf_bool(node: Node, ranges: PortRanges) -> Bool:
    """ss's own verdict on one condition, as a plain boolean."""
    if isinstance(node, Addr) and not node.cond.any_address:
        pair = _addr_pair(node)
        return lambda sk: pair(sk) >= 2  # ss's own bit
    if isinstance(node, Autobound):
        return _autobound(ranges)
    return _LEAF_BOOL[type(node)](node)


def negated_leaf(node: Node) -> Bool | None:
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


def leaf_pair(node: Node, ranges: PortRanges) -> Pred:
    """Both verdicts on one condition, for the corners where they can differ."""
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
        in_range = _autobound(ranges)
        listen = TcpState.LISTEN
        return lambda sk: (sk.state != listen) | in_range(sk) << 1
    leaf = _LEAF_BOOL[type(node)](node)
    return lambda sk: BOTH if leaf(sk) else 0


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


def _autobound(ranges: PortRanges) -> Bool:
    """ss's half: the local port lies in the socket's namespace's ephemeral range."""
    of = ranges.of

    def in_range(sk: Socket) -> bool:
        low, high = of(sk.netns)
        return low <= sk.local_port <= high
    return in_range


_LEAF_BOOL: dict[type, Callable] = {
    Addr: _port_eq,
    PortCmp: lambda n: _port_cmp(n.side, n.op, n.port),
    Dev: _dev,
}


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


class PortRanges:
    """Each network namespace's ip_local_port_range, for `autobound` (ss's half).

    The rule, in order: the range the snapshot recorded for the socket's
    namespace (`learn`); for a namespace the snapshot lists without one (a
    file from an older sockdoctor, a namespace whose scan failed), the
    kernel's default 32768-60999, as sides.py and the doctor take it; for a
    socket of a namespace no snapshot named (a live trace, the pytest guard),
    the range of the namespace this process runs in, read once.
    """

    def __init__(self) -> None:
        self.recorded: dict[int, tuple[int, int]] = {}
        self._here: tuple[int, int] | None = None

    def learn(self, namespaces: Iterable[Netns]) -> None:
        """Take the ranges a snapshot recorded (Netns.sysctls); a later one wins."""
        from ..sides import port_range

        for ns in namespaces:
            self.recorded[ns.inode] = port_range(ns.sysctls)

    def of(self, netns: int) -> tuple[int, int]:
        found = self.recorded.get(netns)
        return found if found is not None else self.here()

    def here(self) -> tuple[int, int]:
        """This process's namespace's range (ss's fallback when unreadable: 1024-4999)."""
        if self._here is None:
            from ..linux.procfs import read_sysctls
            from ..sides import PORT_RANGE_SYSCTL

            text = read_sysctls((PORT_RANGE_SYSCTL,)).get(PORT_RANGE_SYSCTL, "")
            low, _, high = text.partition(" ")
            self._here = ((int(low), int(high)) if low.isdigit() and high.isdigit()
                          else (1024, 4999))
        return self._here
