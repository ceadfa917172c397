"""The C dump parser and tcp_info decoder (sockdoctor._fast) against the Python reference.

Both are fed the same bytes — a recorded kernel dump, generated dumps, and
generated dumps broken on purpose (truncated, lengths too large or too small,
attributes of wrong sizes, bytes flipped) — and must agree on everything:
the sockets, the parser's state, and the exception with its message. Every
buffer is an exact-size bytes object, so that a read past its end is caught
when the extension is built with AddressSanitizer (.ci/run).
"""

from __future__ import annotations

import itertools
import os
import socket
import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context
from test_sockdiag_parse import as_older_replies, message_types, recorded_chunks

from sockdoctor.linux import native, sockdiag, tcpinfo
from sockdoctor.model import ALL_STATES_MASK, TcpInfo

fast = native.fast
# CI sets this: there a missing extension is a failure, not a skip.
REQUIRED = os.environ.get("SOCKDOCTOR_REQUIRE_FAST") == "1"
needs_fast = pytest.mark.skipif(fast is None and not REQUIRED,
                                reason="sockdoctor._fast is not built (or SOCKDOCTOR_PURE=1)")
pytestmark = needs_fast

ATTRS = {sockdiag.INET_DIAG_INFO, sockdiag.INET_DIAG_CONG, sockdiag.INET_DIAG_SKMEMINFO,
         sockdiag.INET_DIAG_SHUTDOWN, sockdiag.INET_DIAG_MARK, sockdiag.INET_DIAG_CGROUP_ID,
         sockdiag.INET_DIAG_MEMINFO, 5, 6, 30}
OPTIONS = [sockdiag.DumpOptions(ALL_STATES_MASK, info=i, age=a, mem=m, attrs=x, lazy_info=lz)
           for i in (False, True) for a in (False, True) for m in (False, True)
           for x in (False, True) for lz in (False, True)]


def outcome(chunks: list[bytes], opts: sockdiag.DumpOptions, use_c: bool) -> tuple[Any, ...]:
    """Everything a parser run leaves behind: sockets, state, and how it ended."""
    out: list[Any] = []
    parser = sockdiag.DumpParser(opts, 4026531840, out)
    error = None
    try:
        for chunk in chunks:
            if use_c:
                assert fast is not None
                fast.feed(parser, chunk)
            else:
                parser.feed_python(chunk)
    except Exception as exc:  # the very point: both must raise the same thing
        error = (type(exc), str(exc), getattr(exc, "errno", None))
    return out, error, parser.done, parser.interrupted, parser._layouts, parser._age_at


def assert_same(chunks: list[bytes], opts: sockdiag.DumpOptions) -> tuple[Any, ...]:
    python = outcome(chunks, opts, use_c=False)
    c = outcome(chunks, opts, use_c=True)
    assert c[1] == python[1]  # the error first: the clearest message when they differ
    assert c == python
    if currently_in_test_context():  # --hypothesis-show-statistics: how the cases ended
        event(python[1][1].split(" at ")[0][:30] if python[1] else
              f"parsed, {min(len(python[0]), 5)}+ sockets")
    return python


@pytest.mark.parametrize("older", [False, True], ids=["v2", "older-request"])
@pytest.mark.parametrize("opts", OPTIONS, ids=str)
def test_recorded_kernel_dump(opts: sockdiag.DumpOptions, older: bool) -> None:
    """As recorded, and as the replies to the older request (TCPDIAG_GETSOCK) would be."""
    chunks = as_older_replies(recorded_chunks()) if older else recorded_chunks()
    split = next(i for i, c in enumerate(chunks) if _has_done(c)) + 1  # the IPv4 dump ends here
    for part in (chunks[:split], chunks[split:]):
        out, error, done, *_ = assert_same(part, opts)
        assert error is None and done and out


def _has_done(chunk: bytes) -> bool:
    return any(kind == sockdiag.NLMSG_DONE for _, kind in message_types(chunk))


# --- generated dumps -----------------------------------------------------------

def rtattr(kind: int, payload: bytes) -> bytes:
    attr = struct.pack("=HH", 4 + len(payload), kind) + payload
    return attr + b"\0" * (-len(attr) % 4)


def nlmsg(kind: int, body: bytes, flags: int) -> bytes:
    msg = struct.pack("=IHHII", 16 + len(body), kind, flags, 1, 0) + body
    return msg + b"\0" * (-len(msg) % 4)


SIZES = st.one_of(st.sampled_from([0, 1, 3, 4, 7, 8, 35, 36, 59, 60, 64, 104, 232, 248, 280]),
                  st.integers(0, 320))
ATTR_KIND = st.one_of(st.sampled_from(sorted(ATTRS)),
                      st.sampled_from(sorted(ATTRS)).map(lambda k: k | 0x8000),
                      st.integers(0, 0xFFFF))
# A few attribute layouts shared by many messages, as the kernel does: the
# learned-layout caches of both parsers get exercised, then messages that
# break a learned layout.
LAYOUTS = st.lists(st.lists(st.tuples(ATTR_KIND, SIZES), max_size=6), min_size=1, max_size=3)


@st.composite
def diag_message(draw: st.DrawFn, layouts: list[list[tuple[int, int]]]) -> bytes:
    head = bytearray(draw(st.binary(min_size=72, max_size=72)))  # inet_diag_msg
    # now and then a family that is neither IPv4 nor IPv6
    head[0] = draw(st.integers(0, 99).map(lambda n: 44 if n == 0 else socket.AF_INET if n < 50
                                          else socket.AF_INET6))
    head[1] = draw(st.one_of(st.integers(1, 12), st.integers(0, 255)))
    if draw(st.booleans()):  # the same addresses as other messages: the name caches
        head[8:40] = (b"\x7f\0\0\1" + bytes(12)) * 2
    layout = draw(st.sampled_from(layouts))
    attrs = b"".join(rtattr(kind, draw(st.binary(min_size=size, max_size=size)))
                     for kind, size in layout)
    attrs += draw(st.binary(max_size=3))  # stray bytes: too few for an attribute header
    flags = draw(st.sampled_from([sockdiag.NLM_F_MULTI, sockdiag.NLM_F_MULTI,
                                  sockdiag.NLM_F_MULTI | sockdiag.NLM_F_DUMP_INTR]))
    return nlmsg(sockdiag.SOCK_DIAG_BY_FAMILY, bytes(head) + attrs, flags)


def other_message(kind: int, code: int) -> bytes:
    return nlmsg(kind, struct.pack("=i", code) + b"\0" * 16, 0)


@st.composite
def dumps(draw: st.DrawFn) -> bytes:
    layouts = draw(LAYOUTS)
    parts = draw(st.lists(diag_message(layouts), max_size=25))
    if draw(st.booleans()):  # errors and acks in the middle
        code = draw(st.sampled_from([0, -1, -13, -105, -4095, -4096, -(1 << 31), 7]))
        parts.insert(draw(st.integers(0, len(parts))), other_message(sockdiag.NLMSG_ERROR, code))
    if draw(st.booleans()):  # the buffer ends exactly where the last message does
        if not parts:
            return b""
        (length,) = struct.unpack_from("=I", parts[-1])
        return b"".join(parts)[:sum(map(len, parts)) - len(parts[-1]) + length]
    code = draw(st.sampled_from([0, 0, 0, -105, -4096]))
    return b"".join(parts) + other_message(sockdiag.NLMSG_DONE, code)


@st.composite
def chunked(draw: st.DrawFn, data: bytes) -> list[bytes]:
    """Split where recv() would (message boundaries) or anywhere (a broken reader)."""
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=3)))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


@st.composite
def broken(draw: st.DrawFn, data: bytes) -> bytes:
    """The same dump with a few bytes made hostile."""
    raw = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        if not raw:
            break
        at = draw(st.integers(0, len(raw) - 1))
        how = draw(st.sampled_from(["byte", "u16", "u32", "truncate"]))
        if how == "truncate":
            del raw[at:]
        elif how == "byte":
            raw[at] = draw(st.integers(0, 255))
        else:
            size = 2 if how == "u16" else 4
            value = draw(st.sampled_from([0, 1, 3, 4, 15, 16, 87, 88, 0xFFFF, 0xFFFFFFFF,
                                          len(raw) - at, len(raw) - at + 4]))
            raw[at:at + size] = (value & ((1 << 8 * size) - 1)).to_bytes(size, "little")
    return bytes(raw)


SETTINGS = settings(max_examples=400, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@SETTINGS
@given(st.data(), st.sampled_from(OPTIONS))
def test_generated_dumps_parse_the_same(data: st.DataObject,
                                        opts: sockdiag.DumpOptions) -> None:
    dump = data.draw(dumps())
    assert_same([dump], opts)
    assert_same(data.draw(chunked(dump)), opts)


@SETTINGS
@given(st.data(), st.sampled_from(OPTIONS))
def test_hostile_dumps_fail_the_same(data: st.DataObject, opts: sockdiag.DumpOptions) -> None:
    dump = data.draw(broken(data.draw(dumps())))
    assert_same(data.draw(chunked(dump)), opts)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.sampled_from(OPTIONS))
def test_random_bytes_fail_the_same(raw: bytes, opts: sockdiag.DumpOptions) -> None:
    assert_same([raw], opts)


@pytest.mark.parametrize("garbage, message", [
    (b"\x01\x02\x03", "truncated netlink header at byte 0"),
    (struct.pack("=IHHII", 4096, 20, 0, 0, 0), "netlink message length 4096 at byte 0 is out"),
    (nlmsg(20, b"\0" * 40, 0), "inet_diag_msg of 40 bytes is too short"),
    (nlmsg(20, b"\x02" + b"\0" * 71 + struct.pack("=HH", 200, 8), 0), "attribute length 200"),
    (nlmsg(20, b"\x63" + b"\0" * 71, 0), "unknown address family 99 at byte 0"),
    (other_message(sockdiag.NLMSG_ERROR, -(1 << 31)), "is not an errno"),
])
def test_each_hostile_case_is_the_same_clean_error(garbage: bytes, message: str) -> None:
    for opts in OPTIONS:
        if not opts.attrs:  # attributes are only walked when some are wanted
            continue
        _out, error, *_ = assert_same([garbage], opts)
        assert error is not None and error[0] is sockdiag.NetlinkParseError
        assert message in error[1]


def test_a_kernel_error_is_the_same_oserror() -> None:
    _out, error, *_ = assert_same([other_message(sockdiag.NLMSG_ERROR, -13)], OPTIONS[0])
    assert error == (PermissionError, "[Errno 13] Permission denied", 13)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=320))
def test_tcp_info_of_every_length_decodes_the_same(blob: bytes) -> None:
    assert fast is not None
    assert fast.tcp_info(blob) == tcpinfo.decode_struct_python(blob)


def test_tcp_info_field_tables_agree() -> None:
    """The C table of field sizes is the Python one: each field found where Python puts it."""
    assert fast is not None
    for index, (name, _code) in enumerate(tcpinfo._FIELDS):
        if name in ("wscale_bits", "rate_flags", "ecn_bits"):
            continue
        layout, names = tcpinfo._layout(1000)
        values = [0] * len(names)
        values[index] = 1
        blob = layout.pack(*values)
        decoded = fast.tcp_info(blob)
        assert getattr(decoded, name) == 1, name
        assert fast.tcp_info(blob[:layout.size - 1]) == tcpinfo.decode_struct_python(
            blob[:layout.size - 1])
    assert fast.tcp_info(b"") == TcpInfo()


def test_the_extension_is_in_use_unless_turned_off() -> None:
    """What `sockdoctor --version` reports is what the modules use."""
    assert fast is not None
    assert sockdiag.fast is fast and tcpinfo.fast is fast
    assert native.describe().startswith("fast path: C extension")
