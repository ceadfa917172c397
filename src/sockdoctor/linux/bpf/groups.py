"""top's refresh in the kernel: groups.bpf.c, one grouping pass per namespace.

A pass gives what a refresh of `top` needs without a record per healthy
ESTABLISHED socket: such a socket, once user space has placed its file
(`place`: inode -> owners' pids and since when it is ESTABLISHED, from a
sample's sockets), is only counted in the kernel under top's group key
(owner x service), with the group's unread bytes, largest tcp_info age and
earliest `since`. Every other socket comes up as a record, to be placed by
the scan as usual (and placed in the kernel for the next pass). The object
stays loaded while its owner (a Sampler) lives and is closed with it.

Grouping is a socket source of inventory.Scanner (sockets.SocketSource),
like aggregate.Counting: each namespace's dump gives the written sockets
and keeps the pass's groups aside (`tallies`).
"""

from __future__ import annotations

import logging
import struct
import threading
import weakref
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from ...model import Snapshot, Socket, TcpState
from .. import procfs, sockdiag
from . import BpfError, BpfObject, available
from .aggregate import RECORD, _name, _socket
from .sockets import Dump

log = logging.getLogger("sockdoctor.bpf")

NAME, PROGRAM = "groups", "group_pass"
KEY = struct.Struct("=IHH16s")  # struct group_key
VALUE = struct.Struct("=QQIIQ")  # struct group_val
PLACED = struct.Struct("=IId")  # struct placed (since: a double, as its bits)
INODE = struct.Struct("=Q")
TRAILER = struct.Struct("=QQQQ1024Q")
TRAILER_MAGIC = 0x736F636B67727031
OWNERS_MAX, GROUPS_MAX = 262_144, 65_536
NO_AGE = 0xFFFFFFFF
Pids = tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Counted:
    """ESTABLISHED sockets of one owner and service counted in the kernel."""

    pids: Pids
    port: int  # server side: the local port; client side: the peer's
    peer: tuple[str, int] | None  # client side: (peer address, family)
    count: int
    recv_q: int
    oldest_ms: int | None  # the largest tcp_info age (last_ack_recv)
    since: float  # the earliest time one of them was first seen ESTABLISHED


@dataclass
class GroupPass:
    """What one pass over one namespace found."""

    netns: int
    sockets: int = 0  # all of them, written or counted
    grouped: int = 0
    groups: list[Counted] = field(default_factory=list)


class Grouping:
    """The grouping socket source of one sampler (see the module doc)."""

    complete = False

    def __init__(self) -> None:
        self.also: frozenset[int] = frozenset()  # processes the consumer names
        self.placed_pids: frozenset[int] = frozenset()  # the placed sockets' owners
        self.tallies: dict[int, GroupPass] = {}
        self.off = ""  # why it is no longer used (the kernel refused it)
        self._obj: BpfObject | None = None
        self._unload: weakref.finalize | None = None
        self._lock = threading.Lock()
        self._ids: dict[Pids, int] = {}
        self._pids: list[Pids] = []
        self._placed: dict[int, tuple[int, int, float]] = {}  # inode -> owner id, cookie, since
        self._parked: dict[int, float] = {}  # cookie -> since, of the placed sockets
        self._uses: Counter[int] = Counter()  # owner id -> placed sockets

    def usable(self) -> bool:
        return not self.off and available()

    def parked(self) -> dict[int, float]:
        """cookie -> since when ESTABLISHED, of the placed sockets: counted, so not
        listed, but (as far as user space knows) still there."""
        return self._parked

    def place(self, snap: Snapshot, first_seen: dict[int, float], whole: bool) -> None:
        """Place the ESTABLISHED sockets of `snap` that have owners, for the next pass.

        whole: `snap` lists every socket (a usual sample), so the placed files
        it does not list are gone; else only the written ones are seen again.
        Nothing without the kernel engine (or with it forced off).
        """
        if not self.usable():
            return
        fresh: dict[int, tuple[int, int, float]] = {}
        left: set[int] = set()
        placed, established = self._placed, TcpState.ESTABLISHED
        for sk in snap.sockets:  # a full sample's loop: kept to the bone
            owners = sk.owners
            since = first_seen.get(sk.cookie)
            if sk.state != established or not owners or not sk.inode or since is None:
                left.add(sk.inode)
                continue
            pids = (owners[0].pid,) if len(owners) == 1 else tuple(sorted({o.pid for o in owners}))
            entry = (self._id(pids), sk.cookie, since)
            if placed.get(sk.inode) != entry:
                fresh[sk.inode] = entry
        gone = (self._placed.keys() - {sk.inode for sk in snap.sockets}) if whole else set()
        gone |= left & self._placed.keys()
        try:
            self._write(fresh, gone)
        except BpfError as exc:
            self._fail(exc)

    def _id(self, pids: Pids) -> int:
        got = self._ids.get(pids)
        if got is None:
            got = self._ids[pids] = len(self._pids)
            self._pids.append(pids)
        return got

    def _write(self, fresh: dict[int, tuple[int, int, float]], gone: set[int]) -> None:
        with self._lock:
            obj = self._load()
            if gone:
                obj.delete_batch("owners", b"".join(map(INODE.pack, gone)), len(gone))
                for inode in gone:
                    self._forget(self._placed.pop(inode))
            if len(self._placed) + len(fresh) > OWNERS_MAX:
                fresh = dict(list(fresh.items())[:OWNERS_MAX - len(self._placed)])
            keys = b"".join(map(INODE.pack, fresh))
            values = b"".join(PLACED.pack(i, 0, since) for i, _c, since in fresh.values())
            obj.update_batch("owners", keys, values, len(fresh))
            for inode, entry in fresh.items():
                old = self._placed.get(inode)
                if old is not None:
                    self._forget(old)
                self._parked[entry[1]] = entry[2]
                self._uses[entry[0]] += 1
            self._placed.update(fresh)
        if gone or fresh:
            self.placed_pids = frozenset(p for i in self._uses for p in self._pids[i])

    def _forget(self, entry: tuple[int, int, float]) -> None:
        del self._parked[entry[1]]
        self._uses[entry[0]] -= 1
        if not self._uses[entry[0]]:
            del self._uses[entry[0]]

    def _load(self) -> BpfObject:
        if self._obj is None:
            self._obj = BpfObject(NAME, {"owners": OWNERS_MAX, "groups": GROUPS_MAX})
            self._unload = weakref.finalize(self, self._obj.close)
            self._placed, self._parked, self._uses = {}, {}, Counter()
        return self._obj

    def close(self) -> None:
        """Unload the program; what was placed goes with it."""
        with self._lock:
            if self._unload is not None:
                self._unload()
                self._obj = self._unload = None
            self._placed, self._parked, self._uses = {}, {}, Counter()

    def _fail(self, exc: BpfError) -> None:
        self.off = str(exc)
        log.warning("grouping in the kernel failed (%s): top refreshes through sock_diag",
                    self.off)
        self.close()

    def drop_dead(self) -> None:
        """Unplace the sockets of owners that exited (one stat() each): a socket a
        child inherited is listed by the next pass and placed again with its
        owner now. (An owner that changed otherwise, a descriptor passed or
        inherited while the holder lives, shows at the next full sample.)"""
        dead = {p for p in self.placed_pids if not procfs.pid_exists(p)}
        if not dead or self.off:
            return
        ids = {i for i in self._uses if dead.intersection(self._pids[i])}
        gone = {inode for inode, entry in self._placed.items() if entry[0] in ids}
        try:
            self._write({}, gone)
        except BpfError as exc:
            self._fail(exc)

    @contextmanager
    def open(self, opts: sockdiag.DumpOptions, families: Iterable[int]) -> Iterator[Dump]:
        fams = tuple(families)
        self.tallies = {}
        self.drop_dead()

        def dump(netns: int) -> list[Socket]:
            if not self.off:
                try:
                    found, written = self.run(netns)
                    self.tallies[netns] = found
                    return written
                except BpfError as exc:
                    self._fail(exc)
            # refused: every socket listed, nothing counted (a usual pass, in effect)
            self.tallies[netns] = GroupPass(netns)
            listed = sockdiag.dump_here(opts, netns=netns, families=fams)
            self.tallies[netns].sockets = len(listed)
            return listed
        yield dump

    def run(self, netns: int) -> tuple[GroupPass, list[Socket]]:
        """One pass over the calling thread's namespace: its groups, the written sockets."""
        with self._lock:
            obj = self._load()
            data = obj.run_iter(PROGRAM)
            keys, values, _n = obj.take_all("groups", KEY.size, VALUE.size, GROUPS_MAX)
        found, written = decode(data, netns)
        found.groups = [self._counted(k, v) for k, v in
                        zip(KEY.iter_unpack(keys), VALUE.iter_unpack(values), strict=True)]
        return found, written

    def _counted(self, key: tuple, value: tuple) -> Counted:
        owner, port, family, addr = key
        count, recv_q, oldest, _pad, since = value
        peer = (_name({}, family, addr), family) if family else None
        return Counted(self._pids[owner], port, peer, count, recv_q,
                       None if oldest == NO_AGE else oldest,
                       struct.unpack("=d", struct.pack("=Q", since))[0])


def decode(data: bytes, netns: int) -> tuple[GroupPass, list[Socket]]:
    """The written records, then the trailer (the last TRAILER.size bytes)."""
    if len(data) < TRAILER.size:
        raise BpfError(5, "groups: the pass ended without its trailer")
    head, tail = data[:-TRAILER.size], data[-TRAILER.size:]
    magic, total, grouped, _listeners, *_ports = TRAILER.unpack(tail)
    if magic != TRAILER_MAGIC or len(head) % RECORD.size:
        raise BpfError(5, "groups: malformed output")
    names: dict[bytes, str] = {}
    written = [_socket(netns, fields, names) for fields in RECORD.iter_unpack(head)]
    return GroupPass(netns, total, grouped), written
