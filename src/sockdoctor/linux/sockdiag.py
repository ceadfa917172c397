"""NETLINK_SOCK_DIAG for TCP: dump sockets, and destroy them (SOCK_DESTROY).

Hand-written on purpose (see ARCHITECTURE.md): decoding with
struct.unpack_from costs about 2 µs a socket where a general netlink library
costs fifty times that. The netlink socket is bound to the network namespace
it was created in, so scanning another namespace means opening the socket
there (see netns.py) and handing it to these functions.
"""

from __future__ import annotations

import errno as errno_mod
import functools
import os
import socket
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from operator import attrgetter

from ..errors import SockdoctorError
from ..model import SkMemInfo, Socket, TcpState, state_mask
from . import tcpinfo
from .native import fast
from .oserrors import os_edge

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
# The older inet_diag request: the kernel answers it for every family in one
# walk of its socket hash (see dump()); its replies carry this type too.
TCPDIAG_GETSOCK = 18
SOCK_DESTROY = 21

NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_MULTI = 0x2
NLM_F_ACK = 0x4
NLM_F_DUMP_INTR = 0x10
NLM_F_DUMP = 0x300
NETLINK_CAP_ACK = 10
SOL_NETLINK = 270

# Response attributes (enum in include/uapi/linux/inet_diag.h).
INET_DIAG_MEMINFO = 1
INET_DIAG_INFO = 2
INET_DIAG_VEGASINFO = 3
INET_DIAG_CONG = 4
INET_DIAG_SKMEMINFO = 7
INET_DIAG_SHUTDOWN = 8
INET_DIAG_DCTCPINFO = 9
INET_DIAG_MARK = 15
INET_DIAG_BBRINFO = 16
# The congestion control's own info: asking for VEGASINFO brings whichever of
# the three the socket's algorithm has (the request's ext byte has no bit 16).
CC_INFO_ATTRIBUTES = (INET_DIAG_VEGASINFO, INET_DIAG_DCTCPINFO, INET_DIAG_BBRINFO)
INET_DIAG_CGROUP_ID = 21
INET_DIAG_REQ_BYTECODE = 1  # request attribute

# Request bits in idiag_ext: bit (attribute - 1).
EXT_INFO = 1 << (INET_DIAG_INFO - 1)
EXT_CONG = 1 << (INET_DIAG_CONG - 1)
EXT_VEGASINFO = 1 << (INET_DIAG_VEGASINFO - 1)
EXT_SKMEMINFO = 1 << (INET_DIAG_SKMEMINFO - 1)

NLMSGHDR = struct.Struct("=IHHII")
REQ_V2 = struct.Struct("=BBBBI")  # family, protocol, ext, pad, states; then the sockid
REQ_V1 = struct.Struct("=BBBB48sII")  # family, src_len, dst_len, ext, sockid, states, dbs
SOCKID_TAIL = struct.Struct("=IQ")  # idiag_if, cookie (two native u32 = one native u64)
# inet_diag_msg: family state timer retrans | sport dport (big endian, decoded
# below) | src[16] dst[16] | if cookie | expires rqueue wqueue uid inode
DIAG_MSG = struct.Struct("=BBBBHH16s16sIQIIIII")
HDR_DIAG_MSG = struct.Struct("=IHHII" + DIAG_MSG.format[1:])  # both in one unpack
RTATTR = struct.Struct("=HH")
U32 = struct.Struct("=I")
AGE_IN_ATTR = 4 + tcpinfo.LAST_ACK_RECV_OFFSET  # from an INET_DIAG_INFO header to the field
U64 = struct.Struct("=Q")
SKMEMINFO = struct.Struct("=9I")
NLMSG_HDRLEN = NLMSGHDR.size
DIAG_MSG_LEN = DIAG_MSG.size  # 72
RECV_BUFSIZE = 1 << 20

MAX_DUMP_RETRIES = 3
MAX_ERRNO = 4095  # the kernel's: a negative code below -MAX_ERRNO is no errno
ALL_STATES = 0xFFFFFFFF

# States in which "time since the peer's last ACK" is meaningful: the peer has
# spoken at least once. Not LISTEN or SYN_SENT, whose timestamp is never set.
AGED_STATES = state_mask(TcpState.ESTABLISHED, TcpState.FIN_WAIT1, TcpState.FIN_WAIT2,
                         TcpState.CLOSE, TcpState.CLOSE_WAIT, TcpState.LAST_ACK,
                         TcpState.CLOSING)


class NetlinkParseError(ValueError):
    """The kernel (or a recording) handed us bytes that are not valid netlink."""


class DumpInterrupted(SockdoctorError):
    """The kernel flagged the dump as inconsistent (NLM_F_DUMP_INTR), retry after retry."""

    def __init__(self, message: str = "the kernel kept interrupting the dump (sockets "
                 "changing too fast); try again") -> None:
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class DumpOptions:
    """What to ask the kernel for and what to decode."""

    states: int
    info: bool = False  # full tcp_info + congestion control name
    age: bool = False  # tcp_info requested, only last_ack_recv decoded
    mem: bool = False  # skmeminfo
    attrs: bool = False  # shutdown, cgroup id, mark (always sent by the kernel)
    lazy_info: bool = False  # with info: keep tcp_info raw in Socket.info_blob
    bytecode: bytes = b""  # an in-kernel filter (port_filter()); only matches come back
    ports: frozenset[int] = frozenset()  # the ports `bytecode` accepts (the BPF source's filter)

    @property
    def ext(self) -> int:
        ext = 0
        if self.info or self.age:
            ext |= EXT_INFO
        if self.info:
            ext |= EXT_CONG | EXT_VEGASINFO
        if self.mem:
            ext |= EXT_SKMEMINFO
        return ext

    def wanted_attributes(self) -> frozenset[int]:
        wanted = set()
        if self.info or self.age:
            wanted.add(INET_DIAG_INFO)
        if self.info:
            wanted.update((INET_DIAG_CONG, *CC_INFO_ATTRIBUTES))
        if self.mem:
            wanted.add(INET_DIAG_SKMEMINFO)
        if self.attrs:
            wanted.update((INET_DIAG_SHUTDOWN, INET_DIAG_CGROUP_ID, INET_DIAG_MARK))
        return frozenset(wanted)

    @property
    def only_age(self) -> bool:
        return self.age and not (self.info or self.mem or self.attrs)


def open_socket() -> socket.socket:
    """A sock_diag netlink socket in the caller's current network namespace."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECV_BUFSIZE)
        sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
        sock.bind((0, 0))
    except OSError:
        sock.close()
        raise
    return sock


def build_request(family: int, states: int, ext: int, seq: int, msg_type: int,
                  flags: int, sockid: bytes) -> bytes:
    """One inet_diag_req_v2 netlink message about the socket `sockid` names."""
    body = REQ_V2.pack(family, socket.IPPROTO_TCP, ext, 0, states) + sockid
    return NLMSGHDR.pack(NLMSG_HDRLEN + len(body), msg_type, flags, seq, 0) + body


def dump_request(family: int, states: int, ext: int, seq: int, bytecode: bytes = b"") -> bytes:
    """A request for every socket of `family` in `states`, and its filter program if any.

    AF_UNSPEC asks for both families in one walk, through the older
    TCPDIAG_GETSOCK request (struct inet_diag_req); the others are v2.
    """
    if family == socket.AF_UNSPEC:
        kind = TCPDIAG_GETSOCK
        body = REQ_V1.pack(family, 0, 0, ext, b"\0" * 48, states, 0)
    else:
        kind = SOCK_DIAG_BY_FAMILY
        body = REQ_V2.pack(family, socket.IPPROTO_TCP, ext, 0, states) + b"\0" * 48
    if bytecode:
        body += RTATTR.pack(4 + len(bytecode), INET_DIAG_REQ_BYTECODE) + bytecode
    return NLMSGHDR.pack(NLMSG_HDRLEN + len(body), kind, NLM_F_REQUEST | NLM_F_DUMP, seq,
                         0) + body


# --- in-kernel filter programs (INET_DIAG_REQ_BYTECODE) ------------------------
# Each op is {code u8, yes u8, no u16}: on a match the kernel moves `yes` bytes
# on, otherwise `no` bytes; landing exactly on the end accepts the socket,
# jumping 4 past it rejects. The kernel audits programs by walking the `yes`
# steps, so `yes` always goes to the next op and accepting early takes a JMP.

BC_JMP = 1
BC_S_EQ = 11
BC_D_EQ = 12
BC_OP = struct.Struct("=BBH")
MAX_FILTER_PORTS = 64  # beyond this a program costs more than it saves


def port_filter(ports: Iterable[int]) -> bytes:
    """A program accepting sockets whose local or peer port is one of `ports`."""
    conds = [(code, port) for port in sorted(set(ports)) for code in (BC_S_EQ, BC_D_EQ)]
    if not conds:
        return b""
    total = 12 * (len(conds) - 1) + 8
    program = bytearray()
    for i, (code, port) in enumerate(conds):
        last = i == len(conds) - 1
        # no match: skip this op, its operand and (unless last) the JMP after it
        no = 8 + 4 if last else 12
        program += BC_OP.pack(code, 8, no) + BC_OP.pack(0, 0, port)
        if not last:  # a match lands here: jump to the end, accepting
            program += BC_OP.pack(BC_JMP, 4, total - len(program))
    return bytes(program)


_BOTH = frozenset((socket.AF_INET, socket.AF_INET6))
_FAMILY = attrgetter("family")
_single_walk = True  # until a kernel refuses the older request


def dump(sock: socket.socket, opts: DumpOptions, netns: int = 0,
         families: Iterable[int] = (socket.AF_INET, socket.AF_INET6)) -> list[Socket]:
    """Every TCP socket of the given families in the socket's namespace, IPv4 first.

    The kernel walks its whole socket hash (every namespace's sockets) for
    each dump, so a per-family dump costs two walks per namespace; the older
    request form asks for both families in one (on a host with 143k sockets
    elsewhere, ~22 ms instead of ~45 ms per namespace). A kernel that refuses
    it gets the per-family dumps from then on.
    """
    global _single_walk
    families = tuple(families)
    if _single_walk and frozenset(families) == _BOTH:
        try:
            result = _dump_family(sock, socket.AF_UNSPEC, opts, netns)
        except OSError as exc:
            # EOPNOTSUPP: no handler for the older request; EINVAL: an unknown message
            # type, or a filter program the kernel refused (then the v2 dumps decide).
            if exc.errno not in (errno_mod.EINVAL, errno_mod.EOPNOTSUPP):
                raise
            if exc.errno == errno_mod.EOPNOTSUPP or not opts.bytecode:
                _single_walk = False
        else:
            result.sort(key=_FAMILY)  # stable: each family keeps the kernel's order
            return result
    result = []
    for family in families:
        result.extend(_dump_family(sock, family, opts, netns))
    return result


def dump_here(opts: DumpOptions, netns: int = 0,
              families: Iterable[int] = (socket.AF_INET, socket.AF_INET6)) -> list[Socket]:
    """dump() on a socket of its own, in the calling thread's namespace: the scan's
    edge, so an OSError leaves as sockdoctor's error (oserrors.user_error)."""
    with os_edge():
        sock = open_socket()
        try:
            return dump(sock, opts, netns=netns, families=families)
        finally:
            sock.close()


def _dump_family(sock: socket.socket, family: int, opts: DumpOptions,
                 netns: int) -> list[Socket]:
    """One family, or every one with AF_UNSPEC (the older request)."""
    for attempt in range(MAX_DUMP_RETRIES + 1):
        try:
            return _dump_once(sock, family, opts, netns, seq=attempt + 1)
        except DumpInterrupted:
            if attempt == MAX_DUMP_RETRIES:
                raise
    raise AssertionError("unreachable")


def _dump_once(sock: socket.socket, family: int, opts: DumpOptions, netns: int,
               seq: int) -> list[Socket]:
    sock.send(dump_request(family, opts.states, opts.ext, seq, opts.bytecode))
    out: list[Socket] = []
    parser = DumpParser(opts, netns, out)
    buf = bytearray(RECV_BUFSIZE)
    view = memoryview(buf)
    while not parser.done:
        n = sock.recv_into(buf)
        if n == 0:
            raise NetlinkParseError("netlink socket closed before the dump ended")
        parser.feed(view[:n])
    if parser.interrupted:
        raise DumpInterrupted()
    return out


class DumpParser:
    """Turns the chunks of one sock_diag dump into Socket objects.

    feed() runs the C parser of sockdoctor._fast when it is installed (see
    native.py) and this Python one otherwise: the Python code is the
    reference, and the C code keeps its state in this object's attributes.
    """

    def __init__(self, opts: DumpOptions, netns: int, out: list[Socket]) -> None:
        self.opts = opts
        self.netns = netns
        self.out = out
        self.done = False
        self.interrupted = False
        self._names4: dict[bytes, str] = {}  # raw 16-byte address field -> text
        self._names6: dict[bytes, str] = {}
        self._layouts: dict[int, _Layout] = {}  # message size -> wanted attributes
        self._wanted = opts.wanted_attributes()
        self._cong: dict[bytes, str] = {}
        # message length -> (offset of the tcp_info attribute, its expected header)
        self._age_at: dict[int, tuple[int, tuple[int, int]]] = {}
        # The same options as plain integers, for the C parser.
        self._fast_mode = (opts.only_age | opts.info << 1 | opts.lazy_info << 2)
        self._wanted_bits = sum(1 << kind for kind in self._wanted)
        self._aged_bits = AGED_STATES

    def feed(self, data: bytes | memoryview) -> None:
        """Parse one recv() worth of messages; raises NetlinkParseError on garbage."""
        if fast is not None:
            fast.feed(self, data)
        else:
            self.feed_python(data)

    def feed_python(self, data: bytes | memoryview) -> None:
        """feed() in Python: the reference for the C parser.

        The hot loop of every scan: header and inet_diag_msg are unpacked in
        one call, addresses are converted once per distinct value, and the
        common case runs on local names only.
        """
        end = len(data)
        offset = 0
        unpack_socket = HDR_DIAG_MSG.unpack_from
        # Separate caches: an IPv4 field and an IPv6 one can hold the same bytes.
        caches = {socket.AF_INET: self._names4, socket.AF_INET6: self._names6}
        netns = self.netns
        append = self.out.append
        # what follows an inet_diag_msg, if anything was asked for
        extras = (self._age if self.opts.only_age else self._all_attributes) \
            if self._wanted else None
        while offset < end:
            if end - offset < NLMSG_HDRLEN:
                raise NetlinkParseError(f"truncated netlink header at byte {offset}")
            if end - offset >= HDR_DIAG_MSG.size:
                (length, msg_type, flags, _seq, _pid, family, state, timer, retrans, sport,
                 dport, src, dst, ifindex, cookie, expires, rqueue, wqueue, uid,
                 inode) = unpack_socket(data, offset)
            else:
                length, msg_type, flags, _seq, _pid = NLMSGHDR.unpack_from(data, offset)
            if length < NLMSG_HDRLEN or offset + length > end:
                raise NetlinkParseError(
                    f"netlink message length {length} at byte {offset} is out of bounds")
            if flags & NLM_F_DUMP_INTR:
                self.interrupted = True
            if msg_type in (SOCK_DIAG_BY_FAMILY, TCPDIAG_GETSOCK):
                if length < HDR_DIAG_MSG.size:
                    raise NetlinkParseError(
                        f"inet_diag_msg of {length - NLMSG_HDRLEN} bytes is too short")
                names = caches.get(family)
                if names is None:
                    raise NetlinkParseError(f"unknown address family {family} at byte {offset}")
                sk = Socket(netns, family, state, names.get(src) or _address(names, family, src),
                            ((sport & 0xFF) << 8) | (sport >> 8),
                            names.get(dst) or _address(names, family, dst),
                            ((dport & 0xFF) << 8) | (dport >> 8), inode, cookie, uid,
                            rqueue, wqueue, timer, expires, retrans, ifindex)
                if extras is not None and length > HDR_DIAG_MSG.size:
                    extras(sk, data, offset, length)
                append(sk)
            elif self._control(data, offset, length, msg_type):
                return
            offset += (length + 3) & ~3

    def _age(self, sk: Socket, data: bytes | memoryview, offset: int, length: int) -> None:
        """The common `ls` case: only tcp_info's last-ACK age, read in place."""
        if (1 << sk.state) & AGED_STATES:
            known = self._age_at.get(length)
            if known is not None and RTATTR.unpack_from(data, offset + known[0]) == known[1]:
                sk.age_ms = U32.unpack_from(data, offset + known[0] + AGE_IN_ATTR)[0]
            else:
                self._learn_age(sk, data, offset, length)

    def _all_attributes(self, sk: Socket, data: bytes | memoryview, offset: int,
                        length: int) -> None:
        self._attributes(sk, data, offset + NLMSG_HDRLEN, offset + length)

    def _control(self, data: bytes | memoryview, offset: int, length: int,
                 msg_type: int) -> bool:
        """NLMSG_DONE (True: the dump is over) and NLMSG_ERROR; other types are skipped."""
        if msg_type == NLMSG_DONE:
            self.done = True
            _raise_if_error(data, offset, length)
            return True
        if msg_type == NLMSG_ERROR:
            _raise_if_error(data, offset, length)
        return False

    # The kernel emits the same attributes in the same order for every socket
    # of a kind, so where each one sits depends only on the message size.
    # Walking ten attributes per socket in Python cost more than everything
    # else together; instead the layout is learned from one full walk per
    # size, and each later message only has the headers it needs re-checked.

    def _attributes(self, sk: Socket, data: bytes | memoryview, start: int, end: int) -> None:
        size = end - start
        layout = self._layouts.get(size)
        if layout is None or not _same_headers(layout, data, start):
            layout = self._layouts[size] = self._learn(data, start, end)
        for raw_kind, offset, length in layout:
            kind = raw_kind & 0x3FFF
            body = start + offset + 4
            size = length - 4
            if kind == INET_DIAG_INFO:
                if self.opts.lazy_info:
                    sk.info_blob = bytes(data[body:body + size])
                elif self.opts.info:
                    sk.info = tcpinfo.decode_struct(data[body:body + size])
                if (1 << sk.state) & AGED_STATES and size >= tcpinfo.LAST_ACK_RECV_OFFSET + 4:
                    sk.age_ms = U32.unpack_from(data, body + tcpinfo.LAST_ACK_RECV_OFFSET)[0]
            elif kind == INET_DIAG_CONG:
                raw = bytes(data[body:body + size])
                cong = self._cong.get(raw)
                if cong is None:
                    cong = self._cong[raw] = raw.split(b"\0", 1)[0].decode("ascii", "replace")
                sk.cong = cong
            elif kind in CC_INFO_ATTRIBUTES:
                sk.cc_info = bytes((kind,)) + bytes(data[body:body + size])
            elif kind == INET_DIAG_SHUTDOWN and size >= 1:
                sk.shutdown = data[body]
            elif kind == INET_DIAG_CGROUP_ID and size >= 8:
                sk.cgroup_id = U64.unpack_from(data, body)[0]
            elif kind == INET_DIAG_MARK and size >= 4:
                sk.mark = U32.unpack_from(data, body)[0]
            elif kind == INET_DIAG_SKMEMINFO and size >= SKMEMINFO.size:
                sk.mem = SkMemInfo(*SKMEMINFO.unpack_from(data, body))

    def _learn_age(self, sk: Socket, data: bytes | memoryview, offset: int, length: int) -> None:
        """Full walk for a message size not seen yet; remembers where tcp_info was."""
        self._attributes(sk, data, offset + NLMSG_HDRLEN, offset + length)
        layout = self._layouts.get(length - NLMSG_HDRLEN, ())
        for raw_kind, at, attr_len in layout:
            if raw_kind & 0x3FFF == INET_DIAG_INFO and attr_len >= AGE_IN_ATTR + 4:
                self._age_at[length] = (NLMSG_HDRLEN + at, (attr_len, raw_kind))

    def _learn(self, data: bytes | memoryview, start: int, end: int) -> _Layout:
        layout = []
        offset = start + DIAG_MSG_LEN
        while offset + 4 <= end:
            length, raw_kind = RTATTR.unpack_from(data, offset)
            if length < 4 or offset + length > end:
                raise NetlinkParseError(
                    f"attribute length {length} at byte {offset} is out of bounds")
            if raw_kind & 0x3FFF in self._wanted:
                layout.append((raw_kind, offset - start, length))
            offset += (length + 3) & ~3
        return tuple(layout)


def _address(names: dict[bytes, str], family: int, raw: bytes) -> str:
    """Text form of a 16-byte address field (IPv4 uses its first 4 bytes), cached."""
    text = names[raw] = socket.inet_ntop(family, raw[:4] if family == socket.AF_INET else raw)
    return text


_Layout = tuple[tuple[int, int, int], ...]  # (raw attribute type, offset, length)


def _same_headers(layout: _Layout, data: bytes | memoryview, start: int) -> bool:
    unpack = RTATTR.unpack_from
    for raw_kind, offset, length in layout:
        if unpack(data, start + offset) != (length, raw_kind):
            return False
    return True


def iter_attrs(data: bytes | memoryview, offset: int,
               end: int) -> Iterator[tuple[int, memoryview]]:
    """(type, payload) of each rtattr between offset and end."""
    view = memoryview(data)
    while offset + 4 <= end:
        length, kind = RTATTR.unpack_from(data, offset)
        if length < 4 or offset + length > end:
            raise NetlinkParseError(f"attribute length {length} at byte {offset} is out of bounds")
        yield kind & 0x3FFF, view[offset + 4:offset + length]
        offset += (length + 3) & ~3


def _raise_if_error(data: bytes | memoryview, offset: int, length: int) -> None:
    """NLMSG_ERROR and NLMSG_DONE carry a negative errno when the kernel refused."""
    if length < NLMSG_HDRLEN + 4:
        return
    (code,) = struct.unpack_from("=i", data, offset + NLMSG_HDRLEN)
    if code < -MAX_ERRNO:
        raise NetlinkParseError(f"netlink error code {code} at byte {offset} is not an errno")
    if code < 0:
        raise OSError(-code, os.strerror(-code))


# --- single sockets -----------------------------------------------------------

def lookup(sock: socket.socket, sk: Socket, opts: DumpOptions | None = None) -> Socket | None:
    """The kernel's current view of exactly this socket (same 4-tuple and cookie).

    An exact request, not a dump: its cost does not grow with the number of
    sockets. None when the socket is gone or another one took its 4-tuple.
    """
    opts = opts or DumpOptions(ALL_STATES)
    request = build_request(sk.family, ALL_STATES, opts.ext, 1, SOCK_DIAG_BY_FAMILY,
                            NLM_F_REQUEST, sockid(sk))
    sock.send(request)
    buf = bytearray(65536)
    n = sock.recv_into(buf)
    out: list[Socket] = []
    try:
        DumpParser(opts, sk.netns, out).feed(memoryview(buf)[:n])
    except OSError as exc:
        if exc.errno in (errno_mod.ENOENT, errno_mod.ESTALE):
            return None
        raise
    for found in out:
        if found.cookie == sk.cookie and found.peer_port == sk.peer_port:
            return found
    return None


def states_now(sock: socket.socket, sockets: list[Socket], batch: int = 256,
               ) -> list[int | None]:
    """Each socket's TCP state now (None: gone, or its 4-tuple taken by another one).

    Exact requests like lookup(), `batch` of them in one sendmsg, and only the
    state read from each answer: cheap enough to ask right before acting.
    """
    results: list[int | None] = [None] * len(sockets)
    for start in range(0, len(sockets), batch):
        chunk = sockets[start:start + batch]
        sock.send(b"".join(build_request(sk.family, ALL_STATES, 0, start + i + 1,
                                         SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, sockid(sk))
                           for i, sk in enumerate(chunk)))
        pending = len(chunk)
        buf = bytearray(RECV_BUFSIZE)
        while pending:
            n = sock.recv_into(buf)
            for seq, state in _iter_states(memoryview(buf)[:n]):
                if start < seq <= start + len(chunk):
                    results[seq - 1] = state
                    pending -= 1
    return results


def _iter_states(data: memoryview) -> Iterator[tuple[int, int | None]]:
    """(seq, state) per answer: an inet_diag_msg's state, None for an error."""
    offset, end = 0, len(data)
    while offset + NLMSG_HDRLEN <= end:
        length, msg_type, _flags, seq, _pid = NLMSGHDR.unpack_from(data, offset)
        if length < NLMSG_HDRLEN or offset + length > end:
            raise NetlinkParseError(f"netlink answer length {length} is out of bounds")
        if msg_type == NLMSG_ERROR:
            yield seq, None
        elif length >= NLMSG_HDRLEN + 2:
            yield seq, data[offset + NLMSG_HDRLEN + 1]  # inet_diag_msg.idiag_state
        offset += (length + 3) & ~3


# --- SOCK_DESTROY -----------------------------------------------------------

def sockid(sk: Socket) -> bytes:
    """The 48-byte inet_diag_sockid that names exactly this socket (cookie included)."""
    return (PORTS.pack(sk.local_port, sk.peer_port) + _wire_addr(sk.family, sk.local_addr)
            + _wire_addr(sk.family, sk.peer_addr) + SOCKID_TAIL.pack(sk.ifindex, sk.cookie))


PORTS = struct.Struct(">HH")


@functools.lru_cache(maxsize=4096)
def _wire_addr(family: int, addr: str) -> bytes:
    """An address as sockid carries it (16 bytes); the few distinct ones are cached."""
    return socket.inet_pton(family, addr).ljust(16, b"\0")


def destroy(sock: socket.socket, sockets: list[Socket], batch: int = 256) -> list[int]:
    """SOCK_DESTROY each socket; returns an errno per socket (0 = destroyed).

    Requests go out `batch` at a time in one sendmsg; the kernel acknowledges
    each one separately (NETLINK_CAP_ACK keeps the acks small).
    """
    results = [errno_mod.EINPROGRESS] * len(sockets)
    for start in range(0, len(sockets), batch):
        chunk = sockets[start:start + batch]
        msgs = [build_request(sk.family, 1 << sk.state, 0, start + i + 1, SOCK_DESTROY,
                              NLM_F_REQUEST | NLM_F_ACK, sockid(sk))
                for i, sk in enumerate(chunk)]
        sock.send(b"".join(msgs))
        pending = len(chunk)
        buf = bytearray(RECV_BUFSIZE)
        while pending:
            n = sock.recv_into(buf)
            for seq, code in _iter_acks(memoryview(buf)[:n]):
                index = seq - 1
                if start <= index < start + len(chunk) and results[index] == errno_mod.EINPROGRESS:
                    results[index] = code
                    pending -= 1
    return results


def _iter_acks(data: memoryview) -> Iterator[tuple[int, int]]:
    offset, end = 0, len(data)
    while offset + NLMSG_HDRLEN <= end:
        length, msg_type, _flags, seq, _pid = NLMSGHDR.unpack_from(data, offset)
        if length < NLMSG_HDRLEN or offset + length > end:
            raise NetlinkParseError(f"netlink ack length {length} is out of bounds")
        if msg_type == NLMSG_ERROR and length >= NLMSG_HDRLEN + 4:
            (code,) = struct.unpack_from("=i", data, offset + NLMSG_HDRLEN)
            yield seq, -code
        offset += (length + 3) & ~3


# --- destroy events (multicast groups, as `ss -E` listens) --------------------
# The kernel sends one SOCK_DIAG_BY_FAMILY message to these groups (enum
# sknetlink_groups in uapi/linux/sock_diag.h) when a socket of its namespace is
# freed: after the last close(), not at SOCK_DESTROY while a process still has
# the descriptor. The message has the 4-tuple, the cookie, the state and the
# socket's last tcp_info; the inode is 0 by then.

SKNLGRP_INET_TCP_DESTROY = 1
SKNLGRP_INET6_TCP_DESTROY = 3
DESTROY_GROUPS = {socket.AF_INET: SKNLGRP_INET_TCP_DESTROY,
                  socket.AF_INET6: SKNLGRP_INET6_TCP_DESTROY}
DESTROY_RCVBUF = 8 << 20  # bursts of closes: tens of thousands of messages
SO_RCVBUFFORCE = 33  # not in Python's socket module


def open_destroy_listener(families: Iterable[int] = (socket.AF_INET, socket.AF_INET6)
                          ) -> socket.socket:
    """A non-blocking socket subscribed to the TCP destroy events of the current namespace."""
    groups = 0
    for family in families:
        groups |= 1 << (DESTROY_GROUPS[family] - 1)
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK,
                         NETLINK_SOCK_DIAG)
    try:
        try:  # root may exceed rmem_max; others get what rmem_max allows
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, DESTROY_RCVBUF)
        except PermissionError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, DESTROY_RCVBUF)
        sock.bind((0, groups))
    except OSError:
        sock.close()
        raise
    return sock


def read_destroyed(sock: socket.socket, netns: int = 0) -> tuple[list[Socket], int]:
    """Destroy events waiting on a listener: the sockets, and how many reads overflowed.

    An overflow (ENOBUFS) means the kernel dropped messages because the socket's
    buffer was full; how many is not known, only that it happened.
    """
    out: list[Socket] = []
    overflows = 0
    buf = bytearray(RECV_BUFSIZE)
    view = memoryview(buf)
    parser = DumpParser(DumpOptions(ALL_STATES, info=True), netns, out)
    while True:
        try:
            n = sock.recv_into(buf)
        except BlockingIOError:
            break
        except OSError as exc:
            if exc.errno == errno_mod.ENOBUFS:
                overflows += 1
                continue
            raise
        if n == 0:
            break
        parser.feed(view[:n])
    return out, overflows


INET_DIAG_NOCOOKIE = 0xFFFFFFFFFFFFFFFF  # both u32 halves ~0: "any cookie"


def lookup_tuple(sock: socket.socket, family: int, local_addr: str, local_port: int,
                 peer_addr: str, peer_port: int, netns: int = 0) -> Socket | None:
    """The socket with exactly this 4-tuple in the socket's namespace, whatever its cookie.

    For `trace`, which learns of a new connection from a tracepoint that gives
    only the 4-tuple. The kernel's exact lookup falls back to a listener on
    the local port, so anything but the very same 4-tuple is ignored.
    """
    probe = Socket(netns, family, 0, local_addr, local_port, peer_addr, peer_port, 0,
                   INET_DIAG_NOCOOKIE, 0, 0, 0)
    request = build_request(family, ALL_STATES, 0, 1, SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST,
                            sockid(probe))
    sock.send(request)
    buf = bytearray(65536)
    n = sock.recv_into(buf)
    out: list[Socket] = []
    try:
        DumpParser(DumpOptions(ALL_STATES), netns, out).feed(memoryview(buf)[:n])
    except OSError as exc:
        if exc.errno in (errno_mod.ENOENT, errno_mod.ESTALE):
            return None
        raise
    for found in out:
        if (found.peer_port == peer_port and found.local_port == local_port
                and found.peer_addr == peer_addr and found.local_addr == local_addr):
            return found
    return None
