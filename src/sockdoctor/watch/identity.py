"""Which sockets a sampler has seen before, and since when each is in its state.

Sockets are followed by cookie: the kernel gives every socket a cookie unique
since boot (across namespaces too), so a cookie seen in two samples is the
same socket, whatever happened to its 4-tuple's owner. A tracer (issue 10's
`trace`) may note exact state changes; they replace the sampler's estimate.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from operator import attrgetter

from ..model import Socket, TcpState

_COOKIE = attrgetter("cookie")
_STATE = attrgetter("state")
NOTE_SAMPLES = 3  # a noted change waits this many samples for its socket to show up
Key = tuple[int, str, int, str, int]  # family, local address, local port, peer address, port


@dataclass(frozen=True, slots=True)
class _Note:
    netns: int  # 0: any namespace
    family: int
    local_addr: str
    peer_addr: str
    peer_port: int
    state: int
    when: float


class Identities:
    """cookie -> (state, since when), carried from sample to sample."""

    def __init__(self) -> None:
        self._state: dict[int, int] = {}
        self._since: dict[int, float] = {}
        # (local port, peer port) -> [(note, samples left)]: a busy server port gets
        # thousands of notes, so both ports key them (one look-up per socket)
        self._notes: dict[tuple[int, int], list[tuple[_Note, int]]] = {}
        self._lock = threading.Lock()

    def note(self, netns: int, key: Key, state: int, when: float) -> None:
        """The socket `key` of namespace `netns` (0: any) entered `state` at `when`."""
        family, local_addr, local_port, peer_addr, peer_port = key
        note = _Note(netns, family, local_addr, peer_addr, peer_port, int(state), when)
        with self._lock:
            self._notes.setdefault((local_port, peer_port), []).append((note, NOTE_SAMPLES))

    def update(self, sockets: list[Socket], now: float, parked: dict[int, float] | None = None
               ) -> tuple[int, int, dict[int, float]]:
        """(new, gone, cookie -> since when in its current state) for this sample.

        A socket seen for the first time, or in another state than last time,
        gets `now`: it entered its state after the previous sample, so `now`
        gives a lower bound of zero — unless a tracer noted the exact time.
        parked: cookie -> since when ESTABLISHED, of the sockets a grouping
        pass counts in the kernel (bpf/groups.py): not listed, taken as still
        there; a listed one ESTABLISHED takes its time from there.
        """
        with self._lock:
            notes, self._notes = self._notes, {}
        old_state, old_since = self._state, self._since
        # dict and set operations on whole samples, so a steady state costs no
        # Python loop over every socket
        state = dict(zip(map(_COOKIE, sockets), map(_STATE, sockets), strict=True))
        if parked is not None:
            return self._update_parked(state, now, parked, notes, sockets)
        appeared = state.keys() - old_state.keys()
        if state == old_state:
            since = dict(old_since) if notes else old_since  # samples never change it
        else:
            since = dict(old_since)
            for cookie in old_state.keys() - state.keys():
                del since[cookie]
            for cookie, _st in state.items() - old_state.items():  # new, or changed state
                since[cookie] = now
        if notes:
            self._apply(notes, sockets, since)
        gone = len(old_state) - (len(state) - len(appeared))
        self._state, self._since = state, since
        return len(appeared), gone, since

    def _update_parked(self, state: dict[int, int], now: float, parked: dict[int, float],
                       notes: dict, sockets: list[Socket]) -> tuple[int, int, dict[int, float]]:
        """update() beside a grouping pass: only the listed sockets are followed here
        (a loop over them: few on a grouped sample), the parked ones by their since."""
        old_state, old_since = self._state, self._since
        since: dict[int, float] = {}
        new = 0
        for cookie, st in state.items():
            before = old_state.get(cookie)
            if before == st:
                since[cookie] = old_since[cookie]
            elif st == TcpState.ESTABLISHED and cookie in parked:
                since[cookie] = parked[cookie]
            else:
                since[cookie] = now
                new += before is None and cookie not in parked
        if notes:
            self._apply(notes, sockets, since)
        gone = sum(1 for c in old_state if c not in state and c not in parked)
        self._state, self._since = state, since
        return new, gone, since

    def _apply(self, notes: dict[tuple[int, int], list[tuple[_Note, int]]], sockets: list[Socket],
               since: dict[int, float]) -> None:
        """Exact entry times for the sockets the notes name; unmatched notes wait a while."""
        matched: set[_Note] = set()
        for sk in sockets:
            waiting = notes.get((sk.local_port, sk.peer_port))
            if waiting is None:
                continue
            for note, _left in waiting:
                if _names(note, sk):
                    since[sk.cookie] = note.when
                    matched.add(note)
        with self._lock:
            for port, waiting in notes.items():
                keep = [(n, left - 1) for n, left in waiting if n not in matched and left > 1]
                if keep:
                    self._notes.setdefault(port, []).extend(keep)


def _names(note: _Note, sk: Socket) -> bool:
    return (note.state == sk.state and note.peer_port == sk.peer_port
            and note.family == sk.family and note.peer_addr == sk.peer_addr
            and note.local_addr == sk.local_addr and note.netns in (0, sk.netns))
