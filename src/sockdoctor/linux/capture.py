"""Raw TCP on the wire: send forged segments, capture one socket's answers.

Also the look-ups this needs: which interface a peer is reached through (the
one to capture on) and its index (for link-local IPv6). All of it works in
the calling thread's network namespace and needs CAP_NET_RAW there.

IPv6 packets go out through an IPPROTO_RAW socket, which Linux treats as
"header included" for AF_INET6 just as for AF_INET. An IPPROTO_TCP raw socket
would have the kernel build the IPv6 header, but the kernel then takes the
source address from bind() or IPV6_PKTINFO and refuses one that is not local
(short of IPV6_FREEBIND or IPV6_TRANSPARENT), while a provocation must come
from the peer's address. Writing the 40-byte header ourselves is less code
and treats both families alike.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import random
import select
import socket
import struct
import time

from ..errors import PermissionDeniedError
from . import sockdiag
from .tcpseg import IPPROTO_TCP, TH_ACK, TH_RST, TH_SYN, PacketError, Segment, build, parse

ETH_P_ALL, ETH_P_IP, ETH_P_IPV6 = 0x0003, 0x0800, 0x86DD
SO_ATTACH_FILTER = 26


# --- sending ------------------------------------------------------------------

def _raw_socket(family: int, kind: int, proto: int) -> socket.socket:
    try:
        return socket.socket(family, kind, proto)
    except PermissionError as exc:
        raise PermissionDeniedError(
            "forging TCP segments needs CAP_NET_RAW in the socket's network namespace "
            "(run sockdoctor as root)") from exc


class RawSender:
    """Sends whole IP packets (our own header) through an IPPROTO_RAW socket."""

    def __init__(self, family: int) -> None:
        self.family = family
        self.sock = _raw_socket(family, socket.SOCK_RAW, socket.IPPROTO_RAW)

    def send(self, seg: Segment, scope_id: int = 0) -> None:
        """scope_id: the interface index a link-local IPv6 destination needs."""
        if self.family == socket.AF_INET6:
            scope = scope_id if ipaddress.IPv6Address(seg.dst).is_link_local else 0
            self.sock.sendto(build(seg), (seg.dst, 0, 0, scope))
        else:
            self.sock.sendto(build(seg, random.getrandbits(16)), (seg.dst, 0))

    def close(self) -> None:
        self.sock.close()


# --- capturing ----------------------------------------------------------------

BPF_LD_W, BPF_LD_H, BPF_LD_B = 0x20, 0x28, 0x30  # absolute loads
BPF_LDX_MSH, BPF_LD_H_IND = 0xB1, 0x48  # x = 4*([k]&0xf); a = half at [x+k]
BPF_JEQ, BPF_RET = 0x15, 0x06
BPF_ACCEPT = 0x40000
SKF_AD_PROTOCOL = 0xFFFFF000  # SKF_AD_OFF + 0: the skb's EtherType, host order


def bpf_program(src: str, dst: str, sport: int, dport: int) -> list[tuple[int, int, int, int]]:
    """Classic BPF that keeps only TCP from src:sport to dst:dport.

    Offsets count from the IP header: a SOCK_DGRAM packet socket hands the
    filter the packet without its link-layer header (lo and veth alike); the
    first test reads the EtherType from the skb, since an ETH_P_ALL socket
    gets every protocol. IPv6 extension headers are not followed here; they
    are rare on TCP and the Python-side check is the one that decides.
    """
    if ":" in src:
        steps = [(BPF_LD_H, SKF_AD_PROTOCOL, ETH_P_IPV6), (BPF_LD_B, 6, IPPROTO_TCP)]
        steps += _word_steps(8, socket.inet_pton(socket.AF_INET6, src))
        steps += _word_steps(24, socket.inet_pton(socket.AF_INET6, dst))
        steps += [(BPF_LD_H, 40, sport), (BPF_LD_H, 42, dport)]
    else:
        steps = [(BPF_LD_H, SKF_AD_PROTOCOL, ETH_P_IP), (BPF_LD_B, 9, IPPROTO_TCP)]
        steps += _word_steps(12, socket.inet_pton(socket.AF_INET, src))
        steps += _word_steps(16, socket.inet_pton(socket.AF_INET, dst))
        steps += [(BPF_LDX_MSH, 0, None), (BPF_LD_H_IND, 0, sport), (BPF_LD_H_IND, 2, dport)]
    return _assemble(steps)


def _word_steps(offset: int, raw: bytes) -> list[tuple[int, int, int | None]]:
    return [(BPF_LD_W, offset + i, int.from_bytes(raw[i:i + 4], "big"))
            for i in range(0, len(raw), 4)]


def _assemble(steps: list[tuple[int, int, int | None]]) -> list[tuple[int, int, int, int]]:
    """Each step loads, then (if it has a value) jumps to the reject when unequal."""
    length = sum(1 if value is None else 2 for _, _, value in steps)
    reject = length + 1
    prog: list[tuple[int, int, int, int]] = []
    for code, k, value in steps:
        prog.append((code, 0, 0, k))
        if value is not None:
            prog.append((BPF_JEQ, 0, reject - len(prog) - 1, value))
    prog += [(BPF_RET, 0, 0, BPF_ACCEPT), (BPF_RET, 0, 0, 0)]
    return prog


def attach_filter(sock: socket.socket, prog: list[tuple[int, int, int, int]]) -> None:
    code = b"".join(struct.pack("=HBBI", *insn) for insn in prog)
    buf = ctypes.create_string_buffer(code, len(code))
    fprog = struct.pack("HL", len(prog), ctypes.addressof(buf))  # struct sock_fprog
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


class Capture:
    """Segments one socket sends towards its peer, read off one interface (or all).

    Reusable: target() swaps the filter for another 4-tuple. Opening and
    closing a packet socket each wait for an RCU grace period in the kernel
    (milliseconds), which dominates the cost of a kill when done per socket.
    """

    def __init__(self, ifname: str | None) -> None:
        self.ifname = ifname
        self.local: tuple[str, int] = ("0.0.0.0", 0)
        self.peer: tuple[str, int] = ("0.0.0.0", 0)
        # ETH_P_ALL: packets a host sends reach only taps registered for every
        # protocol (dev_queue_xmit_nit); an ETH_P_IP socket sees arrivals only.
        # With an interface, open with protocol 0 (receiving nothing) and bind
        # once the filter is in place: no unfiltered burst, no re-registration.
        proto = 0 if ifname else socket.htons(ETH_P_ALL)
        self.sock = _raw_socket(socket.AF_PACKET, socket.SOCK_DGRAM, proto)
        try:
            attach_filter(self.sock, [(BPF_RET, 0, 0, 0)])
            if ifname:
                self.sock.bind((ifname, ETH_P_ALL))
            self.sock.setblocking(False)
        except OSError:
            self.sock.close()
            raise

    def target(self, local: tuple[str, int], peer: tuple[str, int]) -> None:
        """Capture local -> peer from now on (and nothing queued before)."""
        self.local, self.peer = local, peer
        attach_filter(self.sock, bpf_program(local[0], peer[0], local[1], peer[1]))
        self.drain()

    def drain(self) -> None:
        """Forget what arrived so far: only answers to what we send next count."""
        with contextlib.suppress(BlockingIOError):
            while True:
                self.sock.recv(65536)

    def next_ack(self, timeout: float) -> Segment | None:
        """The next ACK-bearing segment local -> peer, or None after timeout seconds."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([self.sock], [], [], left)
            if not ready:
                break
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                continue
            seg = answer_in(data, self.local, self.peer)
            if seg is not None:
                return seg
        return None

    def close(self) -> None:
        self.sock.close()


def answer_in(data: bytes, local: tuple[str, int], peer: tuple[str, int]) -> Segment | None:
    """The segment in a captured packet if local sent it to peer and it carries an ACK.

    Any such segment will do, not only the answer to our provocation: each
    one carries the socket's current rcv_nxt. SYN and RST segments do not.
    """
    try:
        seg = parse(data)
    except PacketError:
        return None
    if (seg.sport, seg.dport) != (local[1], peer[1]):
        return None
    if not (_same(seg.src, local[0]) and _same(seg.dst, peer[0])):
        return None
    if not seg.flags & TH_ACK or seg.flags & (TH_SYN | TH_RST):
        return None
    return seg


def _same(a: str, b: str) -> bool:
    return ipaddress.ip_address(a) == ipaddress.ip_address(b)


# --- interface and route look-ups ---------------------------------------------

RTM_NEWROUTE, RTM_GETROUTE = 24, 26
RTA_DST, RTA_SRC, RTA_OIF = 1, 2, 4
RTMSG = struct.Struct("=BBBBBBBBI")


def interface_index(ifname: str | None) -> int:
    """The index of interface `ifname`; 0 for none or an unknown name."""
    if not ifname:
        return 0
    try:
        return socket.if_nametoindex(ifname)
    except OSError:
        return 0


def route_interface(dst: str, src: str) -> str | None:
    """The interface the kernel would send dst-bound packets from src out of.

    One RTM_GETROUTE (what `ip route get DST from SRC` asks); "lo" when dst is
    an address of this namespace. None when there is no route.
    """
    family = socket.AF_INET6 if ":" in dst else socket.AF_INET
    raw_dst, raw_src = socket.inet_pton(family, dst), socket.inet_pton(family, src)
    bits = len(raw_dst) * 8
    body = (RTMSG.pack(family, bits, bits, 0, 0, 0, 0, 0, 0)
            + _rtattr(RTA_DST, raw_dst) + _rtattr(RTA_SRC, raw_src))
    msg = sockdiag.NLMSGHDR.pack(sockdiag.NLMSG_HDRLEN + len(body), RTM_GETROUTE,
                                 sockdiag.NLM_F_REQUEST, 1, 0) + body
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as nl:
        nl.settimeout(2.0)
        nl.send(msg)
        data = nl.recv(65536)
    oif = parse_route_reply(data)
    if oif is None:
        return None
    try:
        return socket.if_indextoname(oif)
    except OSError:
        return None


def _rtattr(kind: int, payload: bytes) -> bytes:
    attr = sockdiag.RTATTR.pack(4 + len(payload), kind) + payload
    return attr + b"\0" * (-len(attr) % 4)


def parse_route_reply(data: bytes) -> int | None:
    """RTA_OIF of the first RTM_NEWROUTE message, None for an error reply."""
    if len(data) < sockdiag.NLMSG_HDRLEN:
        return None
    length, msg_type, _, _, _ = sockdiag.NLMSGHDR.unpack_from(data)
    if msg_type != RTM_NEWROUTE or length > len(data):
        return None
    start = sockdiag.NLMSG_HDRLEN + RTMSG.size
    try:
        for kind, value in sockdiag.iter_attrs(data, start, length):
            if kind == RTA_OIF and len(value) >= 4:
                return int.from_bytes(value[:4], "little")
    except sockdiag.NetlinkParseError:
        return None
    return None
