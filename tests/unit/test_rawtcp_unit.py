"""rawtcp without root: checksums, packing and parsing, filters, reply parsers, retries."""

from __future__ import annotations

import errno
import socket
import struct
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sockdoctor.errors import PermissionDeniedError
from sockdoctor.linux import capture, rawtcp, sockdiag, tcpseg
from sockdoctor.linux.tcpseg import (
    TH_ACK,
    TH_FIN,
    TH_PSH,
    TH_RST,
    TH_SYN,
    PacketError,
    Segment,
)
from sockdoctor.model import TcpState

# Challenge ACKs captured by capture.Capture in a lab (server side of a veth pair),
# both with the timestamp option the kernel adds.
V4_ACK = bytes.fromhex(
    "4500003498a5400040068d820a4d00010a4d0002b739e178a8c77cd3fae88b0e8010004014c30000"
    "0101080ae6b7722909967a0b")
V6_ACK = bytes.fromhex(
    "6000ec5600200640fd770000000000000000000000000001fd770000000000000000000000000002"
    "adf9bb109882cedb413d3e8d8010003ffb1800000101080a89726d43f02ed548")
V4_LOCAL, V4_PEER = ("10.77.0.1", 46905), ("10.77.0.2", 57720)
V6_LOCAL, V6_PEER = ("fd77::1", 44537), ("fd77::2", 47888)


# --- checksum -----------------------------------------------------------------

def test_checksum_rfc1071_example() -> None:
    # RFC 1071 section 3: the words 0001 f203 f4f5 f6f7 sum to ddf2.
    assert tcpseg.checksum(bytes.fromhex("0001f203f4f5f6f7")) == 0xFFFF - 0xDDF2


def test_checksum_known_ipv4_header() -> None:
    # A classic worked example: 192.168.0.1 -> 192.168.0.199, UDP, checksum b861.
    header = bytes.fromhex("450000730000400040110000c0a80001c0a800c7")
    assert tcpseg.checksum(header) == 0xB861
    assert tcpseg.checksum(header[:10] + b"\xb8\x61" + header[12:]) == 0


def test_checksum_odd_length_pads_with_zero() -> None:
    assert tcpseg.checksum(b"\x01") == tcpseg.checksum(b"\x01\x00") == 0xFEFF
    assert tcpseg.checksum(b"") == 0xFFFF


def _reference_checksum(data: bytes) -> int:
    """Independent formulation: the ones' complement sum is the sum modulo 0xffff."""
    data += b"\0" * (len(data) % 2)
    total = sum(int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2))
    folded = total % 0xFFFF
    if folded == 0 and total:
        folded = 0xFFFF
    return ~folded & 0xFFFF


@given(st.binary(max_size=300))
def test_checksum_matches_reference(data: bytes) -> None:
    assert tcpseg.checksum(data) == _reference_checksum(data)


def test_ipv4_header_from_the_kernel_verifies() -> None:
    assert tcpseg.checksum(V4_ACK[:20]) == 0


# --- building and parsing -------------------------------------------------------

addr4 = st.ip_addresses(v=4).map(str)
addr6 = st.ip_addresses(v=6).map(str)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)


@st.composite
def segments(draw: st.DrawFn) -> Segment:
    addrs = draw(st.sampled_from([addr4, addr6]))
    return Segment(draw(addrs), draw(addrs), draw(u16), draw(u16), draw(u32), draw(u32),
                   draw(st.integers(0, 0xFF)), draw(u16),
                   draw(st.binary(max_size=10).map(lambda b: b + b"\0" * (-len(b) % 4))),
                   draw(st.binary(max_size=64)))


def _canonical(addr: str) -> str:
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    return socket.inet_ntop(family, socket.inet_pton(family, addr))


@given(segments())
def test_build_parse_round_trip(seg: Segment) -> None:
    packet = tcpseg.build(seg)
    assert tcpseg.parse(packet) == replace(seg, src=_canonical(seg.src), dst=_canonical(seg.dst))


@given(segments())
def test_tcp_checksum_verifies_to_zero(seg: Segment) -> None:
    tcp = tcpseg.tcp_bytes(seg)
    assert tcpseg.checksum(tcpseg.pseudo_header(seg.src, seg.dst, len(tcp)) + tcp) == 0


def test_ipv4_packet_layout() -> None:
    seg = Segment("10.0.0.2", "10.0.0.1", 4000, 80, 7, 9, TH_RST | TH_ACK)
    packet = tcpseg.build(seg, ident=0x1234)
    assert len(packet) == 40
    ver_ihl, _, total, ident, frag, ttl, proto, _, src, dst = tcpseg.IPV4_HDR.unpack_from(packet)
    assert (ver_ihl, total, ident, frag, ttl, proto) == (0x45, 40, 0x1234, 0x4000, 64, 6)
    assert (src, dst) == (socket.inet_aton("10.0.0.2"), socket.inet_aton("10.0.0.1"))
    assert tcpseg.checksum(packet[:20]) == 0
    sport, dport, sq, ak, off, flags, win, _, urg = tcpseg.TCP_HDR.unpack_from(packet, 20)
    assert (sport, dport, sq, ak, off, flags, win, urg) == (4000, 80, 7, 9, 0x50, 0x14, 0, 0)


def test_ipv6_packet_layout() -> None:
    seg = Segment("fd77::2", "fd77::1", 4000, 80, 1, 2, TH_SYN, 1024, b"\x02\x04\x05\xb4")
    packet = tcpseg.build(seg)
    first, plen, nxt, hops, src, dst = tcpseg.IPV6_HDR.unpack_from(packet)
    assert (first >> 28, plen, nxt, hops) == (6, 24, 6, 64)
    assert (src, dst) == (socket.inet_pton(socket.AF_INET6, "fd77::2"),
                          socket.inet_pton(socket.AF_INET6, "fd77::1"))
    assert packet[40 + 12] >> 4 == 6  # data offset counts the option


def test_options_are_padded_to_32_bits() -> None:
    seg = Segment("10.0.0.2", "10.0.0.1", 1, 2, 3, 4, TH_ACK, options=b"\x01")
    parsed = tcpseg.parse(tcpseg.build(seg))
    assert parsed.options == b"\x01\0\0\0"


def test_sequence_numbers_wrap() -> None:
    seg = Segment("10.0.0.2", "10.0.0.1", 1, 2, 2**32 + 5, -1, TH_ACK)
    parsed = tcpseg.parse(tcpseg.build(seg))
    assert (parsed.seq, parsed.ack) == (5, 2**32 - 1)


def test_end_seq_counts_syn_fin_and_payload() -> None:
    assert Segment("a", "b", 1, 2, 2**32 - 1, 0, TH_SYN).end_seq == 0
    assert Segment("a", "b", 1, 2, 10, 0, TH_FIN | TH_ACK, payload=b"xyz").end_seq == 14
    assert Segment("a", "b", 1, 2, 10, 0, TH_ACK | TH_PSH).end_seq == 10


def test_describe_names_flags() -> None:
    text = Segment("fd77::1", "fd77::2", 1, 2, 3, 4, TH_RST | TH_ACK).describe()
    assert text.startswith("[fd77::1]:1 > [fd77::2]:2 [R.]")


# --- recorded answers ------------------------------------------------------------

def test_parse_recorded_ipv4_challenge_ack() -> None:
    seg = tcpseg.parse(V4_ACK)
    assert (seg.src, seg.sport, seg.dst, seg.dport) == (*V4_LOCAL, *V4_PEER)
    assert (seg.seq, seg.ack, seg.flags, seg.window) == (0xA8C77CD3, 0xFAE88B0E, TH_ACK, 64)
    assert seg.options[:2] == b"\x01\x01" and seg.options[2] == 8  # NOP NOP timestamp
    assert seg.payload == b"" and seg.end_seq == seg.seq


def test_parse_recorded_ipv6_challenge_ack() -> None:
    seg = tcpseg.parse(V6_ACK)
    assert (seg.src, seg.sport, seg.dst, seg.dport) == (*V6_LOCAL, *V6_PEER)
    assert (seg.seq, seg.ack, seg.flags, seg.window) == (2558709467, 1094532749, TH_ACK, 63)


def test_answer_in_accepts_only_local_to_peer_acks() -> None:
    assert capture.answer_in(V4_ACK, V4_LOCAL, V4_PEER) is not None
    assert capture.answer_in(V6_ACK, ("fd77:0::1", 44537), V6_PEER) is not None  # any spelling
    assert capture.answer_in(V4_ACK, V4_PEER, V4_LOCAL) is None  # wrong direction
    assert capture.answer_in(V4_ACK, V4_LOCAL, ("10.77.0.2", 1)) is None
    assert capture.answer_in(V6_ACK, V4_LOCAL, V4_PEER) is None
    assert capture.answer_in(V4_ACK[:30], V4_LOCAL, V4_PEER) is None
    for flags in (TH_RST | TH_ACK, TH_SYN | TH_ACK, TH_FIN):
        seg = Segment(*V4_LOCAL[:1], *V4_PEER[:1], V4_LOCAL[1], V4_PEER[1], 1, 2, flags)
        assert capture.answer_in(tcpseg.build(seg), V4_LOCAL, V4_PEER) is None


# --- hostile input ------------------------------------------------------------------

@pytest.mark.parametrize("packet", [V4_ACK, V6_ACK])
def test_every_truncation_is_a_clean_error(packet: bytes) -> None:
    for cut in range(len(packet)):
        with pytest.raises(PacketError):
            tcpseg.parse(packet[:cut])


@given(st.binary(max_size=120))
def test_random_bytes_never_crash(data: bytes) -> None:
    try:
        seg = tcpseg.parse(data)
    except PacketError:
        return
    assert 0 <= seg.seq < 2**32 and 0 <= seg.sport < 2**16


def _patch(packet: bytes, offset: int, value: bytes) -> bytes:
    return packet[:offset] + value + packet[offset + len(value):]


@pytest.mark.parametrize(("packet", "message"), [
    (_patch(V4_ACK, 0, b"\x44"), "lengths"),  # IHL 4 words: shorter than a header
    (_patch(V4_ACK, 0, b"\x4f"), "lengths"),  # IHL 60 bytes: past the total length
    (_patch(V4_ACK, 2, b"\x00\x40"), "lengths"),  # total length past the capture
    (_patch(V4_ACK, 6, b"\x20\x00"), "fragment"),  # more fragments
    (_patch(V4_ACK, 6, b"\x00\x10"), "fragment"),  # non-zero offset
    (_patch(V4_ACK, 9, b"\x11"), "not TCP"),
    (_patch(V4_ACK, 32, b"\x40"), "data offset"),  # 16 bytes: shorter than a header
    (_patch(V4_ACK, 32, b"\xf0"), "data offset"),  # 60 bytes: past the segment
    (_patch(V4_ACK, 0, b"\x55"), "version"),
    (_patch(V6_ACK, 4, b"\x00\x00"), "payload length"),  # jumbogram / zero
    (_patch(V6_ACK, 4, b"\x01\x00"), "payload length"),
    (_patch(V6_ACK, 6, b"\x11"), "not TCP"),
    (_patch(V6_ACK, 6, b"\x2c"), "fragment"),
    (_patch(V6_ACK, 6, b"\x00"), "extension"),  # "hop-by-hop header" that is really TCP
    (_patch(_patch(V6_ACK, 6, b"\x00"), 41, b"\x20"), "extension"),  # runs past the end
])
def test_malformed_headers(packet: bytes, message: str) -> None:
    with pytest.raises(PacketError, match=message):
        tcpseg.parse(packet)


def test_ipv6_extension_header_is_skipped() -> None:
    seg = tcpseg.parse(V6_ACK)
    tcp = tcpseg.tcp_bytes(seg)
    hop_by_hop = bytes([6, 0]) + b"\x01\x04\0\0\0\0"  # next = TCP, PadN to 8 bytes
    packet = tcpseg.ipv6_header(seg.src, seg.dst, len(tcp) + 8)
    packet = packet[:6] + b"\x00" + packet[7:] + hop_by_hop + tcp
    assert tcpseg.parse(packet) == seg


# --- the capture filter, run by a small classic BPF interpreter ----------------------

def run_bpf(prog: list[tuple[int, int, int, int]], pkt: bytes, ethertype: int) -> int:
    a = x = pc = 0
    while True:
        code, jt, jf, k = prog[pc]
        if code == capture.BPF_RET:
            return k
        if code == capture.BPF_LD_H and k == capture.SKF_AD_PROTOCOL:
            a = ethertype
        elif code == capture.BPF_JEQ:
            pc += jt if a == k else jf
        else:
            size, where = {capture.BPF_LD_W: (4, k), capture.BPF_LD_H: (2, k),
                           capture.BPF_LD_B: (1, k), capture.BPF_LDX_MSH: (1, k),
                           capture.BPF_LD_H_IND: (2, x + k)}[code]
            if where + size > len(pkt):
                return 0  # the kernel drops the packet on an out-of-bounds load
            value = int.from_bytes(pkt[where:where + size], "big")
            if code == capture.BPF_LDX_MSH:
                x = (value & 0xF) * 4
            else:
                a = value
        pc += 1


@pytest.mark.parametrize(("packet", "local", "peer", "ethertype"), [
    (V4_ACK, V4_LOCAL, V4_PEER, capture.ETH_P_IP),
    (V6_ACK, V6_LOCAL, V6_PEER, capture.ETH_P_IPV6),
])
def test_bpf_keeps_exactly_the_4tuple(packet: bytes, local: tuple[str, int],
                                      peer: tuple[str, int], ethertype: int) -> None:
    prog = capture.bpf_program(local[0], peer[0], local[1], peer[1])
    assert all(insn[1] <= 255 and insn[2] <= 255 for insn in prog)
    assert run_bpf(prog, packet, ethertype) == capture.BPF_ACCEPT
    assert run_bpf(prog, packet, 0x0806) == 0  # ARP, say
    reverse = capture.bpf_program(peer[0], local[0], peer[1], local[1])
    assert run_bpf(reverse, packet, ethertype) == 0
    other_port = capture.bpf_program(local[0], peer[0], local[1], peer[1] + 1)
    assert run_bpf(other_port, packet, ethertype) == 0
    dport_end = len(packet) - len(tcpseg.parse(packet).options) - 16
    assert run_bpf(prog, packet[:dport_end - 1], ethertype) == 0  # cut inside the port


def test_bpf_reads_ports_after_ipv4_options() -> None:
    seg = tcpseg.parse(V4_ACK)
    tcp = tcpseg.tcp_bytes(seg)
    header = tcpseg.ipv4_header(seg.src, seg.dst, len(tcp) + 4)
    header = bytes([0x46]) + header[1:] + b"\x01\x01\x01\x00"  # IHL 6: NOPs, EOL
    prog = capture.bpf_program(*V4_LOCAL[:1], *V4_PEER[:1], V4_LOCAL[1], V4_PEER[1])
    assert run_bpf(prog, header + tcp, capture.ETH_P_IP) == capture.BPF_ACCEPT


# --- netlink replies ------------------------------------------------------------------

def _nlmsg(msg_type: int, body: bytes) -> bytes:
    return sockdiag.NLMSGHDR.pack(16 + len(body), msg_type, 0, 1, 0) + body


def test_route_reply_oif() -> None:
    body = capture.RTMSG.pack(2, 32, 0, 0, 254, 0, 0, 1, 0)
    body += capture._rtattr(capture.RTA_DST, socket.inet_aton("10.0.0.1"))
    body += capture._rtattr(capture.RTA_OIF, struct.pack("=I", 7))
    assert capture.parse_route_reply(_nlmsg(capture.RTM_NEWROUTE, body)) == 7


def test_route_reply_errors_and_garbage() -> None:
    assert capture.parse_route_reply(_nlmsg(2, struct.pack("=i", -errno.ENETUNREACH))) is None
    assert capture.parse_route_reply(b"\x01\x02") is None
    body = capture.RTMSG.pack(2, 32, 0, 0, 254, 0, 0, 1, 0) + struct.pack("=HH", 200, 4)
    assert capture.parse_route_reply(_nlmsg(capture.RTM_NEWROUTE, body)) is None


def _diag_msg(state: int, peer_port: int, peer: str) -> bytes:
    raw_peer = socket.inet_aton(peer).ljust(16, b"\0")
    return _nlmsg(sockdiag.SOCK_DIAG_BY_FAMILY, struct.pack("=BBBB", 2, state, 0, 0)
                  + struct.pack("!HH", 80, peer_port) + b"\0" * 16 + raw_peer
                  + b"\0" * (sockdiag.DIAG_MSG_LEN - 40))


def test_state_reply() -> None:
    want = struct.pack("!H", 5555) + socket.inet_aton("10.0.0.2").ljust(16, b"\0")
    assert rawtcp.parse_state_reply(_diag_msg(8, 5555, "10.0.0.2"), want) == 8
    # The kernel answers with the listener when the connection is gone.
    assert rawtcp.parse_state_reply(_diag_msg(10, 0, "0.0.0.0"), want) is None
    enoent = _nlmsg(sockdiag.NLMSG_ERROR, struct.pack("=i", -errno.ENOENT))
    assert rawtcp.parse_state_reply(enoent, want) is None
    eperm = _nlmsg(sockdiag.NLMSG_ERROR, struct.pack("=i", -errno.EPERM))
    with pytest.raises(PermissionError):
        rawtcp.parse_state_reply(eperm, want)
    with pytest.raises(sockdiag.NetlinkParseError):
        rawtcp.parse_state_reply(_diag_msg(8, 5555, "10.0.0.2")[:40], want)


# --- addresses and permissions -----------------------------------------------------------

def test_v4_mapped_sockets_use_ipv4_packets() -> None:
    local, peer, family = rawtcp._wire_addresses(("::ffff:10.0.0.1", 80),
                                                 ("::ffff:10.0.0.2", 5), socket.AF_INET6)
    assert (local, peer, family) == (("10.0.0.1", 80), ("10.0.0.2", 5), socket.AF_INET)
    local, _, family = rawtcp._wire_addresses(("FD77:0::1", 80), ("fd77::2", 5),
                                              socket.AF_INET6)
    assert local == ("fd77::1", 80) and family == socket.AF_INET6
    with pytest.raises(ValueError, match="family"):
        rawtcp._wire_addresses(("10.0.0.1", 1), ("fd77::2", 2), socket.AF_INET)


def test_no_cap_net_raw_is_a_permission_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_args: object) -> socket.socket:
        raise PermissionError(errno.EPERM, "Operation not permitted")

    class NoRawSockets:  # capture's view of the socket module; other threads keep theirs
        socket = staticmethod(refuse)

        def __getattr__(self, name: str) -> object:
            return getattr(socket, name)

    monkeypatch.setattr(capture, "socket", NoRawSockets())
    with pytest.raises(PermissionDeniedError, match="CAP_NET_RAW") as info:
        rawtcp.rst_kill(("10.0.0.1", 80), ("10.0.0.2", 5), socket.AF_INET)
    assert info.value.exit_code == 4
    assert "\n" not in str(info.value)


# --- the retry logic, with the kernel replaced by a script ----------------------------

ANSWER = Segment(*V4_LOCAL[:1], *V4_PEER[:1], V4_LOCAL[1], V4_PEER[1], 500, 900, TH_ACK)
SILENT_LIMITED = rawtcp._Round(None, skipped=1, challenged=1, challenge_acks=0)
SILENT_BUDGET = rawtcp._Round(None, skipped=0, challenged=1, challenge_acks=0)
SILENT_LOST = rawtcp._Round(None, skipped=0, challenged=1, challenge_acks=1)
ANSWERED = rawtcp._Round(ANSWER, 0, 0, 0)


class FakeKernel:
    """Stands in for the provocations, RSTs and look-ups of one kill."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, rounds: list[rawtcp._Round],
                 resets: list[bool], states: list[int | None],
                 sysctls: dict[str, int] | None = None) -> None:
        self.rounds, self.resets, self.states = rounds, resets, states
        self.sleeps: list[float] = []
        self.peer_resets = 0
        values = {"tcp_invalid_ratelimit": 500, "tcp_challenge_ack_limit": rawtcp.INT_MAX,
                  **(sysctls or {})}
        monkeypatch.setattr(rawtcp, "_provoke", lambda *_a: self.rounds.pop(0))
        monkeypatch.setattr(rawtcp, "_reset", self._reset)
        monkeypatch.setattr(rawtcp, "socket_state", lambda *_a: self.states.pop(0))
        monkeypatch.setattr(rawtcp, "_sysctl", lambda name, default: values.get(name, default))
        monkeypatch.setattr(rawtcp, "_reset_peer", self._reset_peer)
        monkeypatch.setattr(rawtcp.time, "sleep", self.sleeps.append)

    def _reset(self, result: rawtcp.RstResult, _tools: object, answer: Segment,
               _timeout: float) -> bool:
        result.rcv_nxt, result.snd_nxt = answer.ack, answer.end_seq
        return self.resets.pop(0)

    def _reset_peer(self, result: rawtcp.RstResult, _tools: object) -> None:
        self.peer_resets += 1
        result.peer_rst = True

    def run(self, state: int = 8, attempts: int = 3) -> rawtcp.RstResult:
        result = rawtcp.RstResult("no-answer", V4_LOCAL, V4_PEER, socket.AF_INET, state=state)
        tools = rawtcp._Tools(None, None, 0, None)  # type: ignore[arg-type]
        rawtcp._run(result, tools, rawtcp.RstOptions(timeout=0.1, attempts=attempts))
        return result


def test_rate_limited_round_is_waited_out_and_alternated(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeKernel(monkeypatch, [SILENT_LIMITED, ANSWERED], [True], [8])
    result = fake.run()
    assert result.killed and result.rate_limited and result.peer_rst
    assert result.provocations == ["syn", "ack"]
    assert fake.sleeps == [pytest.approx(0.52)]
    assert (result.rcv_nxt, result.snd_nxt) == (900, 500)
    assert "tcp_invalid_ratelimit" in result.notes[0]


def test_budget_silence_names_the_sysctl(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeKernel(monkeypatch, [SILENT_BUDGET, SILENT_BUDGET], [], [8],
                      {"tcp_challenge_ack_limit": 3, "tcp_invalid_ratelimit": 1000})
    result = fake.run(attempts=2)
    assert result.outcome == "no-answer" and result.rate_limited
    assert "tcp_challenge_ack_limit = 3" in result.notes[0]
    assert fake.sleeps == [pytest.approx(1.02)]
    # the ACK round cannot be blamed on the budget
    assert result.notes[1].startswith("ack: no answer seen")


def test_answer_that_never_leaves_stops_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeKernel(monkeypatch, [SILENT_LOST], [], [])
    result = fake.run()
    assert result.outcome == "no-answer" and result.provocations == ["syn"]
    assert not result.rate_limited and "never left" in result.notes[0]
    assert fake.sleeps == []


def test_survivor_is_tried_again_then_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeKernel(monkeypatch, [ANSWERED] * 3, [False] * 3, [1, 1])
    result = fake.run()
    assert result.outcome == "survived" and not result.peer_rst
    assert result.provocations == ["syn", "ack", "syn"] and len(fake.sleeps) == 2
    assert fake.peer_resets == 0


def test_late_rst_effect_counts_as_killed(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeKernel(monkeypatch, [ANSWERED], [False], [None])
    result = fake.run()
    assert result.killed and result.notes == [] and fake.peer_resets == 1


def test_socket_closing_by_itself_is_gone_and_never_provoked_again(
        monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeKernel(monkeypatch, [SILENT_LIMITED], [], [None])
    result = fake.run()
    assert result.outcome == "gone" and result.provocations == ["syn"]
    assert fake.peer_resets == 0


def test_time_wait_starts_with_an_ack(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeKernel(monkeypatch, [ANSWERED], [False], [None], {"tcp_rfc1337": 1})
    result = fake.run(state=TcpState.TIME_WAIT)
    assert result.provocations == ["ack"] and result.outcome == "survived"
    assert result.notes == ["net.ipv4.tcp_rfc1337 = 1: time-wait sockets ignore RSTs"]
