"""Snapshot files: round trip, gzip, every kind of bad file, atomic writes."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pytest

from sockdoctor import snapshot_io
from sockdoctor.errors import BadSnapshotError, NotFoundError, WriteError
from sockdoctor.model import (
    DeadSocketFd,
    Netns,
    Owner,
    Process,
    SkMemInfo,
    Snapshot,
    Socket,
    TcpInfo,
    ThreadInfo,
)


def full_snapshot() -> Snapshot:
    """Every part of a Snapshot filled in, so a round trip has something to lose."""
    cw = Socket(4026531840, 2, 8, "10.0.0.1", 8080, "10.0.0.2", 51234, 777, 0xABC, 0, 1, 0,
                timer=2, expires_ms=7_000_000, retrans=0, ifindex=0,
                owners=[Owner(42, 7), Owner(43, 7)], age_ms=600_123, shutdown=0,
                cgroup_id=99, mark=0, cong="cubic",
                info=TcpInfo(state=8, rtt=1500, last_ack_recv=600_123, snd_wscale=7),
                mem=SkMemInfo(1, 2, 3, 4, 5, 6, 7, 8, 9))
    v6 = Socket(4026532000, 10, 10, "::", 443, "::", 0, 778, 0xABD, 1000, 0, 4096)
    return Snapshot(
        created=1_700_000_000.25, hostname="box", kernel="6.18.0", sockets=[cw, v6],
        namespaces=[Netns(inode=4026531840, name="host", kind="host", pid=1,
                          sysctls={"net.ipv4.tcp_fin_timeout": "60"},
                          counters={"TcpExt": {"ListenOverflows": 3}}),
                    Netns(inode=4026532000, name="blue", kind="named", error="gone")],
        processes={42: Process(pid=42, comm="app", cmdline=["app", "--serve"], uid=0,
                               user="root", threads=[ThreadInfo(42, "S", "ep_poll",
                                                                "epoll_wait")])},
        sysctls={"fs.file-max": "100"}, dead_fds=[DeadSocketFd(42, 9, 555, "TCP")],
        owners_scanned=True, info_scanned=True, warnings=["a note"])


@pytest.mark.parametrize("name", ["s.json", "s.json.gz"])
def test_round_trip(tmp_path: Path, name: str) -> None:
    snap = full_snapshot()
    path = tmp_path / name
    snapshot_io.save(snap, str(path))
    assert snapshot_io.load(str(path)) == snap
    raw = path.read_bytes()
    if name.endswith(".gz"):
        assert raw[:2] == b"\x1f\x8b"
        raw = gzip.decompress(raw)
    assert json.loads(raw)["schema"] == "sockdoctor.snapshot/1"
    assert snapshot_io.loads(snapshot_io.dumps(snap)) == snap


def test_the_file_is_readable_json_with_named_fields() -> None:
    doc = json.loads(snapshot_io.dumps(full_snapshot()))
    assert {"schema", "created", "hostname", "kernel", "sockets", "namespaces", "processes",
            "sysctls", "dead_fds", "owners_scanned", "info_scanned", "warnings"} <= set(doc)
    sk = doc["sockets"][0]
    assert (sk["state"], sk["local_port"], sk["age_ms"]) == (8, 8080, 600_123)
    assert sk["owners"] == [{"pid": 42, "fd": 7}, {"pid": 43, "fd": 7}]
    assert doc["processes"]["42"]["comm"] == "app"


GOOD_GZ = gzip.compress(snapshot_io.dumps(full_snapshot()))

BAD = {
    "binary": b"\x00\x01\x02\xff\xfe",
    "not json": b"hello world",
    "empty": b"",
    "json list": b"[1, 2, 3]",
    "foreign object": b'{"kind": "something else", "items": []}',
    "ls output": b'{"schema": "sockdoctor.ls/2", "sockets": []}',
    "future schema": b'{"schema": "sockdoctor.snapshot/2", "sockets": []}',
    "wrong types": b'{"schema": "sockdoctor.snapshot/1", "created": "now", "hostname": "h",'
                   b' "kernel": "k", "sockets": []}',
    "missing fields": b'{"schema": "sockdoctor.snapshot/1"}',
    "bad socket": b'{"schema": "sockdoctor.snapshot/1", "created": 1, "hostname": "h",'
                  b' "kernel": "k", "sockets": [{"netns": "x"}]}',
    "truncated json": snapshot_io.dumps(full_snapshot())[:100],
    "truncated gzip": GOOD_GZ[: len(GOOD_GZ) // 2],
    "gzip header only": GOOD_GZ[:10],
    "damaged gzip": GOOD_GZ[:20] + bytes([GOOD_GZ[20] ^ 0xFF]) + GOOD_GZ[21:],
    "gzip of garbage": gzip.compress(b"\x00garbage"),
}


@pytest.mark.parametrize("what", sorted(BAD))
def test_bad_files_are_a_clear_error(tmp_path: Path, what: str) -> None:
    path = tmp_path / "bad.json"
    path.write_bytes(BAD[what])
    with pytest.raises(BadSnapshotError) as err:
        snapshot_io.load(str(path))
    message = str(err.value)
    assert str(path) in message and "\n" not in message
    assert err.value.exit_code == 6


def test_foreign_files_are_named_as_such(tmp_path: Path) -> None:
    with pytest.raises(BadSnapshotError, match=r"not a sockdoctor snapshot.*sockdoctor\.ls/2"):
        snapshot_io.loads(BAD["ls output"], "x.json")
    with pytest.raises(BadSnapshotError, match="no schema field"):
        snapshot_io.loads(BAD["foreign object"], "x.json")
    with pytest.raises(BadSnapshotError, match="damaged gzip"):
        snapshot_io.loads(BAD["truncated gzip"], "x.json.gz")


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="no such snapshot file"):
        snapshot_io.load(str(tmp_path / "nope.json"))
    with pytest.raises(BadSnapshotError, match="is a directory"):
        snapshot_io.load(str(tmp_path))


def test_failed_write_leaves_no_temporary_file(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "snap.json"
    target.write_text("the previous snapshot")

    def broken_replace(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(WriteError, match=r"no space left on the device.*existing file is "
                                         r"unchanged"):
        snapshot_io.save(full_snapshot(), str(target))
    assert os.listdir(tmp_path) == ["snap.json"]
    assert target.read_text() == "the previous snapshot"  # never half-written


def test_interrupted_write_leaves_no_temporary_file(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(_snapshot: Snapshot) -> bytes:
        raise KeyboardInterrupt

    monkeypatch.setattr(snapshot_io, "dumps", interrupted)
    with pytest.raises(KeyboardInterrupt):
        snapshot_io.save(full_snapshot(), str(tmp_path / "snap.json"))
    assert os.listdir(tmp_path) == []


def test_save_replaces_an_older_file_whole(tmp_path: Path) -> None:
    target = tmp_path / "snap.json"
    target.write_text("x" * 1_000_000)
    snapshot_io.save(full_snapshot(), str(target))
    assert snapshot_io.load(str(target)) == full_snapshot()
    assert os.listdir(tmp_path) == ["snap.json"]


def test_unwritable_targets(tmp_path: Path) -> None:
    with pytest.raises(WriteError, match="is a directory"):
        snapshot_io.save(full_snapshot(), str(tmp_path))
    with pytest.raises(WriteError, match="no such directory"):  # an output path: exit 7
        snapshot_io.save(full_snapshot(), str(tmp_path / "missing" / "snap.json"))
    assert os.listdir(tmp_path) == []
