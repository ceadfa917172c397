"""Decode the congestion control's own sock_diag attribute (Socket.cc_info).

The kernel sends one of three structs (include/uapi/linux/inet_diag.h),
whichever the socket's algorithm fills in: tcpvegas_info, tcp_dctcp_info or
tcp_bbr_info. Socket.cc_info keeps it raw, the attribute type in byte 0.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

VEGAS, DCTCP, BBR = 3, 9, 16
_VEGAS = struct.Struct("=IIII")  # enabled, rttcnt, rtt (us), minrtt
_DCTCP = struct.Struct("=HHIII")  # enabled, ce_state, alpha, ab_ecn, ab_tot
_BBR = struct.Struct("=IIIII")  # bw_lo, bw_hi (bytes/s), min_rtt (us), pacing_gain, cwnd_gain


@dataclass(frozen=True, slots=True)
class Vegas:
    enabled: bool
    rtt_us: int


@dataclass(frozen=True, slots=True)
class Dctcp:
    enabled: bool
    ce_state: int
    alpha: int
    ab_ecn: int
    ab_tot: int


@dataclass(frozen=True, slots=True)
class Bbr:
    bw_bytes: int  # bytes per second
    min_rtt_us: int
    pacing_gain: int  # fixed point, 256 = 1.0
    cwnd_gain: int


def _padded(body: bytes, size: int) -> bytes:
    """Shorter structs (older kernels) read as zero-filled, as ss does."""
    return body[:size].ljust(size, b"\0")


def decode(raw: bytes | None) -> Vegas | Dctcp | Bbr | None:
    """The decoded struct, or None when there is none or its type is unknown."""
    if not raw:
        return None
    kind, body = raw[0], raw[1:]
    if kind == BBR:
        lo, hi, min_rtt, pacing, cwnd = _BBR.unpack(_padded(body, _BBR.size))
        return Bbr(hi << 32 | lo, min_rtt, pacing, cwnd)
    if kind == DCTCP:
        enabled, *rest = _DCTCP.unpack(_padded(body, _DCTCP.size))
        return Dctcp(bool(enabled), *rest)
    if kind == VEGAS:
        enabled, _, rtt, _ = _VEGAS.unpack(_padded(body, _VEGAS.size))
        return Vegas(bool(enabled), rtt)
    return None
