"""Decode struct tcp_info (include/uapi/linux/tcp.h) by length.

The kernel only ever appends fields, so a blob is decoded up to the last
field that fits completely: an older kernel gives fewer keys, a newer one
gives extra bytes we ignore. Bit-fields are split into their own keys.
"""

from __future__ import annotations

import struct
from functools import lru_cache

import msgspec

from ..model import Socket, TcpInfo
from .native import fast

# (name, struct code) in kernel order, which must also be TcpInfo's field order
# (it is built positionally; a unit test holds the two together). Offsets follow
# from natural alignment, which the kernel's layout already respects.
_FIELDS: tuple[tuple[str, str], ...] = (
    ("state", "B"), ("ca_state", "B"), ("retransmits", "B"), ("probes", "B"),
    ("backoff", "B"), ("options", "B"), ("wscale_bits", "B"), ("rate_flags", "B"),
    ("rto", "I"), ("ato", "I"), ("snd_mss", "I"), ("rcv_mss", "I"),
    ("unacked", "I"), ("sacked", "I"), ("lost", "I"), ("retrans", "I"), ("fackets", "I"),
    ("last_data_sent", "I"), ("last_ack_sent", "I"), ("last_data_recv", "I"),
    ("last_ack_recv", "I"),
    ("pmtu", "I"), ("rcv_ssthresh", "I"), ("rtt", "I"), ("rttvar", "I"),
    ("snd_ssthresh", "I"), ("snd_cwnd", "I"), ("advmss", "I"), ("reordering", "I"),
    ("rcv_rtt", "I"), ("rcv_space", "I"), ("total_retrans", "I"),
    ("pacing_rate", "Q"), ("max_pacing_rate", "Q"),
    ("bytes_acked", "Q"), ("bytes_received", "Q"),
    ("segs_out", "I"), ("segs_in", "I"),
    ("notsent_bytes", "I"), ("min_rtt", "I"), ("data_segs_in", "I"), ("data_segs_out", "I"),
    ("delivery_rate", "Q"),
    ("busy_time", "Q"), ("rwnd_limited", "Q"), ("sndbuf_limited", "Q"),
    ("delivered", "I"), ("delivered_ce", "I"),
    ("bytes_sent", "Q"), ("bytes_retrans", "Q"),
    ("dsack_dups", "I"), ("reord_seen", "I"), ("rcv_ooopack", "I"),
    ("snd_wnd", "I"), ("rcv_wnd", "I"), ("rehash", "I"),
    ("total_rto", "H"), ("total_rto_recoveries", "H"), ("total_rto_time", "I"),
    ("received_ce", "I"),
    ("delivered_e1_bytes", "I"), ("delivered_e0_bytes", "I"), ("delivered_ce_bytes", "I"),
    ("received_e1_bytes", "I"), ("received_e0_bytes", "I"), ("received_ce_bytes", "I"),
    ("ecn_bits", "I"),
)

# Byte offset of tcpi_last_ack_recv: the age estimate needs only this field.
LAST_ACK_RECV_OFFSET = 56
_U32 = struct.Struct("=I")

# Options bits (TCPI_OPT_*), named as ss prints them.
OPTION_NAMES = ((1, "ts"), (2, "sack"), (4, "wscale"), (8, "ecn"), (16, "ecnseen"),
                (32, "syn_data"), (64, "usec_ts"), (128, "tfo_child"))


@lru_cache(maxsize=16)
def _layout(length: int) -> tuple[struct.Struct, tuple[str, ...]]:
    """The Struct and names for the longest field prefix that fits in `length` bytes."""
    fmt = "="
    names: list[str] = []
    for name, code in _FIELDS:
        candidate = fmt + code
        if struct.calcsize(candidate) > length:
            break
        fmt = candidate
        names.append(name)
    return struct.Struct(fmt), tuple(names)


def decode_struct(blob: bytes | memoryview) -> TcpInfo:
    """Decode a tcp_info blob of any length into a TcpInfo (fields that fit, rest None)."""
    return _decode(blob)


def decode_struct_python(blob: bytes | memoryview) -> TcpInfo:
    """decode_struct() in Python: the reference for the C decoder."""
    layout, names = _layout(len(blob))
    if not names:
        return TcpInfo()
    info = TcpInfo(*layout.unpack_from(blob))
    bits = info.wscale_bits
    if bits is not None:
        info.snd_wscale, info.rcv_wscale = bits & 0x0F, bits >> 4
        info.wscale_bits = None
    flags = info.rate_flags
    if flags is not None:
        info.delivery_rate_app_limited, info.fastopen_client_fail = flags & 1, (flags >> 1) & 3
        info.rate_flags = None
    ecn = info.ecn_bits
    if ecn is not None:
        info.ecn_mode, info.accecn_opt_seen = ecn & 3, (ecn >> 2) & 3
        info.accecn_fail_mode = (ecn >> 4) & 0xF
        info.ecn_bits = None
    return info


# The C decoder when the extension is in use (called once per socket by --json -i).
_decode = fast.tcp_info if fast is not None else decode_struct_python


def of(sk: Socket) -> TcpInfo | None:
    """The socket's tcp_info, decoding a lazily kept blob on the way."""
    if sk.info is None and sk.info_blob is not None:
        return _decode(sk.info_blob)
    return sk.info


def decode(blob: bytes | memoryview) -> dict[str, int]:
    """Decode a tcp_info blob of any length into a dict of the fields present."""
    fields = msgspec.structs.asdict(decode_struct(blob))
    return {name: value for name, value in fields.items() if value is not None}


def last_ack_recv(blob: bytes | memoryview) -> int | None:
    """Milliseconds since the last ACK from the peer, or None if the blob is too short."""
    if len(blob) < LAST_ACK_RECV_OFFSET + 4:
        return None
    return _U32.unpack_from(blob, LAST_ACK_RECV_OFFSET)[0]


def option_names(options: int) -> list[str]:
    return [name for bit, name in OPTION_NAMES if options & bit]
