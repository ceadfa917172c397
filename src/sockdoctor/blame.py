"""The pytest guard's verdicts: which sockets a test (or a fixture) left behind.

A verdict is taken once the maker is over (a test after its function-scoped
fixtures are torn down; a broader fixture after its own teardown), from
what socktrack recorded when each socket was made — never from when a look
happened. What is judged:

- sockets of this process that the maker made and that are still open;
- sockets of processes the maker started (any descendant of a child process
  that appeared while the maker ran), except descriptors inherited from
  this process (judged as this process's).

Closes in flight get the grace period; garbage is collected once (a socket
only garbage holds is closed by its finalizer). A socket still open then is
asked who holds it (holders.py): a broader fixture's value makes it that
fixture's, a pool of an installed package kept in a module makes it a pool
(reported once per session, a leak only with strict), anything else a leak.
"""

from __future__ import annotations

import gc
import os
import time
import warnings
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

from . import guardreport, holders
from .guardreport import Leak
from .leakguard import _holds, _stuck_kind
from .linux import heldsockets, procfs
from .linux.heldsockets import FdInspector, Held
from .model import Owner
from .socktrack import Maker, Record, Tracker, creation_site, installed_dirs, library_dirs

_POLL = 0.01
REPORTED = Maker("reported", "reported already")  # a record's maker once its verdict is out
POOLED = Maker("pool", "a long-lived pool")


@dataclass
class Pool:
    """Sockets held by one long-lived pool, reported once per session."""

    what: str
    leaks: list[Leak] = field(default_factory=list)


@dataclass
class Verdict:
    leaks: list[Leak] = field(default_factory=list)
    pools: list[Pool] = field(default_factory=list)


@dataclass
class Judge:
    tracker: Tracker
    grace: float
    strict: bool = False  # pools are leaks too
    full_stack: bool = False
    extra_library: tuple[str, ...] = ()
    hide: tuple[str, ...] = ()  # the test runner's own code: left out of full stacks
    children: dict[int, Maker] = field(default_factory=dict)  # direct child pid -> maker
    inspector: FdInspector = field(default_factory=FdInspector)

    def __post_init__(self) -> None:
        self.library = library_dirs(self.extra_library)
        self.installed = installed_dirs(self.extra_library)  # a stdlib class is never a pool

    # --- processes -----------------------------------------------------------------

    def claim_children(self, maker: Maker) -> None:
        """Child processes that appeared since the last look were started by `maker`."""
        kids = set(heldsockets._children(os.getpid()))
        for pid in [pid for pid in self.children if pid not in kids]:
            del self.children[pid]
        for pid in kids:
            self.children.setdefault(pid, maker)

    # --- verdicts ------------------------------------------------------------------

    def judge(self, maker: Maker, fixtures: dict[int, Maker],
              allowed: Callable[[Leak], bool] = lambda leak: False) -> Verdict:
        """What `maker` left behind, now that it is over (see the module's docstring)."""
        self.tracker.quiet = _ident()
        try:
            records, helds = self._settled(maker)
            verdict = Verdict()
            kept = self._sort_out(records, fixtures, verdict)
            leaks = self._own_leaks(kept) + self._child_leaks(helds)
            guardreport.describe(leaks)
            verdict.leaks = [leak for leak in leaks if not allowed(leak)]
            for pool in verdict.pools:
                guardreport.describe(pool.leaks)
            return verdict
        finally:
            self.tracker.quiet = 0

    def _settled(self, maker: Maker) -> tuple[list[Record], dict[Hashable, Held]]:
        """The maker's open sockets once closes in flight have landed (or the grace ran out).

        Garbage is collected young first (a test's objects are young, and that costs
        little); a full collection only for what is still open after the grace.
        """
        records = self.tracker.made_by(maker)
        helds = self._child_view(maker)
        deadline = time.monotonic() + self.grace
        if records:
            self._collect(1)
            records = _still_open(records)
        while (records or helds) and time.monotonic() < deadline:
            time.sleep(max(0.0, min(_POLL, deadline - time.monotonic())))
            records = _still_open(records)
            helds = self._child_view(maker) if helds else helds
        if records:
            self._collect(2)
            records = _still_open(records)
        return records, helds

    def _collect(self, generation: int) -> None:
        """Our collection must not be where an unclosed socket's ResourceWarning lands (under
        filterwarnings = error it would fail the test being judged, in any mode)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            gc.collect(generation)

    def _sort_out(self, records: list[Record], fixtures: dict[int, Maker],
                  verdict: Verdict) -> list[Record]:
        """Hand sockets a broader fixture holds to it, set pools aside; the rest are leaks."""
        kept = []
        pools: dict[str, Pool] = {}
        for rec in records:
            sock = rec.socket()
            if sock is None:
                continue
            holder = holders.held_by(sock, fixtures, self.installed)
            del sock
            if holder.kind == "fixture" and holder.maker is not None:
                rec.maker = holder.maker  # judged when that fixture's scope ends
                continue
            if holder.kind == "pool" and not self.strict:
                pool = pools.setdefault(holder.what, Pool(holder.what))
                pool.leaks.extend(self._own_leaks([rec], mark=POOLED))
                continue
            kept.append(rec)
        verdict.pools = list(pools.values())
        return kept

    def _own_leaks(self, records: list[Record], mark: Maker = REPORTED) -> list[Leak]:
        pid = os.getpid()
        found = self.inspector.inspect({rec.inode: [Owner(pid, rec.fd)] for rec in records})
        self.inspector.describe(found.values())
        leaks = []
        for rec in records:
            held = found.get(rec.inode)
            rec.maker = mark
            if held is None or held.socket is None:
                continue
            leak = Leak(_stuck_kind(held) or guardreport.OPEN, held.socket, held.owners)
            stack = rec.stack()
            leak.site = creation_site(stack, self.library)
            leak.site_source = next((src for f, n, src in stack if f"{f}:{n}" == leak.site), "")
            leak.thread = rec.thread
            if self.full_stack:
                leak.created = [(guardreport._short(f), n, src) for f, n, src in stack
                                if not f.startswith(self.hide)]
            leaks.append(leak)
        return leaks

    def _child_view(self, maker: Maker) -> dict[Hashable, Held]:
        pids = [pid for pid, owner in self.children.items() if owner is maker]
        if not pids:
            return {}
        pids = heldsockets.descendants(pids)
        ours = procfs.socket_owners([os.getpid()]).by_inode  # inherited: judged as ours
        tcp = {inode: owners for inode, owners in self.inspector.tcp_sockets(pids).items()
               if inode not in ours}
        return {key: held for key, held in self.inspector.inspect(tcp).items() if _holds(held)}

    def _child_leaks(self, helds: dict[Hashable, Held]) -> list[Leak]:
        self.inspector.describe(helds.values())
        return [Leak(_stuck_kind(held) or guardreport.OPEN, held.socket, held.owners)
                for held in helds.values() if held.socket is not None]


def _still_open(records: list[Record]) -> list[Record]:
    return [rec for rec in records if rec.socket() is not None]


def _ident() -> int:
    import threading

    return threading.get_ident()
