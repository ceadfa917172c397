"""`snapshot -o` on real files: refused targets stay intact, full and read-only disks,
no permission, `-o -` and `--from -`.

Every target lives in a temporary directory of the test: the device node is
one the test makes there with mknod (the numbers of /dev/full), the full and
the read-only file systems are small tmpfs mounts of the test's own, unmounted
afterwards. The scans only look at a one-namespace lab.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import SETPRIV, Unprivileged
from sockdoctor.lab.netlab import Lab

pytestmark = pytest.mark.root

FULL = os.makedev(1, 7)  # what /dev/full is: every write fails with ENOSPC


@pytest.fixture(scope="module")
def ns() -> Iterator[str]:
    with Lab("files", pair=False) as lab:
        yield lab.server.netns


def snapshot(ns: str, target: str, stdout=subprocess.PIPE) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sockdoctor", "snapshot", "-o", target,
                           "--netns", ns], stdout=stdout, stderr=subprocess.PIPE, timeout=60)


def refused(done: subprocess.CompletedProcess, code: int, *words: str) -> str:
    err = done.stderr.decode()
    assert done.returncode == code, err
    assert err.startswith("sockdoctor: ") and err.count("\n") == 1, err  # one sentence
    assert "Traceback" not in err
    for word in words:
        assert word in err, err
    return err


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs of this test's own, unmounted afterwards."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", f"sdt{os.getpid()}", str(mnt)],
                   check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_symlink_fifo_device_and_directory_targets_are_refused_and_left_intact(
        ns: str, tmp_path: Path) -> None:
    precious = tmp_path / "precious"
    precious.write_text("keep me")
    (tmp_path / "link").symlink_to(precious)
    os.mkfifo(tmp_path / "fifo")
    os.mknod(tmp_path / "full", stat.S_IFCHR | 0o666, FULL)
    (tmp_path / "dir").mkdir()
    before = sorted(os.listdir(tmp_path))
    refused(snapshot(ns, str(tmp_path / "link")), 7, "symbolic link")
    refused(snapshot(ns, str(tmp_path / "fifo")), 7, "FIFO")
    refused(snapshot(ns, str(tmp_path / "full")), 7, "a device")
    refused(snapshot(ns, str(tmp_path / "dir")), 7, "a directory")
    assert sorted(os.listdir(tmp_path)) == before  # no temporary file left either
    assert os.readlink(tmp_path / "link") == str(precious)
    assert precious.read_text() == "keep me"
    assert stat.S_ISFIFO(os.lstat(tmp_path / "fifo").st_mode)
    node = os.lstat(tmp_path / "full")
    assert stat.S_ISCHR(node.st_mode) and node.st_rdev == FULL
    assert os.listdir(tmp_path / "dir") == []


def test_a_full_disk_leaves_the_old_file_and_no_temporary_file(ns: str, tmpfs: Path) -> None:
    old = tmpfs / "snap.json"
    old.write_text("the previous snapshot")
    with open(tmpfs / "filler", "wb", buffering=0) as f:  # fill it up
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass
    refused(snapshot(ns, str(old)), 7, "no space left", "existing file is unchanged")
    assert old.read_text() == "the previous snapshot"
    refused(snapshot(ns, str(tmpfs / "new.json")), 7, "no space left", "nothing was written")
    assert sorted(os.listdir(tmpfs)) == ["filler", "snap.json"]


def test_a_read_only_file_system_is_one_sentence(ns: str, tmpfs: Path) -> None:
    (tmpfs / "snap.json").write_text("old")
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    refused(snapshot(ns, str(tmpfs / "snap.json")), 7, "read-only")
    refused(snapshot(ns, str(tmpfs / "other.json")), 7, "read-only")
    assert sorted(os.listdir(tmpfs)) == ["snap.json"]


def test_no_permission_is_exit_4(unprivileged: Unprivileged) -> None:
    base = Path(tempfile.mkdtemp(prefix=f"sdt-files-{os.getpid()}-"))
    try:
        base.chmod(0o755)
        locked = base / "locked"
        locked.mkdir(mode=0o755)  # root's: nobody may look but not write
        hidden = base / "hidden"
        hidden.mkdir(mode=0o700)  # nobody may not even look
        for target in (locked / "s.json", hidden / "s.json"):
            done = subprocess.run([*SETPRIV, unprivileged.python, "-m", "sockdoctor",
                                   "snapshot", "-o", str(target), "--netns", "self"],
                                  capture_output=True, env=unprivileged.env, cwd="/",
                                  timeout=120)
            refused(done, 4, "permission denied")  # before any scan
        assert os.listdir(locked) == [] and os.listdir(hidden) == []
    finally:
        shutil.rmtree(base)


def test_dash_writes_stdout_and_from_dash_reads_stdin(ns: str, tmp_path: Path) -> None:
    done = snapshot(ns, "-")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["schema"] == "sockdoctor.snapshot/1"
    assert b"to stdout" in done.stderr
    assert not (Path.cwd() / "-").exists() and os.listdir(tmp_path) == []
    for command in (["ls", "--from", "-", "--json"], ["doctor", "--from", "-", "--json"]):
        back = subprocess.run([sys.executable, "-m", "sockdoctor", *command],
                              input=done.stdout, capture_output=True, timeout=60)
        assert back.returncode in (0, 1), back.stderr
        assert json.loads(back.stdout)["schema"] in ("sockdoctor.ls/2", "sockdoctor.report/1")


def test_a_full_stdout_is_one_sentence(ns: str, tmp_path: Path) -> None:
    os.mknod(tmp_path / "full", stat.S_IFCHR | 0o666, FULL)
    with open(tmp_path / "full", "wb") as stdout:
        done = snapshot(ns, "-", stdout=stdout)
    refused(done, 7, "to stdout", "no space left")
