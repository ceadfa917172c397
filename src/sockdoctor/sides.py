"""Which side of a connection a socket is, and the service it belongs to.

One rule for the exporter's `side`/`port` labels and `ls --json`'s `side`/
`service` fields: a socket whose local port is in its namespace's
net.ipv4.ip_local_port_range (ephemeral) and is not a listening port there
connected out (client side, its service is the peer's port); any other is
the server side of our own service (its service is our local port).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from .model import Snapshot, Socket, TcpState

DEFAULT_PORT_RANGE = (32768, 60999)  # the kernel's default ip_local_port_range
PORT_RANGE_SYSCTL = "net.ipv4.ip_local_port_range"


def port_range(sysctls: Mapping[str, str]) -> tuple[int, int]:
    """A namespace's ephemeral port range from its sysctls, or the kernel default."""
    return parse_port_range(sysctls.get(PORT_RANGE_SYSCTL))


def parse_port_range(value: str | None) -> tuple[int, int]:
    """The sysctl's text ("32768\t60999") as (low, high), or the kernel default."""
    try:
        lo, hi = (int(x) for x in (value or "").split())
    except ValueError:
        return DEFAULT_PORT_RANGE
    return (lo, hi) if 0 < lo <= hi <= 65535 else DEFAULT_PORT_RANGE


class Sides:
    """The side rule over one snapshot: its listening ports and port ranges, read once."""

    __slots__ = ("listening", "ranges")

    def __init__(self, snap: Snapshot, listeners: Sequence[Socket] | None = None) -> None:
        """`listeners`: the snapshot's LISTEN sockets when the caller has them already."""
        if listeners is None:
            listeners = [sk for sk in snap.sockets if sk.state == TcpState.LISTEN]
        self.listening = {(sk.netns, sk.local_port) for sk in listeners}
        self.ranges = {ns.inode: port_range(ns.sysctls) for ns in snap.namespaces}

    def is_client(self, netns: int, local_port: int) -> bool:
        lo, hi = self.ranges.get(netns, DEFAULT_PORT_RANGE)
        return lo <= local_port <= hi and (netns, local_port) not in self.listening

    def clients(self, sockets: Sequence[Socket]) -> list[bool]:
        """is_client of each socket: the hot loop of --json and the exporter, so written
        out with local names (a namespace's sockets come one after another)."""
        out: list[bool] = []
        append = out.append
        ranges, listening, default = self.ranges, self.listening, DEFAULT_PORT_RANGE
        last, (lo, hi) = None, default
        for sk in sockets:
            netns, port = sk.netns, sk.local_port
            if netns != last:
                last, (lo, hi) = netns, ranges.get(netns, default)
            append(lo <= port <= hi and (netns, port) not in listening)
        return out

    def of(self, sk: Socket) -> tuple[str, int]:
        """("server", our port) or ("client", the peer's port)."""
        if self.is_client(sk.netns, sk.local_port):
            return "client", sk.peer_port
        return "server", sk.local_port
