"""`scan()` and `sockdoctor ls` on real sockets in every TCP state.

One module-wide "zoo" builds a server and a client namespace (tests/conftest.py's
lab network) holding a socket in every state the issue names, then every test
checks what the library's scan() reports AND what the CLI prints for the same
socket (`ls --json` parsed). Ports tell the cases apart, all on the server
10.77.0.1 unless said otherwise:

    7001  ESTABLISHED, server socket dup()ed and shared with a fork()ed child
    7002  two CLOSE_WAIT (the client shut down its sending side: FIN_WAIT2 there)
    7003  CLOSE_WAIT never accept()ed (client closed: orphaned FIN_WAIT2 there)
    7004  FIN_WAIT1 on the client: the server never reads, window full, then shutdown
    7005  TIME_WAIT on the client: it closed first, the server closed after EOF
    7006  ESTABLISHED over IPv6 (v6-only listener)
    7007  LAST_ACK: the server closes its CLOSE_WAIT after the peer became unreachable
    7008  ESTABLISHED v4-mapped (dual-stack listener, IPv4 client)
    7009  CLOSE_WAIT with 1 s keepalive (its age keeps being reset)
    7099  SYN_SENT from the client to 10.77.0.99, an address no one answers
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, cast

import pytest

from conftest import Remote
from sockdoctor.errors import NotFoundError
from sockdoctor.inventory import ScanOptions, scan
from sockdoctor.lab.netlab import Lab
from sockdoctor.model import Snapshot, Socket, TcpState
from sockdoctor.query import Query
from sockdoctor.render import summary

pytestmark = pytest.mark.root

PORTS = (7001, 7002, 7003, 7004, 7005, 7006, 7007, 7008, 7009, 7099)
BOGUS_MAC = "02:00:00:00:00:99"
CW_IDLE_S = 2.3  # how long the CLOSE_WAITs of 7002 stay idle before the views are taken

SERVER_SETUP = """
    def listen(port, family=socket.AF_INET, v6only=None, rcvbuf=None):
        s = socket.socket(family)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if v6only is not None:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, v6only)
        if rcvbuf:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        s.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", port))
        s.listen(16)
        return s
    L = {p: listen(p) for p in (7001, 7002, 7003, 7005, 7007, 7009)}
    L[7004] = listen(7004, rcvbuf=4096)
    L[7006] = listen(7006, socket.AF_INET6, v6only=1)
    L[7008] = listen(7008, socket.AF_INET6, v6only=0)
    A = {}
"""

CLIENT_CONNECT = """
    def conn(addr, port, family=socket.AF_INET, src=None):
        s = socket.socket(family)
        if src:
            s.bind((src, 0))
        s.connect((addr, port))
        return s
    C = {p: conn("10.77.0.1", p) for p in (7001, 7004, 7005, 7008, 7009)}
    C[7002] = [conn("10.77.0.1", 7002), conn("10.77.0.1", 7002)]
    C[7006] = conn("fd77::1", 7006, socket.AF_INET6)
    C[7007] = conn("10.77.0.1", 7007, src="10.77.0.3")
    conn("10.77.0.1", 7003).close()
    C[7099] = socket.socket()
    C[7099].setblocking(False)
    try:
        C[7099].connect(("10.77.0.99", 7099))
    except BlockingIOError:
        pass
"""

# Accept everything but 7003, then fork a child that keeps only the 7001
# listener and connection (two descriptors for the connection: dup).
SERVER_ACCEPT = """
    for p in (7001, 7004, 7005, 7006, 7007, 7008, 7009):
        A[p], _ = L[p].accept()
    A[7002] = [L[7002].accept()[0], L[7002].accept()[0]]
    A[7009].setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    A[7009].setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 1)
    A[7009].setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 1)
    dup = os.dup(A[7001].fileno())
    keep = {0, 1, 2, L[7001].fileno(), A[7001].fileno(), dup}
    child = os.fork()
    if child == 0:
        for name in os.listdir("/proc/self/fd"):
            if int(name) not in keep:
                try:
                    os.close(int(name))
                except OSError:
                    pass
        open("/proc/self/comm", "w").write("sdt-child")
        while True:
            time.sleep(3600)
    result = {"child": child, "fds": [A[7001].fileno(), dup],
              "listener_fd": L[7001].fileno()}
"""

CLIENT_CLOSE = """
    for s in (*C[7002], C[7007], C[7009]):
        s.shutdown(socket.SHUT_WR)
    C[7004].setblocking(False)
    try:
        while True:
            C[7004].send(b"x" * 65536)
    except BlockingIOError:
        pass
    C[7004].shutdown(socket.SHUT_WR)
    C[7005].close()
"""


@dataclass
class Zoo:
    lab: Lab
    srv: Remote
    cli: Remote
    child: int
    est_fds: list[int]
    listener_fd: int

    @property
    def S(self) -> str:  # the server namespace's name
        return self.lab.server.netns

    @property
    def C(self) -> str:  # the client namespace's name
        return self.lab.client.netns


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


def _wait_for(what: str, check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _has(netns: str, state: TcpState, port: int) -> bool:
    snap = scan(Query.build(ports=[port]), owners=False, netns=netns)
    return any(sk.state == state for sk in snap.sockets)


@pytest.fixture(scope="module")
def zoo() -> Iterator[Zoo]:
    with Lab("ls") as lab:
        S, C = lab.server.netns, lab.client.netns
        _ip("-n", C, "addr", "add", "10.77.0.3/24", "dev", "eth0")
        _ip("-n", C, "neigh", "add", "10.77.0.99", "lladdr", BOGUS_MAC, "dev", "eth0",
            "nud", "permanent")
        srv = Remote(lab, lab.server, "sdt-srv")
        cli = Remote(lab, lab.client, "sdt-cli")
        srv(SERVER_SETUP)
        cli(CLIENT_CONNECT)
        forked = cast(dict[str, Any], srv(SERVER_ACCEPT))
        cli(CLIENT_CLOSE)
        fin_at = time.monotonic()
        srv("assert A[7005].recv(10) == b''; A[7005].close()")
        # The peer 10.77.0.3 vanishes (its frames go to a MAC no one has),
        # then the server closes its CLOSE_WAIT: its FIN is never ACKed.
        _wait_for("CLOSE_WAIT on 7007", lambda: _has(S, TcpState.CLOSE_WAIT, 7007))
        # and the server's ACK of that FIN has arrived (it may be delayed): else the
        # client stays in FIN_WAIT1 once the peer is cut off
        _wait_for("FIN_WAIT2 on 7007", lambda: _has(C, TcpState.FIN_WAIT2, 7007))
        _ip("-n", S, "neigh", "replace", "10.77.0.3", "lladdr", BOGUS_MAC, "dev", "eth0",
            "nud", "permanent")
        srv("A[7007].close()")
        _wait_for("LAST_ACK on 7007", lambda: _has(S, TcpState.LAST_ACK, 7007))
        _wait_for("TIME_WAIT on 7005", lambda: _has(C, TcpState.TIME_WAIT, 7005))
        _wait_for("FIN_WAIT1 on 7004", lambda: _has(C, TcpState.FIN_WAIT1, 7004))
        time.sleep(max(0.0, CW_IDLE_S - (time.monotonic() - fin_at)))
        yield Zoo(lab, srv, cli, forked["child"], forked["fds"], forked["listener_fd"])


# --- the two views every test compares -------------------------------------------

def sockdoctor(*args: str, ok: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "sockdoctor", *args], capture_output=True,
                          text=True, timeout=timeout)
    if ok:
        assert proc.returncode == 0, proc.stderr
    return proc


def ls_json(*args: str) -> dict[str, Any]:
    return json.loads(sockdoctor("ls", "--json", *args).stdout)


def port_flags() -> list[str]:
    return [f"--port={p}" for p in PORTS]


@dataclass
class Views:
    snap: Snapshot  # scan() of both lab namespaces at once (netns="all")
    doc: dict[str, Any]  # `ls -p --json --netns all`, same ports
    names: dict[int, str]


@pytest.fixture(scope="module")
def views(zoo: Zoo) -> Views:
    ours = {zoo.lab.server.inode(), zoo.lab.client.inode()}
    snap = scan(Query.build(ports=PORTS), ScanOptions(age=True), owners=True, netns="all")
    snap.sockets = [sk for sk in snap.sockets if sk.netns in ours]
    doc = ls_json("-p", "--netns", "all", *port_flags())
    doc["sockets"] = [r for r in doc["sockets"] if r["netns"] in (zoo.S, zoo.C)]
    return Views(snap, doc, {ns.inode: ns.name for ns in snap.namespaces})


def pick(v: Views, netns: str, state: TcpState, port: int) -> list[tuple[Socket, dict]]:
    """The sockets in `state` with `port` at either end, as scan() and the CLI show them."""
    found = [sk for sk in v.snap.sockets
             if v.names[sk.netns] == netns and sk.state == state
             and port in (sk.local_port, sk.peer_port)]
    records = [r for r in v.doc["sockets"] if r["netns"] == netns
               and r["state"] == state.ss_name and port in (r["local_port"], r["peer_port"])]
    by_cookie = {r["cookie"]: r for r in records}
    assert sorted(by_cookie) == sorted(sk.cookie for sk in found), (found, records)
    pairs = [(sk, by_cookie[sk.cookie]) for sk in found]
    for sk, rec in pairs:
        assert (rec["inode"], rec["local_port"], rec["peer_port"]) == \
            (sk.inode, sk.local_port, sk.peer_port)
    return pairs


def one(v: Views, netns: str, state: TcpState, port: int) -> tuple[Socket, dict]:
    pairs = pick(v, netns, state, port)
    assert len(pairs) == 1, f"expected one {state.name} on {port} in {netns}: {pairs}"
    return pairs[0]


def owner_pids(sk: Socket, rec: dict) -> set[int]:
    pids = {o.pid for o in sk.owners}
    assert pids == {o["pid"] for o in rec["owners"]}
    return pids


# --- every state -------------------------------------------------------------

def test_listen(zoo: Zoo, views: Views) -> None:
    sk, rec = one(views, zoo.S, TcpState.LISTEN, 7001)
    assert (sk.local_addr, sk.peer_addr, sk.peer_port) == ("0.0.0.0", "0.0.0.0", 0)
    assert (sk.recv_q, sk.send_q) == (0, 16)  # accept queue now, backlog
    assert (rec["recv_q"], rec["send_q"]) == (0, 16)
    assert sk.age_ms is None and "age_ms" not in rec  # tcp_info never set for a listener
    assert owner_pids(sk, rec) == {zoo.srv.pid, zoo.child}  # shared across fork()
    fds = {(o["pid"], o["fd"]) for o in rec["owners"]}
    assert fds == {(zoo.srv.pid, zoo.listener_fd), (zoo.child, zoo.listener_fd)}


def test_established_ipv4(zoo: Zoo, views: Views) -> None:
    srv, srv_rec = one(views, zoo.S, TcpState.ESTABLISHED, 7001)
    cli, cli_rec = one(views, zoo.C, TcpState.ESTABLISHED, 7001)
    assert (srv.local_addr, srv.local_port, srv.peer_addr) == ("10.77.0.1", 7001, "10.77.0.2")
    assert (cli.peer_addr, cli.peer_port, cli.local_port) == ("10.77.0.1", 7001, srv.peer_port)
    assert srv_rec["family"] == cli_rec["family"] == "ipv4"
    assert cli_rec["local_port"] == srv_rec["peer_port"]
    assert srv.age_ms is not None and srv_rec["age_ms"] >= 0
    assert owner_pids(cli, cli_rec) == {zoo.cli.pid}


def test_established_ipv6_and_v4_mapped(zoo: Zoo, views: Views) -> None:
    v6, v6_rec = one(views, zoo.S, TcpState.ESTABLISHED, 7006)
    assert (v6.family, v6.local_addr, v6.peer_addr) == (10, "fd77::1", "fd77::2")
    assert (v6_rec["family"], v6_rec["local_addr"]) == ("ipv6", "fd77::1")
    lst, lst_rec = one(views, zoo.S, TcpState.LISTEN, 7006)
    assert (lst.family, lst.local_addr, lst_rec["local_addr"]) == (10, "::", "::")
    mapped, mapped_rec = one(views, zoo.S, TcpState.ESTABLISHED, 7008)
    assert (mapped.family, mapped.local_addr, mapped.peer_addr) == \
        (10, "::ffff:10.77.0.1", "::ffff:10.77.0.2")
    assert (mapped_rec["family"], mapped_rec["peer_addr"]) == ("ipv6", "::ffff:10.77.0.2")
    client, client_rec = one(views, zoo.C, TcpState.ESTABLISHED, 7008)
    assert (client.family, client_rec["family"]) == (2, "ipv4")  # the client used IPv4

    table = sockdoctor("ls", "--netns", zoo.S, "--port=7006", "--port=7008").stdout
    assert re.search(r"ESTAB\s+0\s+0\s+\[fd77::1\]:7006\s+\[fd77::2\]:\d+", table)
    assert re.search(r"\[::ffff:10\.77\.0\.1\]:7008\s+\[::ffff:10\.77\.0\.2\]:\d+", table)
    assert re.search(r"LISTEN\s+0\s+16\s+\[::\]:7006\s+\[::\]:\*", table)
    only6 = ls_json("-6", "--netns", zoo.S)["sockets"]
    assert only6 and {r["family"] for r in only6} == {"ipv6"}
    only4 = ls_json("-4", "--netns", zoo.S)["sockets"]
    assert only4 and {r["family"] for r in only4} == {"ipv4"}
    assert len(scan(Query.build(family=10), owners=False, netns=zoo.S).sockets) == len(only6)


def test_syn_sent(zoo: Zoo, views: Views) -> None:
    sk, rec = one(views, zoo.C, TcpState.SYN_SENT, 7099)
    assert (sk.peer_addr, rec["peer_addr"]) == ("10.77.0.99", "10.77.0.99")
    assert rec["state"] == "SYN-SENT" and rec["timer"] == "on"  # the SYN is retransmitted
    assert sk.send_q == 1  # the SYN itself
    assert sk.age_ms is None and "age_ms" not in rec  # never heard from the peer
    assert owner_pids(sk, rec) == {zoo.cli.pid}


def test_close_wait_owned(zoo: Zoo, views: Views) -> None:
    pairs = pick(views, zoo.S, TcpState.CLOSE_WAIT, 7002)
    assert len(pairs) == 2
    for sk, rec in pairs:
        assert sk.recv_q == rec["recv_q"] == 1  # the FIN nobody read
        assert owner_pids(sk, rec) == {zoo.srv.pid}
        assert rec["owners"][0]["comm"] == "sdt-srv"
        assert "owner_note" not in rec and sk.owner_note() == ""


def test_close_wait_in_accept_queue(zoo: Zoo, views: Views) -> None:
    sk, rec = one(views, zoo.S, TcpState.CLOSE_WAIT, 7003)
    assert sk.inode == rec["inode"] == 0
    assert sk.owners == [] and rec["owners"] == []
    assert "accept queue" in rec["owner_note"] and rec["owner_note"] == sk.owner_note()
    assert sk.recv_q == 1
    listener, lrec = one(views, zoo.S, TcpState.LISTEN, 7003)
    assert listener.recv_q == lrec["recv_q"] == 1  # one connection waits for accept()


def test_fin_wait1(zoo: Zoo, views: Views) -> None:
    sk, rec = one(views, zoo.C, TcpState.FIN_WAIT1, 7004)
    assert rec["state"] == "FIN-WAIT-1"
    assert sk.send_q > 0 and rec["send_q"] == sk.send_q  # data (and the FIN) stuck behind
    assert rec["timer"] == "persist"  # probing the peer's zero window
    assert owner_pids(sk, rec) == {zoo.cli.pid}
    peer, peer_rec = one(views, zoo.S, TcpState.ESTABLISHED, 7004)
    assert peer.recv_q > 0 and peer_rec["recv_q"] == peer.recv_q  # the reader that never reads


def test_fin_wait2(zoo: Zoo, views: Views) -> None:
    owned = pick(views, zoo.C, TcpState.FIN_WAIT2, 7002)
    assert len(owned) == 2
    for sk, rec in owned:  # shutdown(SHUT_WR) without close(): still held
        assert sk.inode != 0 and owner_pids(sk, rec) == {zoo.cli.pid}
        assert sk.age_ms is not None and rec["age_ms"] >= 0
    orphan, rec = one(views, zoo.C, TcpState.FIN_WAIT2, 7003)  # closed: the kernel finishes
    assert orphan.inode == rec["inode"] == 0 and rec["owners"] == []
    assert rec["timer"] == "timewait" and "orphaned" in rec["owner_note"]


def test_time_wait(zoo: Zoo, views: Views) -> None:
    sk, rec = one(views, zoo.C, TcpState.TIME_WAIT, 7005)
    assert rec["state"] == "TIME-WAIT"
    assert sk.inode == rec["inode"] == 0
    assert sk.owners == [] and rec["owners"] == [] and "TIME-WAIT" in rec["owner_note"]
    assert sk.timer == 3 and rec["timer"] == "timewait"
    assert 0 < rec["expires_ms"] <= 60_000
    assert sk.age_ms is None and "age_ms" not in rec  # a timewait socket has no tcp_info
    assert not pick(views, zoo.S, TcpState.CLOSE_WAIT, 7005)  # the server side is gone


def test_last_ack(zoo: Zoo, views: Views) -> None:
    sk, rec = one(views, zoo.S, TcpState.LAST_ACK, 7007)
    assert rec["state"] == "LAST-ACK"
    assert (sk.peer_addr, rec["peer_addr"]) == ("10.77.0.3", "10.77.0.3")
    assert rec["timer"] == "on"  # our FIN is being retransmitted
    assert sk.inode == 0 and rec["owners"] == [] and "orphaned" in rec["owner_note"]
    _, peer_rec = one(views, zoo.C, TcpState.FIN_WAIT2, 7007)  # never got that FIN
    assert peer_rec["local_addr"] == "10.77.0.3"


# --- namespaces, owners, age ---------------------------------------------------

def test_two_namespaces_at_once(zoo: Zoo, views: Views) -> None:
    names = {ns["name"] for ns in views.doc["namespaces"]}
    assert {zoo.S, zoo.C} <= names
    assert {r["netns"] for r in views.doc["sockets"]} == {zoo.S, zoo.C}
    assert {views.names[sk.netns] for sk in views.snap.sockets} == {zoo.S, zoo.C}

    narrow = ls_json("--netns", zoo.S, *port_flags())
    assert [ns["name"] for ns in narrow["namespaces"]] == [zoo.S]
    assert narrow["count"] == len(narrow["sockets"]) > 0
    assert {r["netns"] for r in narrow["sockets"]} == {zoo.S}
    lib = scan(Query.build(ports=PORTS), owners=False, netns=zoo.S)
    assert {sk.cookie for sk in lib.sockets} == {r["cookie"] for r in narrow["sockets"]}
    table = sockdoctor("ls", "--netns", "all", *port_flags()).stdout
    assert "Netns" in table.splitlines()[0] and zoo.S in table and zoo.C in table


def test_unknown_namespace(zoo: Zoo) -> None:
    proc = sockdoctor("ls", "--netns", "no-such-ns-xyz", ok=False)
    assert proc.returncode == 3
    assert proc.stderr.count("\n") == 1 and "no-such-ns-xyz" in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    with pytest.raises(NotFoundError):
        scan(netns="no-such-ns-xyz")


def test_owners_with_several_fds(zoo: Zoo, views: Views) -> None:
    sk, rec = one(views, zoo.S, TcpState.ESTABLISHED, 7001)
    want = {(pid, fd) for pid in (zoo.srv.pid, zoo.child) for fd in zoo.est_fds}
    assert {(o.pid, o.fd) for o in sk.owners} == want  # dup: two fds; fork: two pids
    assert {(o["pid"], o["fd"]) for o in rec["owners"]} == want
    assert {o["comm"] for o in rec["owners"]} == {"sdt-srv", "sdt-child"}
    table = sockdoctor("ls", "-p", "--netns", zoo.S, "state", "established", "--port=7001")
    users = re.findall(r'\("([^"]+)",pid=(\d+),fd=(\d+)\)', table.stdout)
    comm = {zoo.srv.pid: "sdt-srv", zoo.child: "sdt-child"}
    assert {(c, int(p), int(f)) for c, p, f in users} == {(comm[p], p, f) for p, f in want}
    mine = ls_json("--pid", str(zoo.child), "--netns", zoo.S)["sockets"]
    assert {(r["state"], r["local_port"]) for r in mine} == {("LISTEN", 7001),
                                                            ("ESTAB", 7001)}
    by_name = ls_json("--process", "sdt-cli", "--netns", "all", *port_flags())["sockets"]
    # (other runs of this suite may have a program of that name in their own labs)
    assert by_name and {r["netns"] for r in by_name} & {zoo.S, zoo.C} == {zoo.C}


def test_missing_pid(zoo: Zoo) -> None:
    pid = 999_999
    while subprocess.run(["test", "-e", f"/proc/{pid}"]).returncode == 0:
        pid += 1
    proc = sockdoctor("ls", "--pid", str(pid), "--netns", zoo.S, ok=False)
    assert proc.returncode == 3 and proc.stderr.startswith(
        f"sockdoctor: --pid: no process {pid} is running (")
    with pytest.raises(NotFoundError, match=f"no process {pid}"):
        scan(Query.build(pids=[pid]), netns=zoo.S)


def test_age_of_an_idle_close_wait(zoo: Zoo, views: Views) -> None:
    for sk, rec in pick(views, zoo.S, TcpState.CLOSE_WAIT, 7002):
        assert sk.age_ms is not None and sk.age_ms >= 2000
        assert rec["age_ms"] >= 2000
    # keepalive probes are answered by the peer: each answer resets the age
    ka, ka_rec = one(views, zoo.S, TcpState.CLOSE_WAIT, 7009)
    assert ka_rec["timer"] == "keepalive" and ka.age_ms is not None and ka.age_ms < 2000

    old = ls_json("--older-than", "1s", "--netns", zoo.S)["sockets"]
    assert sum(1 for r in old if r["state"] == "CLOSE-WAIT" and r["local_port"] == 7002) == 2
    assert all(r["age_ms"] >= 1000 for r in old)
    assert not {r["state"] for r in old} & {"LISTEN", "TIME-WAIT", "SYN-SENT"}
    assert ls_json("--older-than", "1h", "--netns", zoo.S)["sockets"] == []
    lib = scan(Query.build("state close-wait", older_than="1s"), owners=False, netns=zoo.S)
    assert sum(1 for sk in lib.sockets if sk.local_port == 7002) == 2
    table = sockdoctor("ls", "--netns", zoo.S, "state", "close-wait", "--port=7002").stdout
    lines = table.splitlines()
    assert lines[0].split()[-1] == "Age" and len(lines) == 3
    for line in lines[1:]:  # 2s, 17s, 1m05s: whole seconds, at least two
        m = re.search(r"\s(?:(\d+)m)?(\d+)s$", line)
        assert m and int(m.group(1) or 0) * 60 + int(m.group(2)) >= 2, line


# --- ss-compatible details, summary, ndjson ---------------------------------------

_SK = re.compile(r"\bsk:([0-9a-f]+)")


def _ss_like(lines: list[str]) -> dict[str, dict[str, Any]]:
    """Per socket cookie: what `ss -tanpiemo` style output says about it."""
    out: dict[str, dict[str, Any]] = {}
    current: dict[str, Any] | None = None
    for line in lines[1:]:
        if not line.startswith("\t"):
            m = _SK.search(line)
            assert m, line
            timer = re.search(r"timer:\((\w+),", line)
            arrows = re.search(r"\s([<-]-[>-])(\s|$)", line)
            current = out[m.group(1)] = {
                "state": line.split()[0],
                "ino": re.search(r"\bino:(\d+)", line).group(1),  # type: ignore[union-attr]
                "uid": re.search(r"\buid:(\d+)", line),
                "timer": timer and timer.group(1),
                "shutdown": arrows and arrows.group(1),
                "users": set(re.findall(r'\("([^"]+)",pid=(\d+),fd=(\d+)\)', line)),
                "details": "",
            }
        elif current is not None:
            current["details"] += line
    return out


def _skmem(details: str) -> tuple[str, str] | None:
    m = re.search(r"skmem:\(r\d+,rb(\d+),t\d+,tb(\d+)", details)
    return m and (m.group(1), m.group(2))  # type: ignore[return-value]


@pytest.mark.parametrize("side", ["server", "client"])
def test_details_match_ss(zoo: Zoo, side: str) -> None:
    host = zoo.lab.server if side == "server" else zoo.lab.client
    ss = subprocess.run(["ip", "netns", "exec", host.netns, "ss", "-tanpiemo"],
                        capture_output=True, text=True, check=True, timeout=30).stdout
    ours = sockdoctor("ls", "-p", "-i", "-m", "-e", "-o", "--netns", host.netns).stdout
    theirs, mine = _ss_like(ss.splitlines()), _ss_like(ours.splitlines())
    assert mine.keys() == theirs.keys() and len(mine) > 5
    cong = subprocess.run(["ip", "netns", "exec", host.netns, "cat",
                           "/proc/sys/net/ipv4/tcp_congestion_control"],
                          capture_output=True, text=True, check=True).stdout.strip()
    for cookie, t in theirs.items():
        m = mine[cookie]
        for key in ("state", "ino", "timer", "shutdown", "users"):
            assert m[key] == t[key], (key, cookie, m, t)
        assert bool(m["uid"]) == bool(t["uid"])
        assert _skmem(m["details"]) == _skmem(t["details"])
        assert (f" {cong} " in m["details"]) == (f" {cong} " in t["details"])
    timers = {t["timer"] for t in mine.values()}
    assert timers >= ({"keepalive"} if side == "server" else {"on", "timewait", "persist"})


def test_summary_names_who_holds_close_waits(zoo: Zoo, views: Views) -> None:
    out = sockdoctor("ls", "--summary", "--netns", zoo.S).stdout.splitlines()
    assert re.match(r"\d+ TCP sockets: .*CLOSE-WAIT 4", out[0])
    rows = [re.split(r"\s{2,}", line.strip()) for line in out[3:]]  # columns: 2+ spaces
    assert ["2", "CLOSE-WAIT", f"sdt-srv({zoo.srv.pid})", ":7002", zoo.S] in rows
    assert ["1", "CLOSE-WAIT", "(accept queue)", ":7003", zoo.S] in rows
    assert ["1", "LAST-ACK", "(no owner)", ":7007", zoo.S] in rows
    lib = summary.rows(scan(owners=True, netns=zoo.S))
    assert summary.SummaryRow(zoo.S, "CLOSE-WAIT", f"sdt-srv({zoo.srv.pid})", ":7002", 2) in lib
    client = sockdoctor("ls", "--summary", "--netns", zoo.C).stdout
    assert re.search(rf"2\s+FIN-WAIT-2\s+sdt-cli\({zoo.cli.pid}\)\s+-> 10\.77\.0\.1:7002",
                     client)


def test_ndjson_is_one_object_per_line(zoo: Zoo) -> None:
    lines = sockdoctor("ls", "--ndjson", "-p", "--netns", zoo.S).stdout.splitlines()
    records = [json.loads(line) for line in lines]
    assert records and all(isinstance(r, dict) and r["netns"] == zoo.S for r in records)
    doc = ls_json("-p", "--netns", zoo.S)
    assert sorted(r["cookie"] for r in records) == sorted(r["cookie"] for r in doc["sockets"])
