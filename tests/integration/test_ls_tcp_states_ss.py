"""`ls -t` chooses the states `ss -t` chooses, also when a state is named (even "all").

ss's `-t` alone lists connected sockets only (no LISTEN, TIME-WAIT or SYN-RECV),
but a named state wins: `ss -t state all` lists every state. sockdoctor's ls
follows it (cli/ls.py ss_default_states asks Query.names_states). Compared
against ss itself, run in a namespace this test creates, on a listener, both
ends of an ESTABLISHED connection and a TIME-WAIT.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import Script
from sockdoctor.lab.netlab import Lab

pytestmark = pytest.mark.root

PROGRAM = """
ls = socket.create_server(("127.0.0.1", 0))
port = ls.getsockname()[1]
c1 = socket.create_connection(("127.0.0.1", port)); s1, _ = ls.accept()
c2 = socket.create_connection(("127.0.0.1", port)); s2, _ = ls.accept()
c2.close(); s2.recv(1); s2.close()  # c2 closed first: TIME-WAIT on its side
time.sleep(0.2)
emit({"port": port})
wait()
"""
Row = tuple[str, int, int]  # state (as ss names it, ls too), local port, peer port


def ss(netns: str, *args: str, only: str = "") -> set[Row]:
    """ss's rows; `only`: the one state asked for (ss then prints no State column)."""
    out = subprocess.run(["ip", "netns", "exec", netns, "ss", "-tnH", *args],
                         capture_output=True, text=True, check=True, timeout=30).stdout
    rows = set()
    for line in out.splitlines():
        state, _recv, _send, local, peer = ([only] if only else []) + line.split()[:5]
        rows.add((state, int(local.rsplit(":", 1)[1]),
                  int(peer.rsplit(":", 1)[1]) if not peer.endswith("*") else 0))
    return rows


def ls(netns: str, *args: str) -> set[Row]:
    run = subprocess.run([sys.executable, "-m", "sockdoctor", "ls", "--netns", netns,
                          "--ndjson", *args], capture_output=True, text=True, timeout=60,
                         stdin=subprocess.DEVNULL)
    assert run.returncode == 0, run.stderr
    return {(rec["state"], rec["local_port"], rec["peer_port"])
            for rec in map(json.loads, run.stdout.splitlines())}


def test_ls_t_with_a_named_state_lists_what_ss_t_lists(solo: Lab) -> None:
    program = Script(solo, solo.server, PROGRAM)
    port = program.read()["port"]  # type: ignore[index]
    ns = solo.server.netns
    every = ss(ns, "state", "all")
    states = {state for state, *_ in every}
    assert {"LISTEN", "ESTAB", "TIME-WAIT"} <= states, every
    assert ("LISTEN", port, 0) in every
    connected = ss(ns)
    assert "LISTEN" not in {s for s, *_ in connected} and connected  # ss -t: connected only
    assert ls(ns, "-t") == connected
    assert ls(ns, "-t", "--state", "all") == every  # a named state wins, as in ss
    assert ls(ns, "-t", "state", "all") == every
    assert ls(ns, "-t", "--state", "listening") == ss(ns, "state", "listening", only="LISTEN") \
        == {("LISTEN", port, 0)}
    assert ls(ns, "-ta") == ss(ns, "-a") == every
