"""Sockets from the kernel engine's iter/tcp program == sockets from sock_diag, field by field.

Two namespaces of the test's own (a server and a client joined by a veth
pair), IPv4 and IPv6: listeners (one with a connection waiting in its
accept queue), established connections with unread data both ways, one
with keepalive armed, half-closed ones (CLOSE-WAIT / FIN-WAIT-2), orphaned
FIN-WAIT-2 (a TIME-WAIT socket in its FIN-WAIT-2 substate) and TIME-WAIT.
Each namespace is dumped both ways under several state, port and family
filters; the ages and timer expiries, read a moment apart, may differ by a
little.
"""

from __future__ import annotations

import socket
import time

import msgspec
import pytest

import sockdoctor
from bpfengine import force_engine
from conftest import Remote
from sockdoctor import inventory
from sockdoctor.inventory import ScanOptions
from sockdoctor.lab.netlab import Host, Lab
from sockdoctor.linux import sockdiag
from sockdoctor.linux.bpf import sockets as bpf_sockets
from sockdoctor.model import ALL_STATES_MASK, Socket, TcpState, state_mask

pytestmark = pytest.mark.root
BOTH = (socket.AF_INET, socket.AF_INET6)
SLACK_MS = 1000  # two dumps a moment apart: ages and expiries move on

SERVER = """
l4 = socket.socket(); l4.bind(("0.0.0.0", 0)); l4.listen(64)
l6 = socket.socket(socket.AF_INET6)
l6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1); l6.bind(("::", 0)); l6.listen(64)
result = [l4.getsockname()[1], l6.getsockname()[1]]
"""
CLIENT = """
kinds = {"est": [], "ka": [], "half": [], "orphan": [], "tw": [], "queued": []}
def conn(kind, fam, addr, port):
    c = socket.socket(fam); c.connect((addr, port)); kinds[kind].append(c); return c
for fam, addr, port in TARGETS:
    conn("est", fam, addr, port).sendall(b"x" * 1000)          # unread at the server
    c = conn("ka", fam, addr, port); c.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 600)
    conn("half", fam, addr, port).shutdown(socket.SHUT_WR)
    conn("orphan", fam, addr, port).shutdown(socket.SHUT_WR)
    conn("tw", fam, addr, port)
for fam, addr, port in TARGETS:
    conn("queued", fam, addr, port)                            # never accepted
result = {k: [c.getsockname()[1] for c in v] for k, v in kinds.items()}
"""
ACCEPT = """
accepted = []
for lsock, n in ((l4, N), (l6, N)):
    for _ in range(n):
        a = lsock.accept()[0]; accepted.append(a)
        if a.getpeername()[1] in TW: a.close()                 # the server closes first
        elif a.getpeername()[1] in EST: a.sendall(b"y" * 500)  # unread at the client
result = len(accepted)
"""
FINISH = """
for c in kinds["orphan"] + kinds["tw"]: c.close()
result = 1
"""


@pytest.fixture(scope="module")
def populated() -> tuple[Lab, dict[str, list[int]], list[int]]:
    with Lab("itertcp") as lab:
        server = Remote(lab, lab.server, "itertcp-srv")
        client = Remote(lab, lab.client, "itertcp-cli")
        p4, p6 = server(SERVER)  # type: ignore[misc]
        targets = [(2, lab.server.addr4, p4), (10, lab.server.addr6, p6)]  # AF_INET, AF_INET6
        ports = client(CLIENT.replace("TARGETS", repr(targets)))
        server(ACCEPT.replace("N", "5").replace("TW", repr(ports["tw"]))  # type: ignore[index]
               .replace("EST", repr(ports["est"] + ports["ka"])))  # type: ignore[index]
        client(FINISH)
        time.sleep(0.5)  # the FINs and ACKs of the closes are exchanged
        yield lab, ports, [p4, p6]  # type: ignore[misc]


def both_ways(host: Host, opts: sockdiag.DumpOptions,
              families: tuple[int, ...] = BOTH) -> tuple[list[Socket], list[Socket]]:
    """(iter/tcp, sock_diag) dumps of the host's namespace, a moment apart."""
    inode = host.inode()

    def run() -> tuple[list[Socket], list[Socket]]:
        with bpf_sockets.source(opts, families) as kernel_dump:
            assert kernel_dump is not None, "the iter/tcp source was not chosen"
            ours = kernel_dump(inode)
        sock = sockdiag.open_socket()
        try:
            return ours, sockdiag.dump(sock, opts, netns=inode, families=families)
        finally:
            sock.close()
    return host.run(run)


def assert_same(ours: list[Socket], theirs: list[Socket]) -> None:
    by_cookie = {sk.cookie: sk for sk in theirs}
    assert sorted(by_cookie) == sorted(sk.cookie for sk in ours)
    assert [sk.family for sk in ours] == sorted(sk.family for sk in ours)  # IPv4 first
    for sk in ours:
        ref = by_cookie[sk.cookie]
        a, b = msgspec.structs.asdict(sk), msgspec.structs.asdict(ref)
        for moving in ("age_ms", "expires_ms"):
            x, y = a.pop(moving), b.pop(moving)
            assert (x is None) == (y is None), (moving, sk, ref)
            assert x is None or abs(x - y) <= SLACK_MS, (moving, sk, ref)
        assert a == b


@pytest.fixture(autouse=True)
def engine(monkeypatch: pytest.MonkeyPatch) -> None:
    force_engine(monkeypatch)


def test_every_socket_and_field_as_sock_diag_gives_it(populated) -> None:
    lab, _ports, _listen = populated
    seen_states, seen_timers, inodes = set(), set(), set()
    for host in (lab.server, lab.client):
        ours, theirs = both_ways(host, sockdiag.DumpOptions(ALL_STATES_MASK, age=True))
        assert_same(ours, theirs)
        seen_states |= {sk.state for sk in ours}
        seen_timers |= {sk.timer for sk in ours}
        assert {sk.netns for sk in ours} == {host.inode()}
        inodes |= {bool(sk.inode) for sk in ours}
        assert any(sk.age_ms is not None for sk in ours)
        assert any(sk.recv_q for sk in ours if sk.state == TcpState.ESTABLISHED)
    assert seen_states >= {TcpState.LISTEN, TcpState.ESTABLISHED, TcpState.CLOSE_WAIT,
                           TcpState.FIN_WAIT2, TcpState.TIME_WAIT}
    assert seen_timers >= {0, 2, 3}  # none, keepalive, time-wait
    assert inodes == {True, False}  # owned; queued, time-wait


@pytest.mark.parametrize("states", [
    (TcpState.CLOSE_WAIT,), (TcpState.TIME_WAIT, TcpState.FIN_WAIT2),
    (TcpState.LISTEN,), (TcpState.ESTABLISHED, TcpState.SYN_RECV)])
def test_state_filters(populated, states: tuple[TcpState, ...]) -> None:
    lab, _ports, _listen = populated
    for host in (lab.server, lab.client):
        ours, theirs = both_ways(host, sockdiag.DumpOptions(state_mask(*states)))
        assert_same(ours, theirs)
        assert {sk.state for sk in ours} <= set(states)


def test_port_and_family_filters(populated) -> None:
    lab, ports, (p4, p6) = populated
    one = ports["half"][0]
    for wanted in ({p6}, {one}, {p4, one, 9}):
        opts = sockdiag.DumpOptions(ALL_STATES_MASK, bytecode=sockdiag.port_filter(wanted),
                                    ports=frozenset(wanted))
        for host in (lab.server, lab.client):
            ours, theirs = both_ways(host, opts)
            assert ours and all(sk.local_port in wanted or sk.peer_port in wanted
                                for sk in ours)
            assert_same(ours, theirs)
    for family in BOTH:
        ours, theirs = both_ways(lab.client, sockdiag.DumpOptions(ALL_STATES_MASK), (family,))
        assert ours and {sk.family for sk in ours} == {family}
        assert_same(ours, theirs)


def test_scan_is_the_same_with_the_engine_forced_off(populated,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole scan (owners, query, age) with iter/tcp, then with sock_diag (engine c)."""
    lab, _ports, _listen = populated
    ns = str(lab.client.inode())
    passes: list[int] = []
    real = bpf_sockets.dump
    monkeypatch.setattr(bpf_sockets, "dump", lambda *a: passes.append(1) or real(*a))
    bpf = sockdoctor.scan("state established state fin-wait-2", ScanOptions(age=True), netns=ns)
    monkeypatch.setenv("SOCKDOCTOR_ENGINE", "c")
    with bpf_sockets.source(sockdiag.DumpOptions(ALL_STATES_MASK), BOTH) as chosen:
        assert chosen is None  # forced off: sock_diag
    c = sockdoctor.scan("state established state fin-wait-2", ScanOptions(age=True), netns=ns)
    assert passes == [1]  # the first scan's sockets came from one iter/tcp pass
    assert bpf.sockets and all(sk.owners for sk in bpf.sockets if sk.inode)
    assert_same(bpf.sockets, c.sockets)


def test_several_namespaces_in_one_scan(populated, monkeypatch: pytest.MonkeyPatch) -> None:
    """One loaded program, an iterator per namespace on run_many's threads."""
    lab, _ports, _listen = populated
    refs = [lab.server.ref(), lab.client.ref()]
    opts = sockdiag.DumpOptions(ALL_STATES_MASK, age=True)
    passes: list[int] = []
    real = bpf_sockets.dump
    monkeypatch.setattr(bpf_sockets, "dump", lambda *a: passes.append(a[2]) or real(*a))
    records, ours = inventory.dump_namespaces(refs, opts, BOTH, [])
    assert sorted(passes) == sorted(ref.inode for ref in refs)
    monkeypatch.setenv("SOCKDOCTOR_ENGINE", "c")
    _, theirs = inventory.dump_namespaces(refs, opts, BOTH, [])
    assert [r.error for r in records] == ["", ""]
    assert {sk.netns for sk in ours} == {ref.inode for ref in refs}
    for ref in refs:
        assert_same([sk for sk in ours if sk.netns == ref.inode],
                    [sk for sk in theirs if sk.netns == ref.inode])


def test_sock_diag_keeps_what_only_it_gives() -> None:
    for opts in (sockdiag.DumpOptions(ALL_STATES_MASK, info=True),
                 sockdiag.DumpOptions(ALL_STATES_MASK, mem=True),
                 sockdiag.DumpOptions(ALL_STATES_MASK, attrs=True),
                 sockdiag.DumpOptions(ALL_STATES_MASK, bytecode=sockdiag.port_filter([80]))):
        assert not bpf_sockets.serves(opts)
        with bpf_sockets.source(opts, BOTH) as chosen:
            assert chosen is None
    assert bpf_sockets.serves(sockdiag.DumpOptions(ALL_STATES_MASK, age=True))
