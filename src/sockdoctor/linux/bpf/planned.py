"""Run an iter/tcp program on planned sockets only (planned.h): pack, fill, run, read.

The plan's sockets go into the program's `planned` map keyed by cookie,
each with its 4-tuple; the program acts on a socket only when both match
and reports an outcome (code 0 or -errno, state) for each one it met.
Sockets without a cookie cannot be named this way and are left to the
caller's other path.
"""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Sequence

from ...model import Socket
from . import BpfError, BpfObject, available

TUPLE = struct.Struct("=HHHH16s16s")  # struct tuple: family, sport, dport (BE), pad, addrs
OUTCOME = struct.Struct("=QiI")       # struct outcome: cookie, code, state
KEY = struct.Struct("=Q")

_refused: dict[str, str] = {}  # object -> why the kernel refused it (tried once per process)
_lock = threading.Lock()


def pack_tuple(sk: Socket) -> bytes:
    family = sk.family
    local = socket.inet_pton(family, sk.local_addr.partition("%")[0])
    peer = socket.inet_pton(family, sk.peer_addr.partition("%")[0])
    return TUPLE.pack(family, sk.local_port, socket.htons(sk.peer_port), 0, local, peer)


def usable(name: str) -> bool:
    """Whether the engine is in use and this object was not refused before."""
    return available() and name not in _refused


def run(name: str, program: str, sockets: Sequence[Socket], values: list[bytes] | None = None
        ) -> dict[int, tuple[int, int]] | None:
    """cookie -> (code, state) for each planned socket the program met; None: not run.

    `values`: the map values when the program wants more than the tuple (they
    start with it); default, the tuple alone.
    """
    named = [sk for sk in sockets if sk.cookie]
    if not named or not usable(name):
        return None
    keys = b"".join(KEY.pack(sk.cookie) for sk in named)
    packed = b"".join(values if values is not None else map(pack_tuple, named))
    try:
        with BpfObject(name, {"planned": len(named)}) as obj:
            obj.update_batch("planned", keys, packed, len(named))
            data = obj.run_iter(program)
    except BpfError as exc:
        with _lock:
            _refused[name] = exc.strerror or str(exc)
        return None
    return {cookie: (code, state) for cookie, code, state in OUTCOME.iter_unpack(data)}
