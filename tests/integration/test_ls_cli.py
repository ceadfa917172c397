"""`sockdoctor snapshot` / `ls --from`, user errors, and `ls` as an unprivileged user.

A one-namespace lab (loopback only) holds a listener and a CLOSE_WAIT owned by
a root program and a listener with a connection owned by a program running as
`nobody`. The unprivileged runs use `setpriv` inside that namespace, with the
package importable through PYTHONPATH from a place `nobody` can read.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from conftest import SETPRIV, Remote, Unprivileged
from sockdoctor.lab.netlab import Lab
from sockdoctor.snapshot_io import load

pytestmark = pytest.mark.root



@dataclass
class Net:
    lab: Lab
    root: Remote
    nobody: Remote | None = None

    @property
    def ns(self) -> str:
        return self.lab.server.netns


@pytest.fixture(scope="module")
def net() -> Iterator[Net]:
    with Lab("lscli", pair=False) as lab:
        root = Remote(lab, lab.server, "sdt-root")
        root("""
            lst = socket.socket()
            lst.bind(("127.0.0.1", 7201))
            lst.listen(8)
            peer = socket.create_connection(("127.0.0.1", 7201))
            conn, _ = lst.accept()
            peer.close()  # conn: CLOSE_WAIT, held by us; peer: orphaned FIN_WAIT2
        """)
        yield Net(lab, root)


def sockdoctor_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sockdoctor", *args], capture_output=True,
                          text=True, timeout=60)


def ls_json(*args: str) -> dict[str, Any]:
    proc = sockdoctor_cli("ls", "--json", *args)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def one_sentence(proc: subprocess.CompletedProcess, code: int) -> str:
    """A user error: the given exit code and one line on stderr, no traceback."""
    assert proc.returncode == code, proc.stderr
    assert proc.stdout == ""
    assert proc.stderr.startswith("sockdoctor: ") and proc.stderr.count("\n") == 1
    return proc.stderr


def identities(records: list[dict[str, Any]]) -> set[tuple]:
    return {(r["netns"], r["state"], r["local_addr"], r["local_port"], r["peer_addr"],
             r["peer_port"], r["inode"], r["cookie"]) for r in records}


# --- snapshots -------------------------------------------------------------------

@pytest.mark.parametrize("name", ["snap.json", "snap.json.gz"])
def test_snapshot_then_ls_from_gives_the_same_sockets(net: Net, tmp_path: Path,
                                                      name: str) -> None:
    path = tmp_path / name
    made = sockdoctor_cli("snapshot", "-o", str(path), "--netns", net.ns)
    assert made.returncode == 0, made.stderr
    assert re.search(r"wrote 3 sockets, 1 process, 1 network namespace to ", made.stderr)
    live = ls_json("-p", "--netns", net.ns)
    saved = ls_json("-p", "--from", str(path))
    assert identities(saved["sockets"]) == identities(live["sockets"])
    assert {r["state"] for r in saved["sockets"]} >= {"LISTEN", "CLOSE-WAIT", "FIN-WAIT-2"}
    (cw,) = [r for r in saved["sockets"] if r["state"] == "CLOSE-WAIT"]
    assert [(o["pid"], o["comm"]) for o in cw["owners"]] == [(net.root.pid, "sdt-root")]
    assert cw["age_ms"] >= 0 and cw["recv_q"] == 1

    snap = load(str(path))  # the library reads back the complete evidence
    assert snap.schema == "sockdoctor.snapshot/1" and snap.owners_scanned
    assert {sk.cookie for sk in snap.sockets} == {r["cookie"] for r in live["sockets"]}
    (ns,) = snap.namespaces
    assert ns.name == net.ns and "net.ipv4.tcp_fin_timeout" in ns.sysctls
    assert "TcpExt" in ns.counters and snap.processes[net.root.pid].comm == "sdt-root"
    if name.endswith(".gz"):
        assert path.read_bytes()[:2] == b"\x1f\x8b"

    only_cw = ls_json("--from", str(path), "state", "close-wait")["sockets"]
    assert [r["cookie"] for r in only_cw] == [cw["cookie"]]
    assert ls_json("--from", str(path), "--older-than", "1h")["sockets"] == []
    table = sockdoctor_cli("ls", "-p", "--from", str(path)).stdout
    assert f'users:(("sdt-root",pid={net.root.pid},fd=' in table


def test_snapshot_output_errors(net: Net, tmp_path: Path) -> None:
    one_sentence(sockdoctor_cli("snapshot", "-o", str(tmp_path), "--netns", net.ns), 7)
    one_sentence(sockdoctor_cli("snapshot", "-o", str(tmp_path / "no" / "such.json"),
                                "--netns", net.ns), 7)  # an output path: README says 7
    assert os.listdir(tmp_path) == []  # no temporary file left behind


def _bad_files(tmp_path: Path, net: Net) -> dict[str, Path]:
    good = gzip.compress(b'{"schema": "sockdoctor.snapshot/1", "sockets": []}' * 50)
    files = {
        "corrupt": b"\x00\x17garbage that is not json\xff",
        "foreign": b'{"name": "some other program", "items": [1, 2, 3]}',
        "ls-output": sockdoctor_cli("ls", "--json", "--netns", net.ns).stdout.encode(),
        "truncated-gzip": good[: len(good) // 2],
        "damaged-gzip": good[:20] + bytes([good[20] ^ 0xFF]) + good[21:],
        "wrong-types": b'{"schema": "sockdoctor.snapshot/1", "created": "yesterday",'
                       b' "hostname": 1, "kernel": "", "sockets": {}}',
        "empty": b"",
    }
    out = {}
    for name, data in files.items():
        out[name] = tmp_path / name
        out[name].write_bytes(data)
    return out


def test_ls_from_bad_files(net: Net, tmp_path: Path) -> None:
    for name, path in _bad_files(tmp_path, net).items():
        message = one_sentence(sockdoctor_cli("ls", "--from", str(path)), 6)
        assert str(path) in message, name
    assert "not a sockdoctor snapshot" in one_sentence(
        sockdoctor_cli("ls", "--from", str(tmp_path / "ls-output")), 6)
    assert "gzip" in one_sentence(
        sockdoctor_cli("ls", "--from", str(tmp_path / "truncated-gzip")), 6)
    missing = one_sentence(sockdoctor_cli("ls", "--from", str(tmp_path / "missing.json")), 3)
    assert "missing.json" in missing
    one_sentence(sockdoctor_cli("ls", "--from", str(tmp_path)), 6)  # a directory


@pytest.mark.parametrize("expr, token", [
    (["state", "close-wiat"], "close-wiat"),
    (["sport", "=", ":80", "and", "("], None),
    (["dport", ">", ":notaport"], ":notaport"),
])
def test_bad_filter_points_at_the_token(net: Net, expr: list[str], token: str | None) -> None:
    proc = sockdoctor_cli("ls", "--netns", net.ns, *expr)
    assert proc.returncode == 2 and proc.stdout == "" and "Traceback" not in proc.stderr
    message, echoed, caret = proc.stderr.rstrip("\n").split("\n")
    assert message.startswith("sockdoctor: ")
    assert echoed.strip() == " ".join(expr)
    assert caret.strip() == "^"
    at = caret.index("^")
    if token is None:  # the filter ended too early: the caret is past its end
        assert at >= len(echoed.rstrip())
    else:
        assert echoed[at:].startswith(token.split(":")[0] or token)


# --- unprivileged ------------------------------------------------------------------

@pytest.fixture(scope="module")
def with_nobody(net: Net, unprivileged: Unprivileged) -> Iterator[Net]:
    if net.nobody is None:
        net.nobody = Remote(net.lab, net.lab.server, "sdt-nobody", prefix=SETPRIV,
                            python=unprivileged.python)
        net.nobody("""
            lst = socket.socket()
            lst.bind(("127.0.0.1", 7301))
            lst.listen(8)
            peer = socket.create_connection(("127.0.0.1", 7301))
            conn, _ = lst.accept()
        """)
    yield net
    nobody, net.nobody = net.nobody, None  # its sockets end with this fixture, not later
    nobody.proc.kill()
    nobody.proc.wait()


def as_nobody(net: Net, how: Unprivileged, *args: str) -> subprocess.CompletedProcess:
    return how.sockdoctor(*args, netns=net.ns)


def test_unprivileged_ls_shows_sockets_and_own_owners(with_nobody: Net,
                                                      unprivileged: Unprivileged) -> None:
    net = with_nobody
    proc = as_nobody(net, unprivileged, "ls", "-p", "--json", "--netns", "self")
    assert proc.returncode == 0, proc.stderr
    notes = proc.stderr.splitlines()
    assert len(notes) == 1 and notes[0].startswith("sockdoctor: note: ")
    assert "other users" in notes[0] and "root" in notes[0]  # what is missing, and why
    doc = json.loads(proc.stdout)
    assert doc["warnings"] == [notes[0].removeprefix("sockdoctor: note: ")]
    assert identities(doc["sockets"]) == identities(ls_json("--netns", net.ns)["sockets"])
    for rec in doc["sockets"]:
        ports = (rec["local_port"], rec["peer_port"])
        if 7301 in ports and rec["inode"]:  # the nobody program's own sockets
            assert [(o["pid"], o["comm"]) for o in rec["owners"]] == \
                [(net.nobody.pid, "sdt-nobody")]  # type: ignore[union-attr]
        else:  # root's: visible, but not whose
            assert rec["owners"] == [] and rec["owner_note"]
    assert {r["state"] for r in doc["sockets"] if 7201 in (r["local_port"], r["peer_port"])} \
        == {"LISTEN", "CLOSE-WAIT", "FIN-WAIT-2"}
    table = as_nobody(net, unprivileged, "ls", "-p", "--netns", "self", "state", "close-wait")
    assert table.returncode == 0 and "(owner not visible" in table.stdout


def test_unprivileged_other_namespaces_need_root(with_nobody: Net,
                                                 unprivileged: Unprivileged) -> None:
    net = with_nobody
    proc = as_nobody(net, unprivileged, "ls", "--json", "--netns", "all")
    assert proc.returncode == 0, proc.stderr
    assert "root" in proc.stderr and "network namespace" in proc.stderr
    doc = json.loads(proc.stdout)
    assert [ns["name"] for ns in doc["namespaces"]] == [net.ns]
    refused = as_nobody(net, unprivileged, "ls", "--netns", "host")
    one_sentence(refused, 4)
    assert "root" in refused.stderr


def test_unprivileged_the_own_namespace_is_called_host(unprivileged: Unprivileged) -> None:
    """PID 1's namespace is not inspectable without root: ours is the host, by name too."""
    proc = unprivileged.sockdoctor("ls", "--json", "--netns", "self", "--port", "1")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert [(ns["name"], ns["kind"]) for ns in doc["namespaces"]] == [("host", "host")]
    summary = unprivileged.sockdoctor("ls", "--summary", "--netns", "host", "--port", "1")
    assert summary.returncode == 0, summary.stderr
    assert "pid:" not in summary.stdout + summary.stderr


@pytest.mark.parametrize(("args", "code"), [
    (("ls", "-p"), 0),
    (("ls", "--json"), 0),
    (("ls", "--summary"), 0),
    (("snapshot", "-o", "-"), 0),
    (("doctor", "--stuck-after", "1h"), 0),  # its own status (healthy), not click's 1
    (("doctor", "--json", "--stuck-after", "1h"), 0),
])
def test_a_reader_that_went_away_ends_quietly_with_the_commands_status(
        net: Net, args: tuple[str, ...], code: int) -> None:
    read, write = os.pipe()
    os.close(read)  # `| head` after head has exited
    try:
        done = subprocess.run([sys.executable, "-m", "sockdoctor", *args, "--netns", net.ns],
                              stdout=write, stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(write)
    assert (done.returncode, done.stderr) == (code, "")
