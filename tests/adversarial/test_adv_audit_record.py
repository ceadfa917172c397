"""No action without its record (docs/reliability.md, "No action without its record").

Before the fix, actions ran in batches of 256 and their lines were written
after each batch: with the audit log on a full tmpfs `kill --yes` ended 256
sockets and logged none; with a few KiB free, some lines and a truncated
one, which the next append was glued to.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hostile import Holder, audit_lines, kill_argv, run

from sockdoctor.lab.netlab import Lab

pytestmark = [pytest.mark.root, pytest.mark.slow]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs of the test's own, unmounted afterwards."""
    where = tmp_path / "disk"
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "sdadv", str(where)],
                   check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(disk: Path, leave: int) -> Path:
    """Fill the file system, then free `leave` bytes again."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"x" * 1024)
    except OSError:
        pass
    finally:
        os.close(fd)
    if leave:
        os.truncate(filler, filler.stat().st_size - leave)
    return filler


def recorded(log: Path, event: str | None = None) -> set[int]:
    """Cookies the log names (in whole lines only: a partial line fails the test)."""
    return {line["cookie"] for line in audit_lines(log, event) if "cookie" in line}


def ended(holder: Holder, targets: set[int]) -> set[int]:
    return targets - holder.close_waits()


@pytest.mark.parametrize("free", [0, 8192])
def test_a_full_disk_ends_nothing_without_its_record(solo: Lab, small_disk: Path,
                                                     free: int) -> None:
    holder = Holder(solo)
    targets = holder.leak(300)
    log = small_disk / "audit.jsonl"
    log.write_bytes(b'{"event":"earlier"}\n')
    filler = fill(small_disk, free)
    done = run(kill_argv(solo, holder.port, log))
    gone = ended(holder, targets)
    assert gone <= recorded(log), f"{len(gone - recorded(log))} ended without a record"
    assert gone <= recorded(log, "intent")  # the line that was on disk before the action
    assert done.returncode == 7, (done.stdout, done.stderr)
    assert f"{len(gone)} socket" in done.stdout and "no further action was taken" in done.stdout
    assert len(gone) < len(targets)  # it stopped
    filler.unlink()
    again = run(kill_argv(solo, holder.port, log))
    assert again.returncode == 0, again.stderr
    lines = audit_lines(log)  # the next append is whole lines after whole lines
    assert lines[0] == {"event": "earlier"}
    assert not holder.close_waits() & targets


def test_sigkill_at_random_points_leaves_a_record_of_every_ended_socket(
        solo: Lab, tmp_path: Path) -> None:
    holder = Holder(solo)
    log = tmp_path / "audit.jsonl"
    rng = random.Random(15)
    for _ in range(4):
        targets = holder.leak(600)
        proc = subprocess.Popen(kill_argv(solo, holder.port, log, "--rate", "2000/s"),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                stdin=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.3, 1.2))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        time.sleep(0.2)
        gone = ended(holder, targets)
        assert gone <= recorded(log), f"{len(gone - recorded(log))} ended without a record"
        assert gone <= recorded(log, "intent")
    last = run(kill_argv(solo, holder.port, log))
    assert last.returncode == 0 and not holder.close_waits()
    audit_lines(log)  # still whole lines only
