"""The in-kernel port filter: the kernel accepts our program and returns only matches."""

from __future__ import annotations

import pytest

from conftest import Script
from sockdoctor.inventory import scan
from sockdoctor.lab.netlab import Lab
from sockdoctor.linux import sockdiag
from sockdoctor.model import ALL_STATES_MASK
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
