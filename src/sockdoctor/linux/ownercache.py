"""What the sampler keeps of /proc between samples, so that a steady state is cheap.

OwnerCache: who holds which socket; ProcessCache: facts about the holders.

A full owner walk is one readlink per open descriptor on the host (the most
expensive part of a scan). Between two samples of a quiet host almost
nothing changes, so the cache keeps, per process, the last listing of
/proc/PID/fd and what each descriptor pointed at, and per sample:

1. a process none of whose sockets died since the last sample and whose
   number of descriptors is the same (one stat(), see _unchanged) keeps its
   descriptors as they were;
2. any other process is listed (one getdents, no readlink); if the listing
   is the same and none of its sockets died, it keeps them too;
3. otherwise only new descriptor numbers, and numbers whose socket died (the
   number may have been reused), are read again (readlink);
4. a socket still without an owner after that (a descriptor number that held
   a file or another kind of socket before was reused) makes every process be
   listed again and every descriptor that is not a live TCP socket be read.

What remains without an owner goes back to the caller, which walks all of
/proc (or runs the kernel engine's walk) and hands the result to full(). A
descriptor number that held a socket which is still alive elsewhere (dup,
fork) and now holds a file shows as a stale owner until the next full walk:
the caller walks fully every few samples for that reason.

CachedOwners is that caller: the sampler's owner source (linux/owners.py).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import msgspec

from ..model import Owner, Process
from . import procfs
from .owners import Facts, Finish, Found, OwnerSource, Scope, choose

_SOCKET = "socket:["


Links = dict[int, int]  # one process's descriptors as last seen: fd -> socket inode, 0: no socket


@dataclass
class Refresh:
    """What one update() did."""

    listed: int = 0  # processes listed
    changed: int = 0  # processes whose descriptors were read again, at least in part
    readlinks: int = 0
    denied: int = 0
    complete: bool = False  # every wanted socket has an owner now
    full: bool = False  # all of /proc was walked (CachedOwners)


class OwnerCache:
    """inode -> every (pid, fd) holding it, updated incrementally (see the module doc)."""

    def __init__(self) -> None:
        self._procs: dict[int, Links] = {}
        self._by_inode: dict[int, list[Owner]] = {}
        self._live: set[int] = set()  # TCP inodes of the previous sample
        self._complete = False  # the last update ended with every wanted socket owned
        self.fd_counts: dict[int, int] = {}
        self.denied = 0

    def owner_map(self) -> procfs.OwnerMap:
        """The current state as the OwnerMap scan() works with (shared, not copied).

        Holder lists are replaced, never changed in place, so sockets of an
        earlier snapshot keep the owners they had.
        """
        return procfs.OwnerMap(self._by_inode, self.fd_counts, self.denied)

    def pids(self) -> set[int]:
        return set(self._procs)

    def full(self, walked: procfs.OwnerMap, live: set[int] | None) -> None:
        """Take a full walk's result as the truth; `live`: the TCP inodes just dumped
        (None: the dump was partial, the last complete one's stay).

        Only processes whose descriptors differ from what the cache holds are
        replaced: the others keep their holder lists, so a full walk on a
        quiet host allocates (and leaves behind) nothing but the walk itself.
        """
        per_pid: dict[int, Links] = {pid: {} for pid in walked.fd_counts}
        for inode, holders in walked.by_inode.items():
            for holder in holders:
                per_pid.setdefault(holder.pid, {})[holder.fd] = inode
        for pid in self._procs.keys() - per_pid.keys():
            self._forget(pid)
        for pid, links in per_pid.items():
            names = _list(pid)
            if not names:
                self._forget(pid)
                continue
            for name in names:  # what the walk did not report is not a socket
                links.setdefault(int(name), 0)
            old = self._procs.get(pid)
            if old != links:
                self._replace(pid, links, old)
        self.fd_counts = dict(walked.fd_counts)
        self.denied = walked.denied_pids
        if live is not None:
            self._live = live
        self._complete = False

    def update(self, pids: Iterable[int], live: set[int], wanted: set[int]) -> Refresh:
        """Bring the cache up to date for these processes (steps 1-4 of the module doc).

        `live`: inodes of the TCP sockets just dumped (kept, not copied: do
        not change it afterwards); `wanted`: those that should have an owner.
        Returns what it did; has_all()/missing() say whether all have one.
        """
        died = self._live - live
        # a steady state (no socket came or went, no process changed) keeps the
        # last answer to "does every wanted socket have an owner?"
        quiet = not died and not live - self._live and len(self._procs) > 0
        # the processes that held a socket which died: their numbers may be reused
        touched = {o.pid for inode in died for o in self._by_inode.get(inode, ())}
        done = Refresh()
        seen: set[int] = set()
        for pid in pids:
            seen.add(pid)
            old = self._procs.get(pid)
            if old is not None and pid not in touched and _same_count(pid, old):
                continue
            done.listed += 1
            names = _list(pid)
            if names is None or names is _DENIED:
                done.denied += names is _DENIED
                self._forget(pid)
                continue
            fds = list(map(int, names))
            self.fd_counts[pid] = len(fds)
            if old is not None and pid not in touched and len(fds) == len(old) \
                    and old.keys() >= set(fds):
                continue
            done.changed += 1
            done.readlinks += self._relist(pid, fds, old, died)
        gone = self._procs.keys() - seen
        for pid in gone:
            self._forget(pid)
        if not (quiet and self._complete and not done.changed and not gone):
            self._complete = self.has_all(wanted)
            if not self._complete:
                done.readlinks += self._reread_unsure(live)
                self._complete = self.has_all(wanted)
        done.complete = self._complete
        self.denied = done.denied
        self._live = live
        return done

    def has_all(self, wanted: set[int]) -> bool:
        """Whether every one of these inodes has an owner."""
        return not wanted - self._by_inode.keys()  # a set difference: 2x faster than >=

    def holders(self, inode: int) -> list[Owner]:
        return self._by_inode.get(inode, [])

    def refresh_pids(self, pids: Iterable[int], died: set[int] | frozenset[int] = frozenset(),
                     full: bool = False) -> int:
        """Re-read just these processes: new numbers and those whose socket died, or all.

        For trace (issue 10), which needs the owner of a socket born a moment
        ago and asks only the few processes that can hold it (the listener's
        owners, the process that called connect()); `full` when a number may
        have been reused unseen. Returns the readlinks made.
        """
        readlinks = 0
        for pid in pids:
            names = _list(pid)
            if names is None or names is _DENIED:
                self._forget(pid)
                continue
            if full:
                self._forget(pid)
            old = self._procs.get(pid)
            fds = list(map(int, names))
            self.fd_counts[pid] = len(fds)
            if old is not None and len(fds) == len(old) and old.keys() >= set(fds) \
                    and died.isdisjoint(old.values()):
                continue
            readlinks += self._relist(pid, fds, old, set(died))
        return readlinks

    def recheck(self, found: Found, scope: Scope, wanted: set[int]) -> Refresh:
        """Up to date for a partial dump (a counting source's: a few sockets of many).

        Only the found sockets' holders and `found.also` are looked at, one
        stat() each, re-read if their descriptor count changed; if one of
        `wanted` still has no owner, every process (new ones read in full).
        The last complete dump's inodes stay the reference for update().
        """
        by_inode = self._by_inode
        pids = set(found.also)
        for inode in found.live:
            pids.update(o.pid for o in by_inode.get(inode, ()))
        done = Refresh(readlinks=self._recheck(pids), denied=self.denied)
        if not self.has_all(wanted):
            first, other = scope.pids
            done.readlinks += self._recheck([*first, *other])
        done.complete = self.has_all(wanted)
        self._complete = False  # the next update() asks has_all() again
        return done

    def _recheck(self, pids: Iterable[int]) -> int:
        procs = self._procs
        changed = [pid for pid in pids
                   if (old := procs.get(pid)) is None or not _same_count(pid, old)]
        return self.refresh_pids(changed) if changed else 0

    def missing(self, wanted: set[int]) -> set[int]:
        by_inode = self._by_inode
        return {inode for inode in wanted if inode not in by_inode}

    # --- internals -------------------------------------------------------

    def _relist(self, pid: int, fds: list[int], old: Links | None, died: set[int]) -> int:
        """Re-read what may have changed in one process; returns the readlinks made."""
        before = old if old is not None else {}
        links: Links = {}
        unsure: list[int] = []
        for fd in fds:
            inode = before.get(fd)
            if inode is None or inode in died:
                unsure.append(fd)
            else:
                links[fd] = inode
        links.update(_read_links(pid, unsure))
        self._replace(pid, links, old)
        return len(unsure)

    def _reread_unsure(self, live: set[int]) -> int:
        """Step 4: list every process again and read whatever is not a live TCP socket."""
        count = 0
        for pid, old in list(self._procs.items()):
            names = _list(pid)
            if not names:
                continue
            unsure = [fd for fd in map(int, names) if old.get(fd, 0) not in live]
            count += len(unsure)
            links = {fd: inode for fd, inode in old.items() if inode in live}
            links.update(_read_links(pid, unsure))
            self.fd_counts[pid] = len(names)
            if links != old:
                self._replace(pid, links, old)
        return count

    def _replace(self, pid: int, new: Links, old: Links | None) -> None:
        if old is not None:
            self._drop_holders(pid, old)
        by_inode = self._by_inode
        for fd, inode in new.items():
            if inode:
                holders = by_inode.get(inode)
                # a new list: snapshots already handed out keep the old one
                by_inode[inode] = [*holders, Owner(pid, fd)] if holders else [Owner(pid, fd)]
        self._procs[pid] = new

    def _forget(self, pid: int) -> None:
        old = self._procs.pop(pid, None)
        self.fd_counts.pop(pid, None)
        if old is not None:
            self._drop_holders(pid, old)

    def _drop_holders(self, pid: int, links: Links) -> None:
        by_inode = self._by_inode
        for inode in links.values():
            holders = by_inode.get(inode) if inode else None
            if holders is None:
                continue
            kept = [h for h in holders if h.pid != pid]
            if kept:
                by_inode[inode] = kept
            else:
                del by_inode[inode]


def _same_count(pid: int, old: Links) -> bool:
    """Whether the process has as many descriptors open as last time (one stat()).

    Since Linux 6.2 the size of /proc/PID/fd is the number of open
    descriptors: no need to list thousands of entries. A new descriptor
    changes the count; a closed-and-reopened one takes the same number (the
    lowest free one), and either its socket died (the caller re-reads that
    process) or the new socket is found by step 4. Older kernels report 0:
    then the listing decides.
    """
    try:
        size = os.stat(f"{procfs.PROC}/{pid}/fd").st_size
    except OSError:
        return False
    return size != 0 and size == len(old)


_DENIED: list[str] = []  # a listing we were not allowed to read (compared by identity)


def _list(pid: int) -> list[str] | None:
    """The names in /proc/PID/fd; None if the process is gone, _DENIED if not ours."""
    try:
        return os.listdir(f"{procfs.PROC}/{pid}/fd")
    except PermissionError:
        return _DENIED
    except OSError:
        return None


def _read_links(pid: int, fds: list[int]) -> dict[int, int]:
    """fd -> socket inode (0: not a socket) for each descriptor still open."""
    if not fds:
        return {}
    try:
        dirfd = os.open(f"{procfs.PROC}/{pid}/fd", os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return {}
    out: dict[int, int] = {}
    try:
        for fd in fds:
            try:
                link = os.readlink(str(fd), dir_fd=dirfd)
            except OSError:
                continue  # closed meanwhile
            out[fd] = int(link[8:-1]) if link.startswith(_SOCKET) else 0
    finally:
        os.close(dirfd)
    return out


class ProcessCache:
    """Facts about owning processes, re-read in part each sample.

    What a process is (command line, cgroup, namespace, user) changes only
    with exec or a new process under a reused PID, both of which change its
    start time; the state, name, descriptor count and threads are read again
    every time, the descriptor limit on refresh().
    """

    def __init__(self) -> None:
        self._known: dict[int, tuple[int, Process]] = {}  # pid -> (start time, facts)

    def refresh(self) -> None:
        """Forget everything: the next look-up reads each process in full."""
        self._known.clear()

    def process(self, pid: int, fd_count: int = 0, threads: bool = False
                ) -> Process | None:
        started = procfs.start_time(pid)
        if started is None:
            self._known.pop(pid, None)
            return None
        known = self._known.get(pid)
        if known is None or known[0] != started[0]:
            proc = procfs.process_info(pid, fd_count, threads)
            if proc is not None:
                self._known[pid] = (started[0], proc)
            return proc
        proc = msgspec.structs.replace(
            known[1], comm=procfs.comm(pid) or known[1].comm, state=started[1],
            fd_count=fd_count, threads=procfs.thread_states(pid) if threads else None)
        return proc

    def forget_except(self, pids: set[int]) -> None:
        for pid in set(self._known) - pids:
            del self._known[pid]


FORCED_WALK_GAP = 3  # scans between two full walks that were not scheduled


class CachedOwners:
    """The sampler's owner source: the cache, with a full walk every `full_walk_every`
    scans (the first included), and one when the cache cannot place a socket.

    An unscheduled walk happens at most every `forced_gap` scans, so a host
    where new sockets keep appearing that no process we can see holds does not
    pay a full walk every time (1: whenever needed, owners exact each scan).
    `last` says what the latest scan did; `facts` are the process facts to
    scan with, kept between scans like the owners.
    """

    def __init__(self, full_walk_every: int = 20, walker: Callable[[], OwnerSource] = choose,
                 forced_gap: int = FORCED_WALK_GAP) -> None:
        self.cache = OwnerCache()
        self.every = max(1, full_walk_every)
        self.forced_gap = forced_gap
        self.walker = walker  # the full walk's source, chosen at each walk
        self.last = Refresh()
        self._processes = ProcessCache()
        self.facts = Facts(self._processes.process, {})
        self._scans = 0
        self._last_full = 0  # the scan of the last full walk
        self._unowned: set[int] = set()  # inodes a full walk found no owner for
        self._sees_all = procfs.sees_every_process()

    def walks_next(self) -> bool:
        """Whether the next scan is a scheduled full walk."""
        return self._scans % self.every == 0

    def start(self, scope: Scope) -> Finish:
        due = self.walks_next()
        self._scans += 1
        seq = self._scans
        walking = self.walker().start(scope) if due else None

        def finish(found: Found) -> procfs.OwnerMap:
            self.last = self._owners(walking, scope, found, seq)
            return self.cache.owner_map()
        return finish

    def _owners(self, walking: Finish | None, scope: Scope, found: Found, seq: int
                ) -> Refresh:
        """Bring the cache up to date: from the walk when due, else incrementally."""
        if walking is None:
            done = self._cached(scope, found)
            if done.complete or seq - self._last_full < self.forced_gap:
                return done
            walking = self.walker().start(scope)
        walked = walking(found)
        self.cache.full(walked, found.live if found.complete else None)
        missing = self.cache.missing(found.live)
        # after a partial dump, what earlier walks found no owner for still counts
        self._unowned = missing if found.complete else (self._unowned | missing)
        self._last_full = seq
        self._forget_gone(walked)
        return Refresh(readlinks=sum(walked.fd_counts.values()), denied=walked.denied_pids,
                       complete=not missing, full=True)

    def _cached(self, scope: Scope, found: Found) -> Refresh:
        """The cache brought up to date without a full walk."""
        if not found.complete:
            return self.cache.recheck(found, scope, self._wanted(found))
        first, other = scope.pids
        cached = self.cache.pids()
        return self.cache.update([*first, *(p for p in other if p in cached)],
                                 found.live, self._wanted(found))

    def _wanted(self, found: Found) -> set[int]:
        """Sockets that should have a visible owner: a miss among them is worth a walk.

        Not those a full walk already found no owner for, and without the
        right to read every process not those of other users.
        """
        if self._sees_all:
            return found.live - self._unowned if self._unowned else found.live
        uid = os.geteuid()
        return {sk.inode for sk in found.sockets if sk.inode and sk.uid == uid} - self._unowned

    def _forget_gone(self, walked: procfs.OwnerMap) -> None:
        """After a full walk: drop what is kept for processes and sockets that are gone."""
        self._processes.forget_except(set(walked.fd_counts))
        protocols = self.facts.protocols
        if protocols:
            for inode in [i for i in protocols if i not in walked.by_inode]:
                del protocols[inode]  # in place: the scanner holds this dict
