"""The iter/tcp record decoder: the C one (sockdoctor._fast) == the Python reference.

Records packed as sockets.bpf.c writes them (struct record): IPv4 and IPv6,
a socket with and without an age, an age in a state that has none, a
trailing partial record (ignored), and an unknown family (refused).
"""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest

from sockdoctor.linux import sockdiag
from sockdoctor.linux.bpf import sockets
from sockdoctor.linux.native import fast
from sockdoctor.model import Socket, TcpState


def record(family: int, state: int, local: str, sport: int, peer: str, dport: int, *,
           age: int = sockets.NO_AGE, inode: int = 7, cookie: int = 2**40 + 3) -> bytes:
    raw = [socket.inet_pton(family if family in (2, 10) else 2, a).ljust(16, b"\0")
           for a in (local, peer)]
    return sockets.RECORD.pack(family, state, 2, 1, sport, dport, *raw, cookie, inode,
                               1000, 5, 6, 7_000, age, 3)


RECORDS = b"".join([
    record(2, TcpState.ESTABLISHED, "10.0.0.1", 443, "10.0.0.2", 50_000, age=1234),
    record(10, TcpState.CLOSE_WAIT, "fd00::1", 8080, "::ffff:10.1.2.3", 1, age=0),
    record(2, TcpState.LISTEN, "0.0.0.0", 80, "0.0.0.0", 0, age=99),  # no age in LISTEN
    record(10, TcpState.TIME_WAIT, "::1", 1, "::1", 2, inode=0),
]) + b"\1\2\3"  # a partial record: ignored


def test_python_decoder_fields() -> None:
    out = sockets.decode_python(RECORDS[:-3], 42, True)
    assert out[0] == Socket(42, 2, 1, "10.0.0.1", 443, "10.0.0.2", 50_000, 7, 2**40 + 3,
                            1000, 5, 6, 2, 7_000, 1, 3, age_ms=1234)
    assert [sk.age_ms for sk in out] == [1234, 0, None, None]
    assert out[1].peer_addr == "::ffff:10.1.2.3" and out[3].inode == 0
    assert [sk.age_ms for sk in sockets.decode_python(RECORDS[:-3], 42, False)] == [None] * 4


@pytest.mark.skipif(fast is None or not hasattr(fast, "tcp_records"),
                    reason="the C extension is not built")
@pytest.mark.parametrize("age", [True, False])
def test_c_decoder_is_the_python_one(age: bool) -> None:
    data = RECORDS[:len(RECORDS) - len(RECORDS) % sockets.RECORD.size]
    assert fast.tcp_records(data, 42, age, sockdiag.AGED_STATES) == sockets.decode_python(
        data, 42, age)
    assert sockets.decode(RECORDS, 42, age) == sockets.decode_python(data, 42, age)
    bad = record(7, 1, "1.2.3.4", 1, "1.2.3.4", 2)
    with pytest.raises(ValueError, match="family 7"):
        fast.tcp_records(bad, 1, age, sockdiag.AGED_STATES)
    with pytest.raises(ValueError, match="family 7"):
        sockets.decode_python(bad, 1, age)


def test_not_chosen_without_the_engine_or_the_capabilities(monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    opts = sockdiag.DumpOptions(sockdiag.ALL_STATES, age=True)
    monkeypatch.setenv("SOCKDOCTOR_ENGINE", "c")
    assert not sockets.usable()
    monkeypatch.setenv("SOCKDOCTOR_ENGINE", "bpf")
    monkeypatch.setattr(sockets.procfs, "has_capabilities", lambda *caps: False)
    assert not sockets.usable()  # not even tried: a refused load costs a load
    with sockets.source(opts, (socket.AF_INET,)) as chosen:
        assert chosen is None
    assert not sockets._refused


def test_chosen_only_where_it_is_faster(monkeypatch: pytest.MonkeyPatch) -> None:
    """A broad dump on a big host: iter/tcp; a narrow one (a state, a port): sock_diag."""
    monkeypatch.delenv("SOCKDOCTOR_ENGINE", raising=False)
    monkeypatch.delenv("SOCKDOCTOR_PURE", raising=False)
    many = sockets.MIN_SOCKETS
    monkeypatch.setattr(sockets, "host_sockets", lambda: many)
    everything = sockdiag.DumpOptions(sockdiag.ALL_STATES, age=True)
    connected = sockdiag.DumpOptions(sockdiag.ALL_STATES & ~(1 << TcpState.LISTEN), age=True)
    assert sockets.pays(everything) and sockets.pays(connected)
    # without the age (ls -s) sock_diag sends no tcp_info: cheaper than loading the program
    assert not sockets.pays(sockdiag.DumpOptions(sockdiag.ALL_STATES))
    assert not sockets.pays(sockdiag.DumpOptions(1 << TcpState.CLOSE_WAIT))
    assert not sockets.pays(sockdiag.DumpOptions(sockdiag.ALL_STATES, ports=frozenset({80}),
                                                 bytecode=sockdiag.port_filter([80])))
    many = sockets.MIN_SOCKETS - 1
    assert not sockets.pays(everything)  # a small host: the load costs more than it saves
    monkeypatch.setenv("SOCKDOCTOR_ENGINE", "bpf")
    assert sockets.pays(sockdiag.DumpOptions(1 << TcpState.CLOSE_WAIT))  # forced


def test_host_sockets_reads_sockstat(monkeypatch: pytest.MonkeyPatch) -> None:
    text = ("sockets: used 16\nTCP: inuse 1 orphan 0 tw 9 alloc 10002 mem 232\n"
            "UDP: inuse 0 mem 0\n")
    monkeypatch.setattr(sockets.procfs, "_read", lambda path: text)
    assert sockets.host_sockets() == 10_011  # allocated (every namespace) + TIME-WAIT

    def gone(path: str) -> str:
        raise FileNotFoundError(path)
    monkeypatch.setattr(sockets.procfs, "_read", gone)
    assert sockets.host_sockets() == 0


def test_reading_while_decoding_joins_records_split_between_reads() -> None:
    """The iterator's reads are whole records; a pipe's need not be: nothing is lost."""
    data = RECORDS[:len(RECORDS) - len(RECORDS) % sockets.RECORD.size] * 50
    r, w = os.pipe()

    def write() -> None:
        for start in range(0, len(data), 37):  # pieces that cut records anywhere
            os.write(w, data[start:start + 37])
            time.sleep(0.0005)
        os.close(w)
    writer = threading.Thread(target=write)
    writer.start()
    try:
        out = sockets.read_decoding(r, 42, True)
    finally:
        writer.join()
        os.close(r)
    assert out == sockets.decode_python(data, 42, True)


def test_reading_while_decoding_raises_what_the_read_raised() -> None:
    r, w = os.pipe()
    os.close(r)
    os.close(w)
    with pytest.raises(OSError):
        sockets.read_decoding(r, 42, True)  # a closed descriptor: EBADF, not a hang
