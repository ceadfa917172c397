"""The owner cache on a fake /proc: every path of an incremental update.

/proc/PID/fd/N entries are symlinks whose target is what the kernel's would
read ("socket:[INODE]", a file path). A real directory's size is not its
number of entries, so the cache cannot take its one-stat() shortcut here:
every update lists the processes, which is the path to test (the shortcut
itself runs in the integration tests on the real /proc).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sockdoctor.linux import ownercache, procfs
from sockdoctor.linux.ownercache import OwnerCache
from sockdoctor.linux.owners import Found, Scope
from sockdoctor.model import Owner, Socket, TcpState


class FakeProc:
    def __init__(self, root: Path) -> None:
        self.root = root

    def fd(self, pid: int, fd: int, target: str | int) -> None:
        """Point PID's descriptor FD at a socket inode (int) or a path (str)."""
        folder = self.root / str(pid) / "fd"
        folder.mkdir(parents=True, exist_ok=True)
        link = folder / str(fd)
        if link.is_symlink():
            link.unlink()
        os.symlink(f"socket:[{target}]" if isinstance(target, int) else target, link)

    def close(self, pid: int, fd: int) -> None:
        (self.root / str(pid) / "fd" / str(fd)).unlink()

    def exit(self, pid: int) -> None:
        for link in (self.root / str(pid) / "fd").iterdir():
            link.unlink()
        (self.root / str(pid) / "fd").rmdir()
        (self.root / str(pid)).rmdir()


@pytest.fixture
def proc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeProc:
    monkeypatch.setattr(procfs, "PROC", str(tmp_path))
    return FakeProc(tmp_path)


def owners(cache: OwnerCache) -> dict[int, set[tuple[int, int]]]:
    return {inode: {(o.pid, o.fd) for o in holders}
            for inode, holders in cache.owner_map().by_inode.items()}


def started(proc: FakeProc) -> OwnerCache:
    """A cache after a full walk of two processes: 10 holds 100, 101 and a file; 20 holds 200."""
    proc.fd(10, 3, 100)
    proc.fd(10, 4, 101)
    proc.fd(10, 5, "/var/log/app.log")
    proc.fd(20, 3, 200)
    cache = OwnerCache()
    cache.full(procfs.socket_owners([10, 20]), {100, 101, 200})
    return cache


def test_a_full_walk_fills_it_and_a_quiet_update_reads_nothing(proc: FakeProc) -> None:
    cache = started(proc)
    assert owners(cache) == {100: {(10, 3)}, 101: {(10, 4)}, 200: {(20, 3)}}
    lists = dict(cache.owner_map().by_inode)
    done = cache.update([10, 20], {100, 101, 200}, {100, 101, 200})
    assert done.complete and done.readlinks == 0 and done.changed == 0
    # the same lists: sockets of the last snapshot and of this one share them
    assert all(cache.owner_map().by_inode[i] is lists[i] for i in lists)
    assert cache.fd_counts == {10: 3, 20: 1}


def test_new_descriptors_are_the_only_ones_read(proc: FakeProc) -> None:
    cache = started(proc)
    proc.fd(10, 6, 102)
    done = cache.update([10, 20], {100, 101, 102, 200}, {100, 101, 102, 200})
    assert done.complete and done.readlinks == 1 and done.changed == 1
    assert owners(cache)[102] == {(10, 6)}


def test_a_number_whose_socket_died_is_read_again(proc: FakeProc) -> None:
    cache = started(proc)
    proc.fd(10, 4, 103)  # 101 closed, its number reused for a new socket
    done = cache.update([10, 20], {100, 103, 200}, {100, 103, 200})
    assert done.complete and done.readlinks == 1
    assert owners(cache) == {100: {(10, 3)}, 103: {(10, 4)}, 200: {(20, 3)}}


def test_a_file_number_reused_for_a_socket_is_found_by_reading_the_unsure(
        proc: FakeProc) -> None:
    cache = started(proc)
    proc.fd(10, 5, 104)  # the log file closed, a socket took its number
    done = cache.update([10, 20], {100, 101, 104, 200}, {100, 101, 104, 200})
    assert done.complete
    assert owners(cache)[104] == {(10, 5)}
    assert done.readlinks >= 1


def test_a_socket_no_process_holds_is_reported_missing(proc: FakeProc) -> None:
    cache = started(proc)
    done = cache.update([10, 20], {100, 101, 200, 999}, {100, 101, 200, 999})
    assert not done.complete
    assert cache.missing({100, 999}) == {999}
    assert not cache.has_all({999}) and cache.has_all({100, 200})


def test_fork_dup_and_exit(proc: FakeProc) -> None:
    cache = started(proc)
    proc.fd(30, 3, 200)  # a child inherited 200
    proc.fd(20, 7, 200)  # and its parent dup()ed it
    done = cache.update([10, 20, 30], {100, 101, 200}, {100, 101, 200})
    assert done.complete
    assert owners(cache)[200] == {(20, 3), (20, 7), (30, 3)}
    proc.exit(30)
    proc.close(20, 7)
    cache.update([10, 20], {100, 101, 200}, {100, 101, 200})
    assert owners(cache)[200] == {(20, 3)}
    assert 30 not in cache.pids() and 30 not in cache.fd_counts


def test_refresh_pids_and_holders(proc: FakeProc) -> None:
    cache = started(proc)
    proc.fd(20, 4, 201)
    assert cache.holders(201) == []
    assert cache.refresh_pids([20]) == 1
    assert cache.holders(201) == [Owner(20, 4)]
    assert cache.refresh_pids([20]) == 0  # nothing new
    assert cache.refresh_pids([20], full=True) == 2  # read everything again


def test_a_full_walk_keeps_the_lists_of_processes_that_did_not_change(proc: FakeProc) -> None:
    cache = started(proc)
    kept = cache.owner_map().by_inode[200]
    proc.fd(10, 6, 102)
    cache.full(procfs.socket_owners([10, 20]), {100, 101, 102, 200})
    assert cache.owner_map().by_inode[200] is kept  # process 20 did not change
    assert owners(cache)[102] == {(10, 6)}


def test_an_unreadable_process_is_counted(proc: FakeProc, monkeypatch: pytest.MonkeyPatch
                                          ) -> None:
    cache = started(proc)
    real = ownercache._list
    monkeypatch.setattr(ownercache, "_list",
                        lambda pid: ownercache._DENIED if pid == 20 else real(pid))
    done = cache.update([10, 20], {100, 101, 200}, {100, 101})
    assert done.denied == 1 and cache.denied == 1
    assert 200 not in cache.owner_map().by_inode and done.complete


def sock(inode: int) -> Socket:
    return Socket(1, 2, int(TcpState.CLOSE_WAIT), "127.0.0.1", 80, "127.0.0.1", 40000 + inode,
                  inode, inode, 0, 0, 0)


def test_a_partial_dump_rechecks_only_its_holders(proc: FakeProc) -> None:
    """A counting source's few sockets (Found.complete False): their holders and the
    processes named besides are looked at, not every process."""
    cache = started(proc)
    proc.fd(10, 6, 102)  # a new socket of 10, in the partial dump
    proc.fd(20, 4, 201)  # one of 20, counted in the kernel (not in the dump)
    found = Found([sock(100), sock(102)], complete=False)
    done = cache.recheck(found, Scope([], []), {100, 102})
    assert done.complete and done.readlinks == 1
    assert owners(cache)[102] == {(10, 6)} and cache.holders(201) == []
    # a process named besides the holders (a finding's) is brought up to date too
    done = cache.recheck(Found([sock(100)], complete=False, also=frozenset({20})),
                         Scope([], []), {100})
    assert done.readlinks == 1 and cache.holders(201) == [Owner(20, 4)]
    assert cache.fd_counts[20] == 2


def test_a_partial_dump_it_cannot_place_looks_at_every_process(proc: FakeProc) -> None:
    cache = started(proc)
    proc.fd(30, 3, 300)  # a process the cache has never seen
    done = cache.recheck(Found([sock(300)], complete=False), Scope([], []), {300})
    assert done.complete and owners(cache)[300] == {(30, 3)}
    done = cache.recheck(Found([sock(999)], complete=False), Scope([], []), {999})
    assert not done.complete
