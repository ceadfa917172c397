"""Per network namespace: a sock_diag socket for look-ups and a destroy listener.

`trace` keeps one of each open in every namespace it watches (linux/: every
kernel socket is opened here, not in watch/), and learns the names of
namespaces born after it started.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any

from . import netns as netns_mod
from . import sockdiag


class NsSockets:
    """Per network namespace: a sock_diag socket for look-ups, a destroy listener, its name.

    A namespace born after trace started is found when its first event names it
    (through the creating task) or when a look-up finds nothing in the known
    ones: then the namespaces are listed again, synchronously, so its events
    carry its name from the first one on. An unknown inode lists them once when
    first seen; again (if still unknown) only after RETRY_INODE_S, and no
    listing for a failed look-up follows another within LIST_EVERY_S.
    """

    LIST_EVERY_S = 0.2  # listing walks /proc/*/ns/net: a few ms on a busy host
    RETRY_INODE_S = 1.0  # a namespace that was not found is not looked for again sooner

    def __init__(self, destroy: bool, allowed: set[int] | None = None) -> None:
        self.destroy = destroy
        self.allowed = allowed  # --netns: never open sockets elsewhere
        self.diag: dict[int, socket.socket] = {}
        self.listeners: dict[int, socket.socket] = {}
        self.names: dict[int, str] = {}  # every namespace seen listed, by inode
        self.listings = 0  # how often the namespaces were listed (the cost, for the bench)
        self._listed_at = -1.0
        self._missed: dict[int, float] = {}  # inode -> when it was last looked for in vain

    def _list(self) -> list[netns_mod.NsRef]:
        self._listed_at = time.monotonic()
        self.listings += 1
        found, _ = netns_mod.discover()
        self.names.update({ns.inode: ns.name for ns in found})
        return found

    def sync(self, wanted: set[int]) -> None:
        """Open sockets in namespaces new to us; close those of namespaces gone."""
        for inode in [i for i in self.diag if i not in wanted]:
            self.diag.pop(inode).close()
            sock = self.listeners.pop(inode, None)
            if sock is not None:
                sock.close()
        missing = wanted - self.diag.keys()
        if missing:
            self._open([ns for ns in self._list() if ns.inode in missing])

    def discover_new(self) -> list[int]:
        """Namespaces born since the last listing, now open (rate-limited; [] when not due)."""
        if time.monotonic() - self._listed_at < self.LIST_EVERY_S:
            return []
        fresh = [ns for ns in self._list() if ns.inode not in self.diag
                 and (self.allowed is None or ns.inode in self.allowed)]
        self._open(fresh)
        return [ns.inode for ns in fresh if ns.inode in self.diag]

    def name_of(self, inode: int) -> str | None:
        """The namespace's name, listing the namespaces again if it is new (rate-limited)."""
        name = self.names.get(inode)
        if name is None and self._due(inode):
            self._list()
            name = self.names.get(inode)
        return name

    def _due(self, inode: int) -> bool:
        """List again for an inode seen for the first time; a missing one only now and then."""
        now = time.monotonic()
        missed = self._missed.get(inode)
        if missed is not None and (now - missed < self.RETRY_INODE_S
                                   or now - self._listed_at < self.LIST_EVERY_S):
            return False
        if len(self._missed) > 4096:
            self._missed.clear()
        self._missed[inode] = now
        return True

    def _open(self, refs: list[netns_mod.NsRef]) -> None:
        def opener(want_listener: bool) -> Callable[[], tuple[Any, Any]]:
            return lambda: (sockdiag.open_socket(),
                            sockdiag.open_destroy_listener() if want_listener else None)

        results = netns_mod.run_many([(ref, opener(self.destroy)) for ref in refs])
        for ref, result in zip(refs, results, strict=True):
            if isinstance(result, BaseException):
                continue  # the namespace went away, or cannot be entered
            self.diag[ref.inode], listener = result
            if listener is not None:
                self.listeners[ref.inode] = listener

    def socket_for(self, inode: int) -> socket.socket | None:
        sock = self.diag.get(inode)
        if self.allowed is not None and inode not in self.allowed:
            return None
        if sock is None and self._due(inode):  # a namespace born since the sample
            self.sync(set(self.diag) | {inode})
            sock = self.diag.get(inode)
        return sock

    def close(self) -> None:
        for sock in (*self.diag.values(), *self.listeners.values()):
            sock.close()
        self.diag.clear()
        self.listeners.clear()
