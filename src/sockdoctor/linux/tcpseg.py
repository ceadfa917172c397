"""TCP segments inside IPv4 and IPv6 packets: the model, building, parsing.

Pure byte work, no I/O: build() makes a whole packet (IP header, TCP header,
correct checksums) for an IPPROTO_RAW socket; parse() takes one apart and
raises PacketError on anything that is not a whole, unfragmented TCP segment.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

TH_FIN, TH_SYN, TH_RST, TH_PSH, TH_ACK, TH_URG = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
FLAG_LETTERS = ((TH_FIN, "F"), (TH_SYN, "S"), (TH_RST, "R"), (TH_PSH, "P"), (TH_ACK, "."),
                (TH_URG, "U"))
IPPROTO_TCP = 6

TCP_HDR = struct.Struct("!HHIIBBHHH")  # ports, seq, ack, offset, flags, window, csum, urg
IPV4_HDR = struct.Struct("!BBHHHBBH4s4s")
IPV6_HDR = struct.Struct("!IHBB16s16s")
IPV6_EXT_HEADERS = (0, 43, 60)  # hop-by-hop, routing, destination options
IPV6_FRAGMENT = 44
SEQ_MOD = 1 << 32


class PacketError(ValueError):
    """Bytes that are not a whole, unfragmented IPv4/IPv6 TCP segment."""


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
        return (f"{endpoint_text(self.src, self.sport)} > "
                f"{endpoint_text(self.dst, self.dport)} [{flags}] "
                f"seq {self.seq} ack {self.ack} win {self.window} len {len(self.payload)}")


def endpoint_text(addr: str, port: int) -> str:
    """addr:port, with brackets around an IPv6 address."""
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
