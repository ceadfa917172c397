"""Run an iter/tcp program on planned sockets only (planned.h): pack, fill, run, read.

The plan's sockets go into the program's `planned` map keyed by cookie,
each with its 4-tuple, index and the states it may still be acted on in;
the program acts on a socket only when all match and writes an outcome
(code 0 or -errno, state) at its index in the `outcomes` array, read back
in one batch after the pass. Sockets without a cookie cannot be named
this way and are left to the caller's other path.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
from collections.abc import Callable, Sequence
from functools import cache, lru_cache

from ...model import Socket
from . import BTF, BpfError, BpfObject, libbpf, wanted

TUPLE = struct.Struct("=HHHHII16s16s")  # struct tuple: family, ports, index, states, addresses
OUTCOME = struct.Struct("=IiII")        # struct outcome: met, code, state, pad
KEY = struct.Struct("=Q")

_refused: dict[str, str] = {}  # object -> why the kernel refused it (tried once per process)
_lock = threading.Lock()


@lru_cache(maxsize=4096)  # a plan has few distinct addresses, often one local
def _address(family: int, text: str) -> bytes:
    return socket.inet_pton(family, text.partition("%")[0])


def pack_tuple(sk: Socket, index: int, states: int = 0) -> bytes:
    """`states`: a mask of 1 << state the socket may be acted on in (0: any)."""
    family = sk.family
    return TUPLE.pack(family, sk.local_port, socket.htons(sk.peer_port), 0, index, states,
                      _address(family, sk.local_addr), _address(family, sk.peer_addr))


def usable(name: str) -> bool:
    """Whether to try this object: the engine wanted, its prerequisites here, and not
    refused before in this process. Loading it is its own probe (a refusal is remembered
    and the caller's other path acts), so a kill that needs only destroy.bpf.o does not
    first load the engine's probe program (~13 ms of CPU: libbpf parses the kernel's BTF
    for every object it loads)."""
    return name not in _refused and wanted() and _present(name)


@cache
def _present(name: str) -> bool:
    """The kernel's BTF, the built object and libbpf: what loading needs before trying."""
    if not os.path.exists(BTF) or not (libbpf.HERE / f"{name}.bpf.o").exists():
        return False
    try:
        libbpf.lib()
    except OSError:
        return False
    return True


def run(name: str, program: str, sockets: Sequence[Socket], outcome: struct.Struct = OUTCOME,
        setup: Callable[[BpfObject], None] | None = None,
        states: Sequence[int] | None = None) -> list[tuple | None] | None:
    """Each socket's outcome (its fields after `met`) if the program met it, else None.

    None instead of a list: the engine is off or refused this program (the
    caller's other path acts). `setup(obj)` fills the program's other maps;
    `states[i]` is the mask of states sockets[i] may be acted on in (planned.h).
    """
    named = [i for i, sk in enumerate(sockets) if sk.cookie]
    if not named or not usable(name):
        return None
    keys = b"".join(KEY.pack(sockets[i].cookie) for i in named)
    packed = b"".join(pack_tuple(sockets[i], i, states[i] if states else 0) for i in named)
    try:
        with BpfObject(name, {"planned": len(named), "outcomes": len(sockets)}) as obj:
            obj.update_batch("planned", keys, packed, len(named))
            if setup is not None:
                setup(obj)
            obj.run_iter(program)
            data = obj.read_array("outcomes", len(sockets), outcome.size)
    except BpfError as exc:
        with _lock:
            _refused[name] = exc.strerror or str(exc)
        return None
    return [values[1:] if values[0] else None for values in outcome.iter_unpack(data)]
