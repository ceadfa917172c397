"""`doctor` run right after a leak (issue 15, item 8).

A server in a lab namespace accepts five connections and never reads them;
the clients close. `sockdoctor doctor` started at once sees CLOSE-WAIT a few
hundred milliseconds old whose EOF the program has not read (Recv-Q 1): it
must say so, not "healthy: nothing to report".
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest

from conftest import Script, allow_stuck_sockets_in
from sockdoctor.lab.netlab import SERVER_V4, Lab

pytestmark = pytest.mark.root

SERVER = """
lst = socket.socket()
lst.bind(("{addr}", 0))
lst.listen(16)
emit({{"port": lst.getsockname()[1]}})
conns = [lst.accept()[0] for _ in range(5)]  # never read, never closed
emit({{"accepted": len(conns)}})
wait()
"""


def test_doctor_right_after_a_leak_mentions_the_unread_eof(
        lab: Lab, request: pytest.FixtureRequest) -> None:
    allow_stuck_sockets_in(request, lab)
    server = Script(lab, lab.server, SERVER.format(addr=SERVER_V4))
    port = server.read()["port"]  # type: ignore[index]
    peers = [lab.client.run(lambda: socket.create_connection((SERVER_V4, port)))
             for _ in range(5)]
    assert server.read() == {"accepted": 5}
    for peer in peers:
        peer.close()
    time.sleep(0.2)  # the case: sockets 0.2 s old (notes start at 100 ms)
    result = subprocess.run([sys.executable, "-m", "sockdoctor", "doctor", "--netns",
                             lab.server.netns], capture_output=True, text=True, timeout=60)
    out = " ".join(result.stdout.split())  # the report wraps at 100 columns
    assert result.returncode == 0, result.stderr
    assert "nothing to report" not in out, out
    assert "5 CLOSE-WAIT sockets" in out and f":{port}" in out, out
    assert "5 of them with the peer's close not yet read (Recv-Q > 0)" in out, out
