"""Method `rst` on real sockets: forged segments end them, in lab namespaces only.

A server program accepts one connection from a client (across the veth pair,
or over loopback in a one-namespace lab), the test drives both ends into the
wanted state, then calls rst_kill() inside the server's namespace and checks
what the kernel, the owner and the peer see afterwards.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest

from conftest import Script
from sockdoctor import inventory
from sockdoctor.lab.netlab import Host, Lab
from sockdoctor.linux import capture, netns, rawtcp, tcpseg
from sockdoctor.model import TcpState

pytestmark = pytest.mark.root
T = TypeVar("T")

# How a program finds out its connection was reset: read first (EOF when the
# peer's FIN came before the RST), then write.
PROBE = """
def probe(s):
    s.settimeout(1.0)
    try:
        data = s.recv(100)
    except socket.timeout:
        return {"recv": "timeout"}
    except OSError as e:
        return {"errno": e.errno}
    if data:
        return {"recv": data.decode()}
    try:
        s.send(b"x")
    except OSError as e:
        return {"errno": e.errno}
    return {"sent": True}
"""

SERVER = PROBE + """
ls = socket.socket(socket.AF_INET6 if ":" in ADDR else socket.AF_INET)
ls.bind((ADDR, 0))
ls.listen()
emit(ls.getsockname()[1])
conn, _ = ls.accept()
emit("accepted")
while True:
    cmd = wait().strip()
    if cmd == "shut":
        conn.shutdown(socket.SHUT_WR)
        emit("ok")
    elif cmd == "close":
        conn.close()
        emit("ok")
    elif cmd == "probe":
        emit(probe(conn))
    elif cmd == "serve":
        second, _ = ls.accept()
        data = second.recv(100)
        second.sendall(data.upper())
        second.close()
        emit(data.decode())
"""

CLIENT = PROBE + """
c = socket.socket(socket.AF_INET6 if ":" in ADDR else socket.AF_INET)
c.connect((ADDR, PORT))
emit(list(c.getsockname()[:2]))
while True:
    cmd = wait().strip()
    if cmd == "shut":
        c.shutdown(socket.SHUT_WR)
        emit("ok")
    elif cmd == "send":
        c.send(b"late")
        emit("ok")
    elif cmd == "close":
        c.close()
        emit("ok")
    elif cmd == "probe":
        emit(probe(c))
"""

ECHO = """
c = socket.create_connection((ADDR, PORT), timeout=5)
c.sendall(b"hello")
emit(c.recv(100).decode())
"""


def _code(body: str, addr: str, port: int = 0) -> str:
    return f"ADDR, PORT = {addr!r}, {port}\n" + body


def _ns(host: Host) -> netns.NsRef:
    return host.ref()


def _in(host: Host, fn: Callable[[], T]) -> T:
    return host.run(fn)


@dataclass
class Conn:
    """One connection: the server's socket is the one we kill."""

    lab: Lab
    server_host: Host
    client_host: Host
    server: Script
    client: Script
    addr: str
    local: tuple[str, int]
    peer: tuple[str, int]
    family: int

    def state(self, host: Host | None = None) -> int | None:
        if host is None or host is self.server_host:
            return _in(self.server_host, lambda: rawtcp.socket_state(self.local, self.peer))
        return _in(host, lambda: rawtcp.socket_state(self.peer, self.local))

    def wait_state(self, want: int) -> None:
        for _ in range(200):
            if self.state() == want:
                return
            time.sleep(0.01)
        raise AssertionError(f"server socket never reached {TcpState(want).name}")

    def kill(self, cookie: int | None = None, **options: Any) -> rawtcp.RstResult:
        opts = rawtcp.RstOptions(**options)
        return _in(self.server_host, lambda: rawtcp.rst_kill(self.local, self.peer, self.family,
                                                             cookie=cookie, opts=opts))

    def serves_again(self) -> str:
        self.server.send("serve")
        echo = Script(self.lab, self.client_host, _code(ECHO, self.addr, self.local[1]))
        assert echo.read() == "HELLO"
        return str(self.server.read())


def connect(lab: Lab, family: int, link: str) -> Conn:
    if link == "veth":
        client_host = lab.client
        addr = lab.server.addr6 if family == socket.AF_INET6 else lab.server.addr4
    else:
        client_host = lab.server
        addr = "::1" if family == socket.AF_INET6 else "127.0.0.1"
    server = Script(lab, lab.server, _code(SERVER, addr))
    port = server.read()
    client = Script(lab, client_host, _code(CLIENT, addr, port))
    caddr, cport = client.read()
    assert server.read() == "accepted"
    return Conn(lab, lab.server, client_host, server, client, addr, (addr, port),
                (caddr, cport), family)


@pytest.fixture(params=["veth", "lo"])
def link(request: pytest.FixtureRequest) -> tuple[str, Lab]:
    return request.param, request.getfixturevalue("lab" if request.param == "veth" else "solo")


def _present(host: Host, local: tuple[str, int], peer: tuple[str, int]) -> list[int]:
    """States of sockets with this 4-tuple, as `sockdoctor ls` would list them."""
    snap = inventory.scan(netns=host.netns, owners=False)
    la, pa = ipaddress.ip_address(local[0]), ipaddress.ip_address(peer[0])
    return [sk.state for sk in snap.sockets
            if (ipaddress.ip_address(sk.local_addr), sk.local_port) == (la, local[1])
            and (ipaddress.ip_address(sk.peer_addr), sk.peer_port) == (pa, peer[1])]


# state to kill on the server -> (who shuts down first, owner's error, peer's error)
CASES = {
    TcpState.CLOSE_WAIT: ("client", errno.EPIPE, errno.ECONNRESET),
    TcpState.ESTABLISHED: (None, errno.ECONNRESET, errno.ECONNRESET),
    TcpState.FIN_WAIT2: ("server", errno.ECONNRESET, errno.EPIPE),
}


@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6], ids=["v4", "v6"])
@pytest.mark.parametrize("state", list(CASES), ids=lambda s: s.name)
def test_rst_kills_socket(link: tuple[str, Lab], family: int, state: TcpState) -> None:
    kind, lab = link
    conn = connect(lab, family, kind)
    closer, owner_errno, peer_errno = CASES[state]
    if closer:
        _do(conn.client if closer == "client" else conn.server, "shut")
    conn.wait_state(state)
    assert _present(conn.server_host, conn.local, conn.peer) == [state]

    result = conn.kill()

    assert result.outcome == "killed", result.notes
    assert result.state == state
    assert result.ifname == ("eth0" if kind == "veth" else "lo")
    assert result.rcv_nxt is not None and result.peer_rst
    assert not result.rate_limited
    assert _present(conn.server_host, conn.local, conn.peer) == []
    conn.server.send("probe")
    assert conn.server.read() == {"errno": owner_errno}
    conn.client.send("probe")
    assert conn.client.read() == {"errno": peer_errno}
    assert _present(conn.client_host, conn.peer, conn.local) == []
    assert conn.serves_again() == "hello"


def _do(script: Script, cmd: str) -> None:
    script.send(cmd)
    assert script.read() == "ok"


def test_orphaned_fin_wait2(lab: Lab) -> None:
    # The owner closed first: the kernel keeps a time-wait mini socket in
    # FIN_WAIT2 until tcp_fin_timeout while the peer sits in CLOSE_WAIT.
    conn = connect(lab, socket.AF_INET, "veth")
    _do(conn.server, "close")
    conn.wait_state(TcpState.FIN_WAIT2)
    result = conn.kill()
    assert result.killed and result.provocations == ["syn"]
    assert _present(lab.server, conn.local, conn.peer) == []
    conn.client.send("probe")
    assert conn.client.read() == {"errno": errno.EPIPE}
    assert conn.serves_again() == "hello"


def test_time_wait(solo: Lab) -> None:
    conn = connect(solo, socket.AF_INET6, "lo")
    _do(conn.server, "close")
    _do(conn.client, "close")
    conn.wait_state(TcpState.TIME_WAIT)
    result = conn.kill()
    assert result.killed and result.provocations == ["ack"]  # a SYN could reopen it
    assert _present(solo.server, conn.local, conn.peer) == []


def test_unreachable_peer_is_a_clear_no_answer(lab: Lab) -> None:
    conn = connect(lab, socket.AF_INET, "veth")
    _do(conn.client, "shut")
    conn.wait_state(TcpState.CLOSE_WAIT)
    # The peer's side goes down: the server keeps its address, loses the carrier.
    subprocess.run(["ip", "-n", lab.client.netns, "link", "set", "eth0", "down"], check=True)
    result = conn.kill(timeout=0.3)
    assert result.outcome == "no-answer" and not result.rate_limited
    assert result.provocations == ["syn"]  # the counters showed retrying is useless
    assert "never left through eth0" in result.notes[0]
    assert conn.state() == TcpState.CLOSE_WAIT


def test_vanished_local_address_is_a_clear_no_answer(lab: Lab) -> None:
    conn = connect(lab, socket.AF_INET6, "veth")
    lab.cut_link()  # both ends of the veth pair go, and the server's address with them
    result = conn.kill(timeout=0.3)
    assert result.outcome == "no-answer" and result.ifname is None
    assert result.notes == [f"syn: cannot send to [{conn.local[0]}]:{conn.local[1]}: "
                            "Network is unreachable"]
    assert conn.state() == TcpState.ESTABLISHED


def test_without_also_peer_the_peer_learns_on_its_next_send(lab: Lab) -> None:
    conn = connect(lab, socket.AF_INET, "veth")
    result = conn.kill(also_peer=False)
    assert result.killed and not result.peer_rst
    assert _present(lab.client, conn.peer, conn.local) == [TcpState.ESTABLISHED]
    conn.client.send("send")  # meets no socket on the server: its kernel answers RST
    assert conn.client.read() == "ok"
    conn.client.send("probe")
    assert conn.client.read() == {"errno": errno.ECONNRESET}
    assert _present(lab.client, conn.peer, conn.local) == []


def test_one_killer_for_many_sockets_and_interfaces(lab: Lab) -> None:
    conns = [connect(lab, socket.AF_INET6, "veth"), connect(lab, socket.AF_INET, "lo"),
             connect(lab, socket.AF_INET, "veth")]
    for conn in conns:
        _do(conn.client, "shut")
        conn.wait_state(TcpState.CLOSE_WAIT)

    def kill_all() -> list[rawtcp.RstResult]:
        with rawtcp.RstKiller() as killer:
            return [killer.kill(c.local, c.peer, c.family) for c in conns]

    results = _in(lab.server, kill_all)
    assert [r.outcome for r in results] == ["killed"] * 3
    assert [r.ifname for r in results] == ["eth0", "lo", "eth0"]
    for conn in conns:
        assert conn.state() is None
        conn.client.send("probe")
        assert conn.client.read() == {"errno": errno.ECONNRESET}


def _write_sysctl(host: Host, name: str, value: int) -> None:
    def write() -> None:
        with open(f"/proc/sys/net/ipv4/{name}", "w") as f:
            f.write(str(value))
    _in(host, write)


def _syn_from_peer(conn: Conn) -> None:
    seg = tcpseg.Segment(conn.peer[0], conn.local[0], conn.peer[1], conn.local[1], 12345, 0,
                         tcpseg.TH_SYN, 1024)

    def send() -> None:
        sender = capture.RawSender(conn.family)
        try:
            sender.send(seg)
        finally:
            sender.close()
    _in(conn.server_host, send)


def test_per_socket_rate_limit_is_reported_and_waited_out(solo: Lab) -> None:
    _write_sysctl(solo.server, "tcp_invalid_ratelimit", 1500)
    conn = connect(solo, socket.AF_INET, "lo")
    _do(conn.client, "shut")
    conn.wait_state(TcpState.CLOSE_WAIT)
    _syn_from_peer(conn)  # the socket answers: its limiter is armed for 1.5 s

    first = conn.kill(attempts=1, timeout=0.3)
    assert first.outcome == "no-answer" and first.rate_limited
    assert any("tcp_invalid_ratelimit" in note for note in first.notes)
    assert conn.state() == TcpState.CLOSE_WAIT

    second = conn.kill(timeout=0.3)
    assert second.killed and second.rate_limited
    assert second.provocations == ["syn", "ack"]
    assert conn.state() is None


def test_challenge_ack_budget_is_reported_and_avoided(solo: Lab) -> None:
    # One challenge ACK a second for the whole namespace; a SYN to another
    # socket spends it. If the kernel's second turns over between that SYN and
    # ours, the budget is back: try again with new connections.
    _write_sysctl(solo.server, "tcp_challenge_ack_limit", 1)
    for _ in range(3):
        spender = connect(solo, socket.AF_INET, "lo")
        target = connect(solo, socket.AF_INET, "lo")
        _syn_from_peer(spender)
        result = target.kill(timeout=0.3)
        assert result.killed, result.notes
        if result.provocations == ["syn", "ack"]:
            break
    else:
        pytest.fail("the challenge ACK budget never held back a SYN")
    assert result.rate_limited
    assert any("tcp_challenge_ack_limit = 1" in note for note in result.notes)


def test_missing_socket_and_listener_are_left_alone(solo: Lab) -> None:
    conn = connect(solo, socket.AF_INET6, "lo")
    missing = _in(solo.server, lambda: rawtcp.rst_kill(conn.local, ("::1", 9), socket.AF_INET6))
    assert missing.outcome == "not-found" and missing.provocations == []
    listener = _in(solo.server,
                   lambda: rawtcp.rst_kill(conn.local, ("::", 0), socket.AF_INET6))
    assert listener.outcome == "refused" and listener.state == TcpState.LISTEN
    assert listener.provocations == []
    assert conn.state() == TcpState.ESTABLISHED


def test_cookie_guards_identity(solo: Lab) -> None:
    conn = connect(solo, socket.AF_INET, "lo")
    snap = inventory.scan(netns=solo.server.netns, owners=False)
    (sk,) = [s for s in snap.sockets if (s.local_port, s.peer_port) == (conn.local[1],
                                                                        conn.peer[1])]
    stale = conn.kill(cookie=sk.cookie + 1)  # as if the 4-tuple had been reused
    assert stale.outcome == "not-found" and stale.provocations == []
    assert "another socket" in stale.notes[0]
    assert conn.state() == TcpState.ESTABLISHED
    assert conn.kill(cookie=sk.cookie).killed


def test_no_cap_net_raw_is_one_sentence(solo: Lab) -> None:
    code = ("import socket\nfrom sockdoctor.linux import rawtcp\n"
            "rawtcp.rst_kill(('127.0.0.1', 1), ('127.0.0.1', 2), socket.AF_INET)\n")
    proc = subprocess.run(
        ["ip", "netns", "exec", solo.server.netns, "setpriv", "--inh-caps=-net_raw",
         "--bounding-set=-net_raw", sys.executable, "-c", code],
        capture_output=True, text=True, timeout=30)
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("sockdoctor.errors.PermissionDeniedError: ")
    assert "CAP_NET_RAW" in last
