"""The `rst` kill method: end a TCP socket with forged segments (IPv4 and IPv6).

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
Segments are built and parsed in tcpseg.py, sent and captured in capture.py.

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

import errno
import ipaddress
import os
import random
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..model import ALL_STATES_MASK, Socket, TcpState
from . import netns, procfs, sockdiag
from .capture import Capture, RawSender, interface_index, route_interface
from .tcpseg import TH_ACK, TH_RST, TH_SYN, Segment, endpoint_text

# States whose sockets answer a stray segment with an ACK and accept an exact RST.
SUPPORTED_STATES = frozenset({TcpState.ESTABLISHED, TcpState.FIN_WAIT1, TcpState.FIN_WAIT2,
                              TcpState.CLOSE_WAIT, TcpState.LAST_ACK, TcpState.CLOSING,
                              TcpState.TIME_WAIT})
SKIP_COUNTERS = ("TCPACKSkippedChallenge", "TCPACKSkippedSeq", "TCPACKSkippedPAWS",
                 "TCPACKSkippedFinWait2", "TCPACKSkippedTimeWait")
INT_MAX = 2**31 - 1
NO_COOKIE = 0xFFFFFFFFFFFFFFFF  # INET_DIAG_NOCOOKIE: match any socket


# --- is the socket still there? ----------------------------------------------

def socket_state(local: tuple[str, int], peer: tuple[str, int],
                 cookie: int | None = None) -> int | None:
    """The kernel's state of the TCP socket with this 4-tuple, None when there is none.

    An exact sock_diag request (no dump), so its cost does not grow with the
    number of sockets on the host; it finds time-wait sockets too. With a
    cookie, a different socket that took over the 4-tuple counts as none.
    """
    family = socket.AF_INET6 if ":" in local[0] else socket.AF_INET
    wanted = Socket(0, family, 0, local[0], local[1], peer[0], peer[1], 0,
                    NO_COOKIE if cookie is None else cookie, 0, 0, 0)
    sockid = sockdiag.sockid(wanted)
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


# --- the kill ---------------------------------------------------------------------

def _tcp_ext() -> dict[str, int]:
    return procfs.read_counters().get("TcpExt", {})


def _sysctl(name: str, default: int) -> int:
    value = procfs.read_int_file(f"{procfs.PROC}/sys/net/ipv4/{name}")
    return default if value is None else value


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


@dataclass(frozen=True)
class RstOptions:
    """How rst_kill() goes about it.

    ifname: the interface to watch for the socket's answer (default: the
    route to the peer). also_peer: reset the peer too, once ours is gone.
    timeout: seconds to wait for each answer. attempts: provocations at
    most, spaced by the kernel's ratelimit interval.
    """

    ifname: str | None = None
    also_peer: bool = True
    timeout: float = 1.0
    attempts: int = 3


def rst_kill(local: tuple[str, int], peer: tuple[str, int], family: int, *,
             cookie: int | None = None, opts: RstOptions = RstOptions()) -> RstResult:
    """End the TCP socket local<->peer with forged segments; see the module docstring.

    Runs in the calling thread's network namespace. `cookie` (the socket's
    sock_diag cookie) makes sure a socket that reused the 4-tuple since the
    caller looked is left alone. Raises PermissionDeniedError without
    CAP_NET_RAW; every other failure is an outcome in the result. For many
    sockets of one namespace, RstKiller.kill() saves a few milliseconds a socket.
    """
    with RstKiller() as killer:
        return killer.kill(local, peer, family, cookie=cookie, opts=opts)


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
             cookie: int | None = None, opts: RstOptions = RstOptions()) -> RstResult:
        """See rst_kill()."""
        started = time.monotonic()
        local, peer, family = _wire_addresses(local, peer, family)
        result = RstResult("no-answer", local, peer, family)
        try:
            sender = self._sender(family)
            result.state = socket_state(local, peer, cookie)
            if _refused(result, cookie):
                return result
            result.ifname = opts.ifname or route_interface(peer[0], local[0])
            capture = self._capture(result.ifname)
            capture.target(local, peer)
            tools = _Tools(sender, capture, interface_index(result.ifname), cookie)
            _run(result, tools, opts)
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


def _run(result: RstResult, tools: _Tools, opts: RstOptions) -> None:
    interval = _sysctl("tcp_invalid_ratelimit", 500) / 1000 + 0.02  # one jiffy and some
    challenge_limit = _sysctl("tcp_challenge_ack_limit", INT_MAX)
    # A time-wait socket may take a SYN as a new connection: start with the ACK there.
    kinds = ("ack", "syn") if result.state == TcpState.TIME_WAIT else ("syn", "ack")
    for attempt in range(opts.attempts):
        if attempt:
            time.sleep(interval)
            # Never provoke a socket that is gone: a SYN would reach the listener
            # on that port and start a handshake with the peer.
            if socket_state(result.local, result.peer, tools.cookie) is None:
                _vanished(result)
                break
        if _attempt(result, tools, kinds[attempt % 2], opts.timeout, challenge_limit):
            break
    if result.killed and opts.also_peer:
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
        result.notes.append(f"{kind}: cannot send to {endpoint_text(*result.local)}: "
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

