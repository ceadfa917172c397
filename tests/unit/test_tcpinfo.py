"""tcp_info decoding tolerates older (shorter) and newer (longer) kernels."""

from __future__ import annotations

import struct

from hypothesis import given
from hypothesis import strategies as st

from sockdoctor.linux import tcpinfo


def blob(length: int) -> bytes:
    data = bytearray(length)
    data[0] = 8  # state CLOSE_WAIT
    data[5] = 7  # options: ts, sack, wscale
    data[6] = (9 << 4) | 7  # rcv_wscale 9, snd_wscale 7
    struct.pack_into("=I", data, 8, 204000)  # rto
    if length >= 60:
        struct.pack_into("=I", data, 56, 31337)  # last_ack_recv
    if length >= 120:
        struct.pack_into("=Q", data, 112, 1 << 40)  # max_pacing_rate
    return bytes(data)


def test_oldest_kernels_104_bytes() -> None:
    info = tcpinfo.decode(blob(104))
    assert info["state"] == 8 and info["rto"] == 204000 and info["last_ack_recv"] == 31337
    assert info["total_retrans"] == 0
    assert "pacing_rate" not in info


def test_modern_layout_and_bitfields() -> None:
    info = tcpinfo.decode(blob(248))  # 6.x without the accurate-ECN tail
    assert (info["snd_wscale"], info["rcv_wscale"]) == (7, 9)
    assert info["max_pacing_rate"] == 1 << 40
    assert "snd_wnd" in info and "total_rto_time" in info and "received_ce" not in info
    assert tcpinfo.option_names(info["options"]) == ["ts", "sack", "wscale"]


def test_newer_kernel_with_unknown_tail_is_tolerated() -> None:
    info = tcpinfo.decode(blob(400))
    assert info["last_ack_recv"] == 31337 and "ecn_mode" in info


def test_truncated_blob_gives_fewer_fields_not_an_error() -> None:
    assert tcpinfo.decode(b"") == {}
    assert tcpinfo.decode(b"\x01\x02")["ca_state"] == 2
    assert tcpinfo.last_ack_recv(blob(40)) is None
    assert tcpinfo.last_ack_recv(blob(60)) == 31337


@given(st.binary(max_size=512))
def test_any_length_decodes(data: bytes) -> None:
    info = tcpinfo.decode(data)
    assert all(isinstance(v, int) for v in info.values())
    if len(data) >= 8:
        assert info["state"] == data[0]


def test_model_field_order_is_the_kernel_order() -> None:
    from sockdoctor.model import TcpInfo

    names = tuple(name for name, _ in tcpinfo._FIELDS)
    assert TcpInfo.__struct_fields__[:len(names)] == names


def test_struct_and_dict_agree() -> None:
    data = blob(248)
    info = tcpinfo.decode_struct(data)
    as_dict = tcpinfo.decode(data)
    assert info.rto == as_dict["rto"] == 204000
    assert (info.snd_wscale, info.rcv_wscale) == (7, 9)
    assert info.wscale_bits is None and "wscale_bits" not in as_dict
    assert info.received_ce is None and "received_ce" not in as_dict
