"""The sampler in the kernel: aggregate.bpf.c, one counting pass per namespace.

A pass gives what a steady sample of the exporter needs without a record
per healthy socket: sockets per state (as sock_diag reports them), the set
of local ports in use, and full Socket objects only for the states asked
for (`emit`: the exporter's CLOSE-WAIT and LISTEN). Its cost grows with
the number of sockets only by the kernel's walk, not by what crosses into
Python. The object stays loaded while its owner (a Sampler) lives and is
closed with it; nothing is pinned.

Counting is the socket source a scan takes for that (inventory.Scanner,
sockets.SocketSource): each namespace's dump gives the emitted sockets and
keeps the pass's counts aside (`tallies`) for the sample.
"""

from __future__ import annotations

import logging
import socket
import struct
import threading
import weakref
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

from ...model import Socket, state_mask
from .. import sockdiag
from ..sockdiag import AGED_STATES
from . import BpfError, BpfObject, available
from .sockets import Dump

log = logging.getLogger("sockdoctor.bpf")

NAME, PROGRAM = "aggregate", "aggregate"
RECORD = struct.Struct("=QQBxHHHIIII16s16s")  # struct record in aggregate.bpf.c
TOTALS_MAGIC = 0x736F636B61676731
STATES = 16
TOTALS = struct.Struct(f"=QQ{STATES}Q1024Q")
NO_AGE = 0xFFFFFFFF
_V4, _V6 = socket.AF_INET, socket.AF_INET6


@dataclass
class Pass:
    """What one pass over one namespace found."""

    netns: int
    sockets: int = 0  # all of them, emitted or not
    states: dict[int, int] = field(default_factory=dict)  # reported state -> sockets
    ports: frozenset[int] = frozenset()  # local ports of any socket
    emitted: list[Socket] = field(default_factory=list)  # those in the emitted states


class Aggregator:
    """The loaded program; run() one namespace at a time (the calling thread's)."""

    def __init__(self, emit: Iterable[int]) -> None:
        self.emit = state_mask(*emit)
        self._obj: BpfObject | None = None
        self._unload: weakref.finalize | None = None  # if never closed: when collected
        self._lock = threading.Lock()

    def run(self, netns: int) -> Pass:
        """One pass over the calling thread's namespace (whose inode is `netns`)."""
        with self._lock:  # one pass at a time: the totals map is the pass's
            obj = self._load()
            try:
                data = obj.run_iter(PROGRAM)
            except BpfError:
                self.close()  # reloaded next time, whatever state it was left in
                raise
        return decode(data, netns)

    def _load(self) -> BpfObject:
        if self._obj is None:
            obj = BpfObject(NAME)
            try:
                obj.update_elem("emit_mask", 0, struct.pack("=I", self.emit))
            except BaseException:
                obj.close()
                raise
            self._obj = obj
            self._unload = weakref.finalize(self, obj.close)
        return self._obj

    def close(self) -> None:
        if self._unload is not None:
            self._unload()  # closes the object once, whoever calls first
            self._obj = self._unload = None

    def __enter__(self) -> Aggregator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def usable() -> bool:
    return available()


class Counting:
    """The counting socket source (sockets.SocketSource) of one sampler, loaded while it lives.

    A dump runs the pass in the calling thread's namespace, keeps its counts
    in `tallies` (netns inode -> Pass, emitted sockets left out) and returns
    the emitted sockets. A pass the kernel refuses is counted from a
    sock_diag dump instead (the same Pass), and the source is `off` from then.
    """

    complete = False

    def __init__(self, emit: Iterable[int]) -> None:
        self._agg = Aggregator(emit)
        self.also: frozenset[int] = frozenset()  # processes the consumer names
        self.tallies: dict[int, Pass] = {}
        self.off = ""  # why it is no longer used (the kernel refused it)

    def usable(self) -> bool:
        return not self.off and usable()

    def close(self) -> None:
        self._agg.close()

    @contextmanager
    def open(self, opts: sockdiag.DumpOptions, families: Iterable[int]) -> Iterator[Dump]:
        fams = tuple(families)
        self.tallies = {}

        def dump(netns: int) -> list[Socket]:
            found = self._pass(netns, opts, fams)
            self.tallies[netns] = replace(found, emitted=[])  # they go on in the snapshot
            return found.emitted
        yield dump

    def _pass(self, netns: int, opts: sockdiag.DumpOptions, families: tuple[int, ...]
              ) -> Pass:
        if not self.off:
            try:
                return self._agg.run(netns)
            except BpfError as exc:
                self.off = str(exc)
                log.warning("counting in the kernel failed (%s): sampling through sock_diag",
                            self.off)
        return count(sockdiag.dump_here(opts, netns=netns, families=families), netns,
                     self._agg.emit)


def count(sockets: list[Socket], netns: int, emit: int) -> Pass:
    """What a pass finds, from a namespace's sockets dumped otherwise (the reference)."""
    return Pass(netns, len(sockets), dict(Counter(sk.state for sk in sockets)),
                frozenset(sk.local_port for sk in sockets),
                [sk for sk in sockets if (1 << sk.state) & emit])


def decode(data: bytes, netns: int) -> Pass:
    """The records, then the totals (the last TOTALS.size bytes: every socket)."""
    if len(data) < TOTALS.size:
        raise BpfError(5, "aggregate: the pass ended without its totals")
    head, tail = data[:-TOTALS.size], data[-TOTALS.size:]
    magic, total, *rest = TOTALS.unpack(tail)
    if magic != TOTALS_MAGIC or len(head) % RECORD.size:
        raise BpfError(5, "aggregate: malformed output")
    states = {st: n for st, n in enumerate(rest[:STATES]) if n}
    out = Pass(netns, total, states, _ports(rest[STATES:]))
    names: dict[bytes, str] = {}
    for fields in RECORD.iter_unpack(head):
        out.emitted.append(_socket(netns, fields, names))
    return out  # the totals count the emitted sockets too


def _ports(words: list[int]) -> frozenset[int]:
    return frozenset(64 * i + b for i, w in enumerate(words) if w
                     for b in range(64) if (w >> b) & 1)


def _socket(netns: int, fields: tuple, names: dict[bytes, str]) -> Socket:
    (cookie, inode, state, family, sport, dport, rqueue, wqueue, uid, age, src,
     dst) = fields
    sk = Socket(netns, family, state, _name(names, family, src), sport,
                _name(names, family, dst), dport, inode, cookie, uid, rqueue, wqueue)
    if age != NO_AGE and (1 << state) & AGED_STATES:
        sk.age_ms = age
    return sk


def _name(names: dict[bytes, str], family: int, raw: bytes) -> str:
    text = names.get(raw)
    if text is None:
        text = names[raw] = socket.inet_ntop(family, raw[:4] if family == _V4 else raw)
    return text
