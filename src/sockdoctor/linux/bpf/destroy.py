"""destroy through bpf_sock_destroy() (Linux 6.5+): destroy.bpf.c on the planned sockets.

One kernel pass over the namespace's TCP table (the calling thread's
namespace) checks each planned socket's identity under its lock and aborts
it. Whatever the program could not settle (a TIME-WAIT or request socket,
a socket it did not meet, a kernel without the kfunc) is left to
SOCK_DESTROY by the caller.
"""

from __future__ import annotations

import errno

from ...model import Socket
from . import planned

NAME, PROGRAM = "destroy", "destroy_planned"
VIA = "bpf_sock_destroy"


def usable() -> bool:
    return planned.usable(NAME)


def destroy(sockets: list[Socket]) -> list[int | None]:
    """An errno per socket (0: destroyed, ESTALE: identity changed), None: not settled."""
    met = planned.run(NAME, PROGRAM, sockets)
    if met is None:
        return [None] * len(sockets)
    # EOPNOTSUPP: not a full socket (TIME-WAIT, request); SOCK_DESTROY takes those
    return [None if m is None or m[0] == -errno.EOPNOTSUPP else -m[0]
            for m in met]  # m: (code, state, pad)
