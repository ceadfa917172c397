"""keepalive through bpf_setsockopt() (Linux 5.15+): keepalive.bpf.c on the planned sockets.

One kernel pass over the namespace's TCP table (the calling thread's
namespace) arms each planned socket whose identity still matches, with its
lock held, and reads the options back before and after, as the pidfd path
does through a duplicate. The owner is never stopped. Sockets it did not
settle are left to the pidfd path.
"""

from __future__ import annotations

import struct

from ...model import Socket
from . import planned
from .libbpf import BpfObject

NAME, PROGRAM = "keepalive", "keepalive_planned"
VIA = "bpf_setsockopt"
OPTIONS = ("keepalive", "idle_s", "interval_s", "count", "user_timeout_ms")
OUTCOME = struct.Struct("=IiII5i5i")  # met, code, state, pad, before[5], after[5]
SETTINGS = struct.Struct("=5i")

Armed = tuple[int, dict[str, int], dict[str, int]]  # errno (0: set), before, after


def usable() -> bool:
    return planned.usable(NAME)


def arm(sockets: list[Socket], wanted: dict[str, int]) -> list[Armed | None]:
    """Per socket: (errno, options before, read back after), or None: not settled here."""
    values = SETTINGS.pack(1, wanted["idle_s"], wanted["interval_s"], wanted["count"],
                           wanted.get("user_timeout_ms", -1))

    def setup(obj: BpfObject) -> None:
        obj.update_batch("wanted", b"\0" * 4, values, 1)
    met = planned.run(NAME, PROGRAM, sockets, OUTCOME, setup)
    if met is None:
        return [None] * len(sockets)
    out: list[Armed | None] = []
    for m in met:
        if m is None or m[0] == -95:  # EOPNOTSUPP: not a full socket
            out.append(None)
            continue
        out.append((-m[0], dict(zip(OPTIONS, m[3:8], strict=True)),
                    dict(zip(OPTIONS, m[8:13], strict=True))))
    return out
