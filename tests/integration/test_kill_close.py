"""`close` never frees a descriptor number behind the program's back (unless asked to).

The case of issue 9, reproduced for real: a program keeps a connection the
peer has reset (a pool's dead connection, a pub/sub client). The doctor
offers `kill --dead-fds --pid P` for it. With a bare close(fd) the program's
next open()/connect() gets the same number, and its next write on the old
connection object lands in the new file or socket. With the placeholder
(the default) the number stays taken: nothing reaches the new file or
connection, and the program gets an ordinary error on the old object.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import Remote
from sockdoctor.lab.netlab import CLIENT_V4, Lab

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.uname().machine != "x86_64", reason="syscall injection: x86_64 only"),
]
PORT = 7300


class Pool:
    """A program (in the server namespace) holding one connection its peer has reset."""

    def __init__(self, lab: Lab, tmp_path: Path) -> None:
        self.lab = lab
        self.service = lab.client.run(lambda: socket.create_server((CLIENT_V4, PORT)))
        self.program = Remote(lab, lab.server, "sd-pool")
        self.pid = int(self.program("result = os.getpid()"))  # type: ignore[arg-type]
        self.fd = int(self.program(f"old = socket.create_connection(('{CLIENT_V4}', {PORT}));"
                                   " result = old.fileno()"))  # type: ignore[arg-type]
        peer, _ = self.service.accept()
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
        peer.close()  # a reset: the program's socket leaves every TCP table
        self.program("time.sleep(0.2); result = old.getsockopt(socket.SOL_SOCKET, "
                     "socket.SO_ERROR)")
        self.audit = tmp_path / "audit.jsonl"
        self.file = tmp_path / "new-file"

    def kill(self, *extra: str) -> dict:
        done = subprocess.run(
            [sys.executable, "-m", "sockdoctor", "kill", "--netns", self.lab.server.netns,
             "--pid", str(self.pid), "--dead-fds", "--yes", "--json", "--audit-log",
             str(self.audit), *extra],
            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        assert done.returncode == 0, (done.stderr, done.stdout[-2000:])
        return json.loads(done.stdout)

    def link(self) -> str | None:
        try:
            return os.readlink(f"/proc/{self.pid}/fd/{self.fd}")
        except FileNotFoundError:
            return None

    def write_old(self) -> str:
        """The program writes on its old connection object: what it gets back."""
        return str(self.program("""
            try:
                old.send(b"SECRET")
                result = "sent"
            except OSError as e:
                result = errno.errorcode[e.errno]
        """))


@pytest.fixture
def pool(lab: Lab, tmp_path: Path) -> Iterator[Pool]:
    made = Pool(lab, tmp_path)
    yield made
    made.service.close()


def test_dead_fds_keep_the_number_taken_so_nothing_reaches_a_new_file(pool: Pool) -> None:
    before = pool.link()
    report = pool.kill()
    (item,) = report["plan"]["items"]
    assert (item["socket"], item["method"], item["owners"][0]["fd"]) == (None, "close", pool.fd)
    assert "never reused behind its back" in item["program_sees"]
    assert [o["outcome"] for o in report["outcomes"]] == ["closed"]
    after = pool.link()
    assert before and after and after.startswith("socket:[") and after != before

    # the program opens a file and writes to its old connection object
    new_fd = pool.program(f"f = open({str(pool.file)!r}, 'w'); result = f.fileno()")
    assert new_fd != pool.fd
    assert pool.write_old() in ("EPIPE", "ENOTCONN")
    pool.program("f.close()")
    assert pool.file.read_text() == ""

    # ... and so does a new connection the program opens next
    pool.program(f"new = socket.create_connection(('{CLIENT_V4}', {PORT})); result = 0")
    fresh, _ = pool.service.accept()
    assert pool.write_old() in ("EPIPE", "ENOTCONN")
    fresh.settimeout(0.5)
    with pytest.raises(TimeoutError):
        fresh.recv(100)
    fresh.close()

    lines = [json.loads(line) for line in pool.audit.read_text().splitlines()]
    assert [line["event"] for line in lines] == ["intent", "act", "verify"]
    assert {line["netns"] for line in lines} == {pool.lab.server.netns}  # the real namespace
    assert lines[0]["state"] == "dead-fd" and lines[2]["outcome"] == "closed"


def test_a_bare_close_frees_the_number_and_a_new_connection_gets_the_old_writes(
        pool: Pool) -> None:
    """Why the bare close is only an explicit choice: the reuse it makes possible."""
    report = pool.kill("--bare-close")
    (item,) = report["plan"]["items"]
    assert "may later reuse that number" in item["program_sees"]
    assert pool.link() is None
    new_fd = pool.program(f"new = socket.create_connection(('{CLIENT_V4}', {PORT})); "
                          "result = new.fileno()")
    assert new_fd == pool.fd  # POSIX: the lowest free number
    fresh, _ = pool.service.accept()
    assert pool.write_old() == "sent"
    fresh.settimeout(2)
    assert fresh.recv(100) == b"SECRET"  # the hazard a placeholder prevents
    fresh.close()
