"""Hostile process names reach no terminal raw, and JSON keeps their exact bytes.

A server in a lab namespace names itself with prctl(PR_SET_NAME) — an escape
sequence, a newline and a byte that is not UTF-8 — and leaks CLOSE-WAIT; a
second program renames itself through /proc/self/comm; a third lives in a
namespace of its own (unshare -n), which sockdoctor can only call after it:
`pid:N(<its name>)`. Every output a person reads must show the names escaped
on one line; every JSON output must carry the exact bytes.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from conftest import Script, allow_stuck_sockets_in
from sockdoctor.lab.netlab import SERVER_V4, Lab
from sockdoctor.snapshot_io import load

pytestmark = pytest.mark.root

NAME = b"\x1b[31mRED\nx\xff"  # 10 bytes: the kernel keeps up to 15
SHOWN = "\\x1b[31mRED\\nx\\xff"
PORT = 7400
SERVER = f"""
import ctypes
ctypes.CDLL(None).prctl(15, ctypes.c_char_p({NAME!r}), 0, 0, 0)  # PR_SET_NAME
lst = socket.socket()
lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
lst.bind(("{SERVER_V4}", {PORT}))
lst.listen(16)
emit({{"ready": True}})
conns = []
while True:
    conns.append(lst.accept()[0])  # never read, never closed: CLOSE-WAIT once peers close
"""
RENAMED = b"\x1b]0;pwned\x07\x9b"  # an OSC title sequence, BEL, a C1 CSI byte
VIA_PROC = f"""
with open("/proc/self/comm", "wb") as f:
    f.write({RENAMED!r})
lst = socket.socket()
lst.bind(("127.0.0.1", {PORT + 1}))
lst.listen(1)
emit({{"ready": True}})
wait()
"""


@dataclass
class Scene:
    lab: Lab
    server: Script
    renamed: Script
    alone: subprocess.Popen  # in a network namespace of its own

    @property
    def ns(self) -> str:
        return self.lab.server.netns


@pytest.fixture(scope="module")
def scene(request: pytest.FixtureRequest) -> Iterator[Scene]:
    with Lab("hostile") as lab:
        allow_stuck_sockets_in(request, lab)  # the leaking server's CLOSE-WAIT
        server = Script(lab, lab.server, SERVER)
        assert server.read() == {"ready": True}
        renamed = Script(lab, lab.server, VIA_PROC)
        assert renamed.read() == {"ready": True}
        for _ in range(5):
            peer = lab.client.run(lambda: socket.create_connection((SERVER_V4, PORT)))
            peer.sendall(b"x")
            peer.close()
        alone = subprocess.Popen(
            ["unshare", "--net", sys.executable, "-c",
             f"import ctypes, socket, time\nctypes.CDLL(None).prctl(15, {NAME!r}, 0, 0, 0)\n"
             "s = socket.socket(); s.bind(('127.0.0.1', 7402)); s.listen(1)\n"
             "print('ready', flush=True)\ntime.sleep(600)"],
            stdout=subprocess.PIPE, text=True)
        try:
            assert alone.stdout.readline().strip() == "ready"  # type: ignore[union-attr]
            time.sleep(1.2)  # the CLOSE-WAIT become older than --stuck-after 1s
            yield Scene(lab, server, renamed, alone)
        finally:
            alone.kill()
            alone.wait(timeout=10)


def run(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "sockdoctor", *args], capture_output=True,
                          timeout=60)


def assert_reaches_no_terminal_raw(data: bytes) -> str:
    """Only printable text and newlines: no ESC, BEL, C1 or undecodable byte, no raw name."""
    text = data.decode("utf-8")  # valid UTF-8, or this raises
    assert NAME not in data and RENAMED not in data
    for line in text.split("\n"):
        assert line.isprintable(), repr(line)
    return text


def test_the_table_shows_the_names_escaped_in_one_row_each(scene: Scene) -> None:
    done = run("ls", "-tanp", "--netns", scene.ns)
    assert done.returncode == 0, done.stderr
    text = assert_reaches_no_terminal_raw(done.stdout)
    rows = [line for line in text.splitlines() if f'("{SHOWN}",pid={scene.server.pid}' in line]
    assert len(rows) == 6  # the listener and five CLOSE-WAIT: none split by the newline
    assert '("\\x1b]0;pwned\\x07\\x9b"' in text


def test_the_summaries_show_the_names_escaped(scene: Scene) -> None:
    done = run("ls", "--summary", "--netns", scene.ns)
    text = assert_reaches_no_terminal_raw(done.stdout)
    assert f"CLOSE-WAIT  {SHOWN}({scene.server.pid})" in text
    assert assert_reaches_no_terminal_raw(run("ls", "-s", "--netns", scene.ns).stdout)


def test_a_namespace_named_after_a_hostile_process_is_escaped(scene: Scene) -> None:
    done = run("ls", "--summary", "--netns", str(scene.alone.pid))
    assert done.returncode == 0, done.stderr
    text = assert_reaches_no_terminal_raw(done.stdout)
    assert f"pid:{scene.alone.pid}({SHOWN})" in text
    err = run("ls", "--netns", "no-such\x1b[2Jns")  # and what the user typed, in errors
    assert err.returncode == 3
    assert_reaches_no_terminal_raw(err.stderr)
    assert b"no-such\\x1b[2Jns" in err.stderr


def test_the_doctor_report_shows_the_name_escaped(scene: Scene) -> None:
    done = run("doctor", "--netns", scene.ns, "--stuck-after", "1s")
    assert done.returncode == 1, done.stderr
    text = assert_reaches_no_terminal_raw(done.stdout)
    assert f"never-closed  {SHOWN} (pid {scene.server.pid}) holds 5 CLOSE-WAIT sockets" in text
    assert_reaches_no_terminal_raw(done.stderr)


def test_json_outputs_keep_the_exact_bytes(scene: Scene, tmp_path) -> None:
    doc = json.loads(run("ls", "-p", "--json", "--netns", scene.ns).stdout)
    owners = {o["pid"]: o for rec in doc["sockets"] for o in rec.get("owners", [])}
    for pid, name in ((scene.server.pid, NAME), (scene.renamed.pid, RENAMED)):
        # ls --json: comm always a string; the exact bytes only when they are not UTF-8
        assert isinstance(owners[pid]["comm"], str)
        exact = owners[pid].get("comm_bytes")
        assert (bytes(exact) if exact is not None else owners[pid]["comm"].encode()) == name
    report = json.loads(run("doctor", "--json", "--netns", scene.ns, "--stuck-after", "1s")
                        .stdout)
    [finding] = [f for f in report["findings"] if f["rule"] == "never-closed"]
    assert bytes(finding["processes"][0]["comm"]) == NAME
    path = tmp_path / "snap.json.gz"
    assert run("snapshot", "-o", str(path), "--netns", scene.ns).returncode == 0
    proc = load(str(path)).processes[scene.server.pid]
    assert proc.comm.encode("utf-8", "surrogateescape") == NAME
    assert os.path.exists(path)


def test_process_selection_works_with_the_exact_name(scene: Scene) -> None:
    glob = run("ls", "-p", "--netns", scene.ns, "--process", "*RED*")
    assert glob.returncode == 0, glob.stderr
    text = assert_reaches_no_terminal_raw(glob.stdout)
    assert text.count(f"pid={scene.server.pid}") == 6
    assert f"pid={scene.renamed.pid}" not in text


def test_the_kill_plan_as_json_keeps_the_exact_bytes(scene: Scene) -> None:
    done = run("kill", "--netns", scene.ns, "--port", str(PORT), "--json")  # a plan only
    assert b"Traceback" not in done.stderr, done.stderr
    assert json.dumps(list(NAME)).replace(" ", "").encode() in done.stdout.replace(b" ", b"")
    json.loads(done.stdout)


def test_kill_ends_the_sockets_and_audits_the_exact_name(scene: Scene, tmp_path) -> None:
    audit = tmp_path / "audit.jsonl"
    done = run("kill", "--netns", scene.ns, "--port", str(PORT), "--yes", "--audit-log",
               str(audit))
    assert done.returncode == 0, done.stderr
    assert_reaches_no_terminal_raw(done.stdout)
    assert_reaches_no_terminal_raw(done.stderr)
    lines = [json.loads(line) for line in audit.read_text().splitlines()]
    acted = [line for line in lines if line.get("comm")]
    assert acted and all(bytes(line["comm"]) == NAME for line in acted)
