"""safefile: output only to regular files or new paths, whole or not at all.

Device nodes and full or read-only file systems need root (mknod, mount):
tests/integration/test_output_files.py has those.
"""

from __future__ import annotations

import io
import os
import stat
import sys
import threading
from pathlib import Path

import pytest

from sockdoctor import safefile
from sockdoctor.errors import BadSnapshotError, NotFoundError, UsageError, WriteError


def test_a_new_path_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    target = tmp_path / "new.json"
    safefile.write(str(target), b"data")  # a snapshot holds command lines
    assert target.read_bytes() == b"data"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert os.listdir(tmp_path) == ["new.json"]


def test_an_existing_regular_file_is_replaced_whole_keeping_its_mode(tmp_path: Path) -> None:
    target = tmp_path / "old.json"
    target.write_bytes(b"x" * 100_000)
    target.chmod(0o604)
    inode = target.stat().st_ino
    safefile.write(str(target), b"new")
    assert target.read_bytes() == b"new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o604
    assert target.stat().st_ino != inode  # a new file put in place, not rewritten in place


def test_a_hard_link_elsewhere_is_not_written_through(tmp_path: Path) -> None:
    precious = tmp_path / "precious"
    precious.write_bytes(b"keep me")
    planted = tmp_path / "out.json"
    os.link(precious, planted)
    safefile.write(str(planted), b"snapshot")
    assert precious.read_bytes() == b"keep me" and planted.read_bytes() == b"snapshot"


def test_a_symlink_is_refused_and_left_as_it_was(tmp_path: Path) -> None:
    precious = tmp_path / "precious"
    precious.write_bytes(b"keep me")
    link = tmp_path / "out.json"
    link.symlink_to(precious)
    with pytest.raises(WriteError, match="is a symbolic link") as err:
        safefile.write(str(link), b"snapshot")
    assert err.value.exit_code == 7 and "\n" not in str(err.value)
    assert link.is_symlink() and os.readlink(link) == str(precious)
    assert precious.read_bytes() == b"keep me"
    dangling = tmp_path / "dangling.json"
    dangling.symlink_to(tmp_path / "nowhere")
    with pytest.raises(WriteError, match="symbolic link"):
        safefile.write(str(dangling), b"snapshot")
    assert not (tmp_path / "nowhere").exists()
    assert sorted(os.listdir(tmp_path)) == ["dangling.json", "out.json", "precious"]


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(WriteError, match="FIFO"):
        safefile.write(str(fifo), b"snapshot")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert os.listdir(tmp_path) == ["pipe"]


def test_a_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(WriteError, match="is a directory"):
        safefile.write(str(tmp_path), b"snapshot")
    with pytest.raises(WriteError, match="is a directory"):
        safefile.check(str(tmp_path))


def test_a_missing_directory_is_named(tmp_path: Path) -> None:
    # an output file that cannot be written: exit 7 (README's table), not 3
    with pytest.raises(WriteError, match="no such directory") as err:
        safefile.check(str(tmp_path / "no" / "x.json"))
    assert err.value.exit_code == 7
    with pytest.raises(WriteError, match="no such directory"):
        safefile.write(str(tmp_path / "no" / "x.json"), b"")


def test_dash_is_stdout_and_stdin(monkeypatch: pytest.MonkeyPatch) -> None:
    out = io.TextIOWrapper(io.BytesIO())
    monkeypatch.setattr(sys, "stdout", out)
    safefile.write("-", b"to stdout")
    out.flush()
    assert out.buffer.getvalue() == b"to stdout"  # type: ignore[attr-defined]
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"from stdin")))
    assert safefile.read("-") == b"from stdin"


def test_reading_stdin_from_a_terminal_is_a_usage_error(monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    class Tty(io.TextIOWrapper):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stdin", Tty(io.BytesIO()))
    with pytest.raises(UsageError, match="stdin is a terminal"):
        safefile.read("-")


def test_reading_refuses_what_is_not_a_file_or_a_pipe(tmp_path: Path) -> None:
    with pytest.raises(BadSnapshotError, match="is a directory"):
        safefile.read(str(tmp_path))
    with pytest.raises(NotFoundError, match="no such"):
        safefile.read(str(tmp_path / "nope"))
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)  # a pipe is fine to read: `--from <(zcat snap.json.gz)`
    writer = threading.Thread(target=fifo.write_bytes, args=(b"piped",))
    writer.start()
    assert safefile.read(str(fifo)) == b"piped"
    writer.join(timeout=10)


def test_the_exporter_textfile_is_written_by_safefile(tmp_path: Path) -> None:
    """One atomic writer: the textfile refuses a symlink in its place and keeps the target."""
    from prometheus_client import CollectorRegistry, Gauge

    from sockdoctor.watch.exporter import write_textfile

    registry = CollectorRegistry()
    Gauge("sockdoctor_test", "a gauge", registry=registry).set(3)
    path = tmp_path / "sockdoctor.prom"
    write_textfile(str(path), registry)
    assert "sockdoctor_test 3.0" in path.read_text()
    assert path.stat().st_mode & 0o777 == 0o644
    victim = tmp_path / "victim"
    victim.write_text("keep")
    path.unlink()
    path.symlink_to(victim)
    with pytest.raises(WriteError, match="symbolic link"):
        write_textfile(str(path), registry)
    assert victim.read_text() == "keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sockdoctor.prom", "victim"]
