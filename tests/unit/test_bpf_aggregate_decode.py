"""aggregate.decode: the counting program's output (records, then the totals) as a Pass."""

from __future__ import annotations

import socket

import pytest

from sockdoctor.linux.bpf import BpfError
from sockdoctor.linux.bpf.aggregate import NO_AGE, RECORD, STATES, TOTALS, TOTALS_MAGIC, decode
from sockdoctor.model import TcpState


def totals(states: dict[int, int], ports: list[int]) -> bytes:
    words = [0] * 1024
    for port in ports:
        words[port >> 6] |= 1 << (port & 63)
    counts = [states.get(st, 0) for st in range(STATES)]
    return TOTALS.pack(TOTALS_MAGIC, sum(counts), *counts, *words)


def record(state: int, sport: int, dport: int, age: int, family: int = socket.AF_INET,
           local: str = "127.0.0.1", peer: str = "127.0.0.2") -> bytes:
    def raw(text: str) -> bytes:
        return socket.inet_pton(family, text).ljust(16, b"\0")
    return RECORD.pack(77, 1234, state, family, sport, dport, 5, 0, 1000, age,
                       raw(local), raw(peer))


def test_records_then_totals() -> None:
    data = (record(TcpState.CLOSE_WAIT, 8080, 40000, 1500)
            + record(TcpState.LISTEN, 8080, 0, NO_AGE, local="0.0.0.0", peer="0.0.0.0")
            + record(TcpState.CLOSE_WAIT, 443, 5000, 7, socket.AF_INET6, "::1", "::1")
            + totals({TcpState.ESTABLISHED: 100, TcpState.CLOSE_WAIT: 2, TcpState.LISTEN: 1},
                     [8080, 443, 0, 65535]))
    found = decode(data, 42)
    assert found.netns == 42 and found.sockets == 103
    assert found.states == {TcpState.ESTABLISHED: 100, TcpState.CLOSE_WAIT: 2,
                            TcpState.LISTEN: 1}
    assert found.ports == {0, 443, 8080, 65535}
    cw, listener, six = found.emitted
    assert (cw.netns, cw.state, cw.local_addr, cw.local_port, cw.peer_addr, cw.peer_port,
            cw.inode, cw.cookie, cw.uid, cw.recv_q, cw.age_ms) == (
        42, TcpState.CLOSE_WAIT, "127.0.0.1", 8080, "127.0.0.2", 40000, 1234, 77, 1000, 5,
        1500)
    assert listener.age_ms is None and listener.peer_addr == "0.0.0.0"  # no age: a listener
    assert (six.family, six.local_addr, six.age_ms) == (socket.AF_INET6, "::1", 7)


@pytest.mark.parametrize("data", [b"", b"\0" * TOTALS.size,
                                  b"\0" * 3 + totals({}, [])])
def test_output_without_its_totals_is_refused(data: bytes) -> None:
    with pytest.raises(BpfError):
        decode(data, 1)
