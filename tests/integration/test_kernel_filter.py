"""What the kernel does with our dump requests: the in-kernel port filter returns only
matches, and one walk for both families returns what a dump per family returns."""

from __future__ import annotations

import socket

import msgspec
import pytest

from conftest import Script
from sockdoctor.inventory import scan
from sockdoctor.lab.netlab import Lab
from sockdoctor.linux import sockdiag
from sockdoctor.model import ALL_STATES_MASK, TcpState
from sockdoctor.query import Query

PORTS = (80, 81, 8080, 9000)


@pytest.mark.root
def test_port_filter_runs_in_the_kernel_and_matches_python(solo: Lab) -> None:
    holder = Script(solo, solo.server, f"""
        keep = []
        for port in {PORTS!r}:
            for fam, addr in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
                l = socket.socket(fam); l.bind((addr, port)); l.listen(8); keep.append(l)
                for _ in range(2):
                    c = socket.socket(fam); c.connect((addr, port)); keep.append(c)
                    keep.append(l.accept()[0])
        emit("ready"); wait()
    """)
    assert holder.read() == "ready"

    def dump(program: bytes) -> list:
        sock = sockdiag.open_socket()
        try:
            return sockdiag.dump(sock, sockdiag.DumpOptions(ALL_STATES_MASK, bytecode=program))
        finally:
            sock.close()

    everything = solo.server.run(lambda: dump(b""))
    filtered = solo.server.run(lambda: dump(sockdiag.port_filter([80, 9000])))
    expected = {sk.cookie for sk in everything if {sk.local_port, sk.peer_port} & {80, 9000}}
    assert {sk.cookie for sk in filtered} == expected
    assert len(filtered) == 2 * 2 * (1 + 2 + 2)  # 2 ports x 2 families x (listener + 2 pairs)
    assert len(everything) == len(PORTS) * 2 * 5

    via_query = scan(Query.build([], ports=[81]), owners=False, netns=solo.server.netns)
    assert sorted(sk.cookie for sk in via_query.sockets) == sorted(
        sk.cookie for sk in everything if 81 in (sk.local_port, sk.peer_port))


@pytest.mark.root
def test_one_walk_for_both_families_returns_what_two_dumps_return(solo: Lab) -> None:
    holder = Script(solo, solo.server, """
        keep = []
        for fam, addr in ((socket.AF_INET6, "::1"), (socket.AF_INET, "127.0.0.1")) * 3:
            l = socket.socket(fam); l.bind((addr, 0)); l.listen(8); keep.append(l)
            c = socket.socket(fam); c.connect(l.getsockname()[:2]); keep.append(c)
            keep.append(l.accept()[0])
        keep[1].close()  # one CLOSE-WAIT and its FIN-WAIT-2
        while any(line.split()[3] == "04" for line in open("/proc/net/tcp6").readlines()[1:]):
            time.sleep(0.01)  # FIN-WAIT-1 (04) until the peer's ACK of that FIN, maybe delayed
        emit({"ready": keep[0].getsockname()[1]}); wait()
    """)
    port = holder.read()["ready"]  # type: ignore[index]

    def steady(sk: object) -> bytes:
        """Every field but the clocks that move between two dumps (tcp_info, age, timers)."""
        fields = msgspec.to_builtins(sk)
        info = fields.pop("info")
        fields["info"] = info and {k: info[k] for k in ("state", "snd_mss", "options")}
        fields.pop("age_ms"), fields.pop("expires_ms")
        return msgspec.json.encode(fields)

    def both(opts: sockdiag.DumpOptions) -> tuple[list, list]:
        sock = sockdiag.open_socket()
        try:
            one = sockdiag.dump(sock, opts)
            two = [sk for fam in (socket.AF_INET, socket.AF_INET6)
                   for sk in sockdiag._dump_family(sock, fam, opts, 0)]
            return one, two
        finally:
            sock.close()

    everything = sockdiag.DumpOptions(ALL_STATES_MASK, info=True, mem=True, attrs=True)
    one, two = solo.server.run(lambda: both(everything))
    assert sockdiag._single_walk  # this kernel answers the older request
    assert sorted(map(steady, one)) == sorted(map(steady, two))  # every socket, every field
    assert [sk.family for sk in one] == [socket.AF_INET] * 9 + [socket.AF_INET6] * 9
    assert {sk.state for sk in one} >= {TcpState.CLOSE_WAIT, TcpState.FIN_WAIT2}

    filtered = sockdiag.DumpOptions(ALL_STATES_MASK, age=True,
                                    bytecode=sockdiag.port_filter([port]))
    one, two = solo.server.run(lambda: both(filtered))
    assert sorted(map(steady, one)) == sorted(map(steady, two))
    # the IPv6 listener of `port`, and both ends of its connection
    assert len(one) == 3 and all(port in (sk.local_port, sk.peer_port) for sk in one)
