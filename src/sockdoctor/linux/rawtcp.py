"""Forged TCP segments (IPv4 and IPv6) and the `rst` kill method built on them.

For when nothing gentler works: the kernel lacks SOCK_DESTROY, no process owns
the socket, or the socket to end is the far end of a connection. The method
never guesses a sequence number:

1. Send the socket a segment it must answer, seemingly from its peer: a SYN
   (RFC 5961 4.2: a synchronized socket answers any SYN with a "challenge
   ACK") or an ACK far outside its window (answered with a duplicate ACK).
2. Capture that answer on its way out (an AF_PACKET socket sees outgoing
   packets too): its ACK field is the socket's rcv_nxt, its end its snd_nxt.
3. Send the socket an RST with seq = rcv_nxt, the one value RFC 5961 3.2 makes
   it accept; once it is gone, send the peer an RST with seq = snd_nxt so it
   learns at once rather than on its next send.
4. Ask sock_diag whether the 4-tuple still exists.

Everything happens in the calling thread's network namespace: call rst_kill()
through netns.run_in() (or rst_kill_in()). It needs CAP_NET_RAW there.

IPv6 packets go out through an IPPROTO_RAW socket, which Linux treats as
"header included" for AF_INET6 just as for AF_INET. An IPPROTO_TCP raw socket
would have the kernel build the IPv6 header, but the kernel then takes the
source address from bind() or IPV6_PKTINFO and refuses one that is not local
(short of IPV6_FREEBIND or IPV6_TRANSPARENT), while step 1 must come from the
peer's address. Writing the 40-byte header ourselves is less code and treats
both families alike.

Rate limits (net/ipv4/tcp_input.c and tcp_minisocks.c, Linux 6.x):
- Challenge ACKs, and duplicate ACKs for out-of-window segments without
  data, share one per-socket limiter: one per net.ipv4.tcp_invalid_ratelimit
  ms (default 500; tp->last_oow_ack_time, tw_last_oow_ack_time for
  time-wait sockets). Each suppressed answer bumps a TcpExt TCPACKSkipped*
  counter.
- Challenge ACKs also draw on a per-namespace budget of about
  net.ipv4.tcp_challenge_ack_limit a second (INT_MAX, i.e. off, by default
  since Linux 6.0). The per-socket limiter is armed before that budget is
  consulted, so a SYN eaten by the budget still blocks an immediate retry:
  every retry waits the ratelimit interval and alternates the provocation
  (the out-of-window ACK does not draw on the budget).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import ipaddress
import os
import random
import select
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import PermissionDeniedError
from ..model import ALL_STATES_MASK, TcpState
from . import netns, procfs, sockdiag

TH_FIN, TH_SYN, TH_RST, TH_PSH, TH_ACK, TH_URG = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
FLAG_LETTERS = ((TH_FIN, "F"), (TH_SYN, "S"), (TH_RST, "R"), (TH_PSH, "P"), (TH_ACK, "."),
                (TH_URG, "U"))
IPPROTO_TCP = 6
ETH_P_ALL, ETH_P_IP, ETH_P_IPV6 = 0x0003, 0x0800, 0x86DD
SO_ATTACH_FILTER = 26

TCP_HDR = struct.Struct("!HHIIBBHHH")  # ports, seq, ack, offset, flags, window, csum, urg
IPV4_HDR = struct.Struct("!BBHHHBBH4s4s")
IPV6_HDR = struct.Struct("!IHBB16s16s")
IPV6_EXT_HEADERS = (0, 43, 60)  # hop-by-hop, routing, destination options
IPV6_FRAGMENT = 44

# States whose sockets answer a stray segment with an ACK and accept an exact RST.
SUPPORTED_STATES = frozenset({TcpState.ESTABLISHED, TcpState.FIN_WAIT1, TcpState.FIN_WAIT2,
                              TcpState.CLOSE_WAIT, TcpState.LAST_ACK, TcpState.CLOSING,
                              TcpState.TIME_WAIT})
SKIP_COUNTERS = ("TCPACKSkippedChallenge", "TCPACKSkippedSeq", "TCPACKSkippedPAWS",
                 "TCPACKSkippedFinWait2", "TCPACKSkippedTimeWait")
INT_MAX = 2**31 - 1
SEQ_MOD = 1 << 32


class PacketError(ValueError):
    """Bytes that are not a whole, unfragmented IPv4/IPv6 TCP segment."""


# --- segments: build and parse ---------------------------------------------

@dataclass(frozen=True, slots=True)
class Segment:
    """One TCP segment with the addresses of the IP header around it."""

    src: str
    dst: str
    sport: int
    dport: int
    seq: int
    ack: int
    flags: int
    window: int = 0
    options: bytes = b""
    payload: bytes = b""

    @property
    def family(self) -> int:
        return socket.AF_INET6 if ":" in self.src else socket.AF_INET

    @property
    def end_seq(self) -> int:
        """The sequence number after this segment (SYN and FIN count as one)."""
        extra = len(self.payload) + bool(self.flags & TH_SYN) + bool(self.flags & TH_FIN)
        return (self.seq + extra) % SEQ_MOD

    def describe(self) -> str:
        flags = "".join(c for bit, c in FLAG_LETTERS if self.flags & bit) or "none"
        return (f"{_join(self.src, self.sport)} > {_join(self.dst, self.dport)} [{flags}] "
                f"seq {self.seq} ack {self.ack} win {self.window} len {len(self.payload)}")


def _join(addr: str, port: int) -> str:
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071): ones' complement of the ones' complement sum."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def pseudo_header(src: str, dst: str, length: int) -> bytes:
    """What the TCP checksum covers besides the segment (RFC 793 / RFC 8200 8.1)."""
    if ":" in src:
        return (socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, dst)
                + struct.pack("!I3xB", length, IPPROTO_TCP))
    return (socket.inet_pton(socket.AF_INET, src) + socket.inet_pton(socket.AF_INET, dst)
            + struct.pack("!xBH", IPPROTO_TCP, length))


def tcp_bytes(seg: Segment) -> bytes:
    """The TCP header (options padded to 32 bits), payload, correct checksum."""
    options = seg.options + b"\0" * (-len(seg.options) % 4)
    offset = (5 + len(options) // 4) << 4
    header = TCP_HDR.pack(seg.sport, seg.dport, seg.seq % SEQ_MOD, seg.ack % SEQ_MOD,
                          offset, seg.flags & 0xFF, seg.window, 0, 0)
    body = header + options + seg.payload
    csum = checksum(pseudo_header(seg.src, seg.dst, len(body)) + body)
    return body[:16] + struct.pack("!H", csum) + body[18:]


def ipv4_header(src: str, dst: str, payload_len: int, ident: int = 0, ttl: int = 64) -> bytes:
    header = IPV4_HDR.pack(0x45, 0, 20 + payload_len, ident, 0x4000, ttl, IPPROTO_TCP, 0,
                           socket.inet_pton(socket.AF_INET, src),
                           socket.inet_pton(socket.AF_INET, dst))
    return header[:10] + struct.pack("!H", checksum(header)) + header[12:]


def ipv6_header(src: str, dst: str, payload_len: int, hop_limit: int = 64) -> bytes:
    return IPV6_HDR.pack(6 << 28, payload_len, IPPROTO_TCP, hop_limit,
                         socket.inet_pton(socket.AF_INET6, src),
                         socket.inet_pton(socket.AF_INET6, dst))


def build(seg: Segment, ident: int = 0) -> bytes:
    """A whole IP packet carrying the segment, ready for an IPPROTO_RAW socket."""
    tcp = tcp_bytes(seg)
    if seg.family == socket.AF_INET6:
        return ipv6_header(seg.src, seg.dst, len(tcp)) + tcp
    return ipv4_header(seg.src, seg.dst, len(tcp), ident) + tcp


def parse(data: bytes | memoryview) -> Segment:
    """The TCP segment in an IPv4 or IPv6 packet (starting at the IP header)."""
    data = bytes(data)
    if not data:
        raise PacketError("empty packet")
    version = data[0] >> 4
    if version == 4:
        src, dst, body = _parse_ipv4(data)
    elif version == 6:
        src, dst, body = _parse_ipv6(data)
    else:
        raise PacketError(f"IP version {version} is neither 4 nor 6")
    return parse_tcp(src, dst, body)


def _parse_ipv4(data: bytes) -> tuple[str, str, bytes]:
    if len(data) < 20:
        raise PacketError(f"IPv4 header truncated ({len(data)} bytes)")
    ihl = (data[0] & 0x0F) * 4
    _, _, total, _, frag, _, proto, _, src, dst = IPV4_HDR.unpack_from(data)
    if ihl < 20 or total < ihl or total > len(data):
        raise PacketError(f"IPv4 lengths do not fit (header {ihl}, total {total}, "
                          f"captured {len(data)})")
    if frag & 0x3FFF:
        raise PacketError("IPv4 fragment")
    if proto != IPPROTO_TCP:
        raise PacketError(f"not TCP (IP protocol {proto})")
    return (socket.inet_ntop(socket.AF_INET, src), socket.inet_ntop(socket.AF_INET, dst),
            data[ihl:total])


def _parse_ipv6(data: bytes) -> tuple[str, str, bytes]:
    if len(data) < 40:
        raise PacketError(f"IPv6 header truncated ({len(data)} bytes)")
    _, plen, nxt, _, src, dst = IPV6_HDR.unpack_from(data)
    end = 40 + plen
    if plen == 0 or end > len(data):
        raise PacketError(f"IPv6 payload length {plen} does not fit {len(data)} bytes")
    offset = 40
    while nxt in IPV6_EXT_HEADERS:
        if offset + 8 > end:
            raise PacketError("IPv6 extension header truncated")
        nxt, hdr_len = data[offset], (data[offset + 1] + 1) * 8
        offset += hdr_len
        if offset > end:
            raise PacketError("IPv6 extension header runs past the packet")
    if nxt == IPV6_FRAGMENT:
        raise PacketError("IPv6 fragment")
    if nxt != IPPROTO_TCP:
        raise PacketError(f"not TCP (IPv6 next header {nxt})")
    return (socket.inet_ntop(socket.AF_INET6, src), socket.inet_ntop(socket.AF_INET6, dst),
            data[offset:end])


def parse_tcp(src: str, dst: str, body: bytes) -> Segment:
    if len(body) < 20:
        raise PacketError(f"TCP header truncated ({len(body)} bytes)")
    sport, dport, seq, ack, offset, flags, window, _, _ = TCP_HDR.unpack_from(body)
    hlen = (offset >> 4) * 4
    if hlen < 20 or hlen > len(body):
        raise PacketError(f"TCP data offset {hlen} does not fit {len(body)} bytes")
    return Segment(src, dst, sport, dport, seq, ack, flags, window, body[20:hlen], body[hlen:])


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


def _ifindex(ifname: str | None) -> int:
    if not ifname:
        return 0
    try:
        return socket.if_nametoindex(ifname)
    except OSError:
        return 0


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


# --- kernel look-ups -------------------------------------------------------------

RTM_NEWROUTE, RTM_GETROUTE = 24, 26
RTA_DST, RTA_SRC, RTA_OIF = 1, 2, 4
RTMSG = struct.Struct("=BBBBBBBBI")
NO_COOKIE = 0xFFFFFFFFFFFFFFFF  # INET_DIAG_NOCOOKIE: match any socket


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


def socket_state(local: tuple[str, int], peer: tuple[str, int],
                 cookie: int | None = None) -> int | None:
    """The kernel's state of the TCP socket with this 4-tuple, None when there is none.

    An exact sock_diag request (no dump), so its cost does not grow with the
    number of sockets on the host; it finds time-wait sockets too. With a
    cookie, a different socket that took over the 4-tuple counts as none.
    """
    family = socket.AF_INET6 if ":" in local[0] else socket.AF_INET
    sockid = (struct.pack("!HH", local[1], peer[1])
              + socket.inet_pton(family, local[0]).ljust(16, b"\0")
              + socket.inet_pton(family, peer[0]).ljust(16, b"\0")
              + sockdiag.SOCKID_TAIL.pack(0, NO_COOKIE if cookie is None else cookie))
    request = sockdiag.build_request(family, ALL_STATES_MASK, 0, 1,
                                     sockdiag.SOCK_DIAG_BY_FAMILY, sockdiag.NLM_F_REQUEST,
                                     sockid)
    nl = sockdiag.open_socket()
    try:
        nl.send(request)
        data = nl.recv(65536)
    finally:
        nl.close()
    return parse_state_reply(data, sockid[2:4] + sockid[20:36])


def parse_state_reply(data: bytes, peer_id: bytes) -> int | None:
    """State in a sock_diag answer; None for "no such socket".

    The kernel's exact look-up falls back to the listener on the local port
    (it is the socket a packet with this 4-tuple would reach), so an answer
    whose peer (port and address, as in inet_diag_sockid) differs from
    `peer_id` counts as no socket.
    """
    hdr = sockdiag.NLMSG_HDRLEN
    if len(data) < hdr + 4:
        raise sockdiag.NetlinkParseError("sock_diag reply too short")
    _, msg_type, _, _, _ = sockdiag.NLMSGHDR.unpack_from(data)
    if msg_type == sockdiag.NLMSG_ERROR:
        (code,) = struct.unpack_from("=i", data, hdr)
        if code in (0, -errno.ENOENT):
            return None
        raise OSError(-code, os.strerror(-code))
    if msg_type != sockdiag.SOCK_DIAG_BY_FAMILY or len(data) < hdr + sockdiag.DIAG_MSG_LEN:
        raise sockdiag.NetlinkParseError(f"unexpected sock_diag reply (type {msg_type}, "
                                         f"{len(data)} bytes)")
    if data[hdr + 6:hdr + 8] + data[hdr + 24:hdr + 40] != peer_id:
        return None
    return data[hdr + 1]


def _tcp_ext() -> dict[str, int]:
    return procfs.read_counters().get("TcpExt", {})


def _sysctl(name: str, default: int) -> int:
    value = procfs.read_int_file(f"/proc/sys/net/ipv4/{name}")
    return default if value is None else value


# --- the kill ---------------------------------------------------------------------

@dataclass
class RstResult:
    """What rst_kill did to one socket, and what came of it.

    outcome: killed | not-found (no such socket to begin with) | gone (it
    closed by itself while we worked) | refused (a state that does not take
    an RST this way) | no-answer (the socket never revealed its sequence
    numbers) | survived (it answered, our RST did not end it).
    """

    outcome: str
    local: tuple[str, int]
    peer: tuple[str, int]
    family: int
    ifname: str | None = None
    state: int | None = None  # before we acted
    rcv_nxt: int | None = None  # learned from the socket's own ACK
    snd_nxt: int | None = None
    provocations: list[str] = field(default_factory=list)  # "syn" / "ack", in order
    peer_rst: bool = False
    rate_limited: bool = False  # the kernel suppressed at least one answer
    notes: list[str] = field(default_factory=list)
    elapsed: float = 0.0

    @property
    def killed(self) -> bool:
        return self.outcome == "killed"


@dataclass
class _Round:
    answer: Segment | None
    skipped: int  # per-socket limiter suppressions seen in the counters
    challenged: int  # SYN challenges the socket wanted to send
    challenge_acks: int  # challenge ACKs actually sent


def rst_kill(local: tuple[str, int], peer: tuple[str, int], family: int, *,
             ifname: str | None = None, also_peer: bool = True, timeout: float = 1.0,
             attempts: int = 3, cookie: int | None = None) -> RstResult:
    """End the TCP socket local<->peer with forged segments; see the module docstring.

    Runs in the calling thread's network namespace. `timeout` bounds the wait
    for each answer; `attempts` provocations at most, spaced by the kernel's
    ratelimit interval. `cookie` (the socket's sock_diag cookie) makes sure a
    socket that reused the 4-tuple since the caller looked is left alone.
    Raises PermissionDeniedError without CAP_NET_RAW; every other failure is
    an outcome in the result. For many sockets of one namespace,
    RstKiller.kill() saves a few milliseconds a socket.
    """
    with RstKiller() as killer:
        return killer.kill(local, peer, family, ifname=ifname, also_peer=also_peer,
                           timeout=timeout, attempts=attempts, cookie=cookie)


class RstKiller:
    """rst_kill() for many sockets of one network namespace, reusing its raw sockets.

    Create, use and close it in the namespace of the sockets it kills (the
    raw and packet sockets belong to the namespace they were opened in).
    """

    def __init__(self) -> None:
        self._senders: dict[int, RawSender] = {}
        self._captures: dict[str | None, Capture] = {}

    def __enter__(self) -> RstKiller:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for item in [*self._senders.values(), *self._captures.values()]:
            item.close()
        self._senders.clear()
        self._captures.clear()

    def kill(self, local: tuple[str, int], peer: tuple[str, int], family: int, *,
             ifname: str | None = None, also_peer: bool = True, timeout: float = 1.0,
             attempts: int = 3, cookie: int | None = None) -> RstResult:
        """See rst_kill()."""
        started = time.monotonic()
        local, peer, family = _wire_addresses(local, peer, family)
        result = RstResult("no-answer", local, peer, family)
        try:
            sender = self._sender(family)
            result.state = socket_state(local, peer, cookie)
            if _refused(result, cookie):
                return result
            result.ifname = ifname or route_interface(peer[0], local[0])
            capture = self._capture(result.ifname)
            capture.target(local, peer)
            tools = _Tools(sender, capture, _ifindex(result.ifname), cookie)
            _run(result, tools, also_peer, timeout, attempts)
        finally:
            result.elapsed = time.monotonic() - started
        return result

    def _sender(self, family: int) -> RawSender:
        if family not in self._senders:
            self._senders[family] = RawSender(family)
        return self._senders[family]

    def _capture(self, ifname: str | None) -> Capture:
        if ifname not in self._captures:
            self._captures[ifname] = Capture(ifname)
        return self._captures[ifname]


@dataclass
class _Tools:
    sender: RawSender
    capture: Capture
    scope_id: int  # for link-local IPv6 destinations
    cookie: int | None  # identity of the socket, for every re-check

    def send(self, seg: Segment) -> None:
        self.sender.send(seg, self.scope_id)


def rst_kill_in(ns: netns.NsRef, local: tuple[str, int], peer: tuple[str, int], family: int,
                **kwargs: Any) -> RstResult:
    """rst_kill() run inside the network namespace `ns`."""
    return netns.run_in(ns, lambda: rst_kill(local, peer, family, **kwargs))


def _wire_addresses(local: tuple[str, int], peer: tuple[str, int],
                    family: int) -> tuple[tuple[str, int], tuple[str, int], int]:
    """Canonical text; an AF_INET6 socket talking IPv4 (::ffff:a.b.c.d) uses IPv4 packets."""
    a, b = ipaddress.ip_address(local[0]), ipaddress.ip_address(peer[0])
    if isinstance(a, ipaddress.IPv6Address) and a.ipv4_mapped and isinstance(
            b, ipaddress.IPv6Address) and b.ipv4_mapped:
        a, b = a.ipv4_mapped, b.ipv4_mapped
    if a.version != b.version:
        raise ValueError(f"{local[0]} and {peer[0]} are not of one address family")
    family = socket.AF_INET6 if a.version == 6 else socket.AF_INET
    return (str(a), int(local[1])), (str(b), int(peer[1])), family


def _refused(result: RstResult, cookie: int | None) -> bool:
    if result.state is None:
        result.outcome = "not-found"
        if cookie is not None and socket_state(result.local, result.peer) is not None:
            result.notes.append("another socket has taken over this 4-tuple (its cookie "
                                "differs): left alone")
        else:
            result.notes.append("no TCP socket with this 4-tuple exists in this namespace")
        return True
    if result.state not in SUPPORTED_STATES:
        result.outcome = "refused"
        result.notes.append(f"state {TcpState(result.state).name} does not accept an RST "
                            "this way; only synchronized states do")
        return True
    return False


def _run(result: RstResult, tools: _Tools, also_peer: bool, timeout: float,
         attempts: int) -> None:
    interval = _sysctl("tcp_invalid_ratelimit", 500) / 1000 + 0.02  # one jiffy and some
    challenge_limit = _sysctl("tcp_challenge_ack_limit", INT_MAX)
    # A time-wait socket may take a SYN as a new connection: start with the ACK there.
    kinds = ("ack", "syn") if result.state == TcpState.TIME_WAIT else ("syn", "ack")
    for attempt in range(attempts):
        if attempt:
            time.sleep(interval)
            # Never provoke a socket that is gone: a SYN would reach the listener
            # on that port and start a handshake with the peer.
            if socket_state(result.local, result.peer, tools.cookie) is None:
                _vanished(result)
                break
        if _attempt(result, tools, kinds[attempt % 2], timeout, challenge_limit):
            break
    if result.killed and also_peer:
        _reset_peer(result, tools)


def _attempt(result: RstResult, tools: _Tools, kind: str, timeout: float,
             challenge_limit: int) -> bool:
    """One provocation and, when answered, one RST; True when another try is pointless."""
    result.provocations.append(kind)
    try:
        rnd = _provoke(tools, result, kind, timeout)
        if rnd.answer is None:
            return not _explain_silence(result, rnd, kind, challenge_limit)
        if _reset(result, tools, rnd.answer, timeout):
            result.outcome = "killed"
            return True
    except OSError as exc:  # e.g. the local address is no longer configured
        result.notes.append(f"{kind}: cannot send to {_join(*result.local)}: "
                            f"{exc.strerror or exc}")
        return True
    result.outcome = "survived"
    if result.state == TcpState.TIME_WAIT and _sysctl("tcp_rfc1337", 0):
        result.notes.append("net.ipv4.tcp_rfc1337 = 1: time-wait sockets ignore RSTs")
        return True
    result.notes.append(f"the RST with seq {result.rcv_nxt} did not end the socket "
                        "(its sequence numbers moved on meanwhile?)")
    return False


def _vanished(result: RstResult) -> None:
    if result.rcv_nxt is None:
        result.outcome = "gone"
        result.notes.append("the socket went away by itself before any RST of ours")
        return
    result.outcome = "killed"  # our RST took effect after the first check
    result.notes = [n for n in result.notes if not n.startswith("the RST with seq")]


def _provoke(tools: _Tools, result: RstResult, kind: str, timeout: float) -> _Round:
    (laddr, lport), (paddr, pport) = result.local, result.peer
    seq, ack = random.getrandbits(32), random.getrandbits(32)
    flags = TH_SYN if kind == "syn" else TH_ACK
    before = _tcp_ext()
    tools.capture.drain()
    tools.send(Segment(paddr, laddr, pport, lport, seq, ack if kind == "ack" else 0, flags,
                       window=1024))
    answer = tools.capture.next_ack(timeout)
    after = before if answer else _tcp_ext()  # the counters only explain silence

    def delta(*names: str) -> int:
        return sum(after.get(n, 0) - before.get(n, 0) for n in names)

    return _Round(answer, delta(*SKIP_COUNTERS), delta("TCPSYNChallenge"),
                  delta("TCPChallengeACK"))


def _explain_silence(result: RstResult, rnd: _Round, kind: str, challenge_limit: int) -> bool:
    """Note why no answer was seen; False when trying again cannot help."""
    if rnd.skipped:
        result.rate_limited = True
        result.notes.append(f"{kind}: no answer; the per-socket limiter "
                            "(net.ipv4.tcp_invalid_ratelimit) probably suppressed it")
    elif kind == "syn" and rnd.challenged and not rnd.challenge_acks \
            and challenge_limit != INT_MAX:
        result.rate_limited = True
        result.notes.append(f"syn: no answer; the namespace's challenge ACK budget "
                            f"(net.ipv4.tcp_challenge_ack_limit = {challenge_limit}) "
                            "was probably spent")
    elif rnd.challenge_acks:
        # Sent, yet never handed to the interface: packets wait in the neighbour
        # queue while the peer's link-layer address is unresolved, and a down
        # interface or an OUTPUT rule drops them before any capture sees them.
        result.notes.append(
            f"{kind}: the socket answered (TCPChallengeACK rose) but the answer never left "
            f"through {result.ifname or 'any interface'}: the peer is probably unreachable "
            "(unresolved neighbour, interface down) or a firewall drops it")
        return False
    elif kind == "syn":
        result.notes.append("syn: no answer and no challenge counted: the SYN never "
                            "reached the socket (a firewall?)")
    else:
        result.notes.append("ack: no answer seen (the segment may not have reached the "
                            "socket)")
    return True


def _reset(result: RstResult, tools: _Tools, answer: Segment, timeout: float) -> bool:
    """RST at the socket's exact rcv_nxt, then wait until sock_diag no longer finds it."""
    result.rcv_nxt, result.snd_nxt = answer.ack, answer.end_seq
    (laddr, lport), (paddr, pport) = result.local, result.peer
    tools.send(Segment(paddr, laddr, pport, lport, answer.ack, answer.end_seq,
                       TH_RST | TH_ACK))
    return _wait_gone(lambda: socket_state(result.local, result.peer, tools.cookie), timeout)


def _wait_gone(state: Callable[[], int | None], timeout: float) -> bool:
    # The RST travels through the loopback backlog: usually handled before sendto
    # returns, but give softirq processing a moment before calling it failed.
    deadline = time.monotonic() + timeout
    pause = 0.0005
    while True:
        if state() is None:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(pause)
        pause = min(pause * 2, 0.05)


def _reset_peer(result: RstResult, tools: _Tools) -> None:
    # If the peer's rcv_nxt lags our snd_nxt (data in flight), this RST is in its
    # window but not exact: it answers with a challenge ACK, which now meets no
    # socket here, and our kernel's own RST (seq = that ACK's ack field) is exact.
    (laddr, lport), (paddr, pport) = result.local, result.peer
    assert result.snd_nxt is not None and result.rcv_nxt is not None
    try:
        tools.send(Segment(laddr, paddr, lport, pport, result.snd_nxt, result.rcv_nxt,
                           TH_RST | TH_ACK))
    except OSError as exc:
        result.notes.append(f"could not send the peer its RST: {exc.strerror or exc}")
        return
    result.peer_rst = True

