"""Who holds a socket that appeared a moment ago: a per-process descriptor cache.

`trace` sees a connection born between two samples and has to name its owner
while the socket still exists, without walking all of /proc. It asks only
the few processes that can hold it (the listener's owners, the task that
called connect()), and this cache keeps each one's socket descriptors so
that asking again costs a listdir plus a readlink of the descriptors that
are new since the last look.
"""

from __future__ import annotations

import os

from .procfs import PROC


class FdCache:
    """pid -> {fd: socket inode}, refreshed on demand and at most once per round."""

    def __init__(self) -> None:
        self._fds: dict[int, dict[int, int]] = {}  # pid -> {fd: inode (0: not a socket)}
        self._held: dict[int, dict[int, int]] = {}  # pid -> {inode: fd}, the reverse
        self._fresh: dict[int, bool] = {}  # pids re-read this round: fully?
        self._tgid: dict[int, int] = {}

    def new_round(self) -> None:
        """A new batch of events: a process may be re-read once more."""
        self._fresh.clear()

    def find(self, inode: int, pids: list[int]) -> list[tuple[int, int]]:
        """(pid, fd) of every candidate process holding socket `inode`."""
        found = self._cached(inode, pids)
        # First only descriptor numbers not seen before; then, in case a number
        # was closed and reused unseen, every descriptor (once per round).
        for full in (False, True):
            if found:
                return found
            for pid in pids:
                if pid not in self._fresh or (full and not self._fresh[pid]):
                    self._refresh(pid, full)
            found = self._cached(inode, pids)
        return found

    def _cached(self, inode: int, pids: list[int]) -> list[tuple[int, int]]:
        out = []
        for pid in pids:
            fd = self._held.get(pid, {}).get(inode)
            if fd is not None:
                out.append((pid, fd))
        return out

    def _refresh(self, pid: int, full: bool) -> None:
        """Re-read a process's descriptors (unless full, only the numbers not seen before)."""
        self._fresh[pid] = full
        try:
            dirfd = os.open(f"{PROC}/{pid}/fd", os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            self._drop(pid)
            return
        try:
            names = os.listdir(dirfd)
            old = {} if full else self._fds.get(pid, {})
            fds: dict[int, int] = {}
            for name in names:
                fd = int(name)
                if fd in old:
                    fds[fd] = old[fd]
                    continue
                try:
                    link = os.readlink(name, dir_fd=dirfd)
                except OSError:
                    continue
                fds[fd] = int(link[8:-1]) if link.startswith("socket:[") else 0
            self._fds[pid] = fds
            self._held[pid] = {inode: fd for fd, inode in fds.items() if inode}
        except OSError:
            self._drop(pid)
        finally:
            os.close(dirfd)

    def _drop(self, pid: int) -> None:
        self._fds.pop(pid, None)
        self._held.pop(pid, None)

    def forget(self, pid: int, fd: int) -> None:
        """The socket behind (pid, fd) was closed: the number may be reused."""
        inode = self._fds.get(pid, {}).pop(fd, None)
        if inode:
            self._held.get(pid, {}).pop(inode, None)

    def tgid(self, tid: int) -> int:
        """The process a thread belongs to (tracepoints name threads); 0 if gone."""
        known = self._tgid.get(tid)
        if known is not None:
            return known
        tgid = 0
        try:
            with open(f"{PROC}/{tid}/status") as f:
                for line in f:
                    if line.startswith("Tgid:"):
                        tgid = int(line.split()[1])
                        break
        except (OSError, ValueError):
            pass  # gone: remembered as 0 too, so it is not looked up again
        if len(self._tgid) > 65536:
            self._tgid.clear()
        self._tgid[tid] = tgid
        return tgid
