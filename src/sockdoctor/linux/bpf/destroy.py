"""destroy through bpf_sock_destroy() (Linux 6.5+): destroy.bpf.c on the planned sockets.

One kernel pass over the namespace's TCP table (the calling thread's
namespace) checks each planned socket's identity under its lock and aborts
it. Whatever the program could not settle (a TIME-WAIT or request socket,
a socket it did not meet, a kernel without the kfunc) is left to
SOCK_DESTROY by the caller. A socket that has left the states the plan
allows (another hand ended it since) is refused in the same pass.
"""

from __future__ import annotations

import errno

from ...model import Socket
from . import planned

NAME, PROGRAM = "destroy", "destroy_planned"
VIA = "bpf_sock_destroy"


def usable() -> bool:
    return planned.usable(NAME)


def destroy(sockets: list[Socket], states: list[int] | None = None,
            ) -> list[tuple[int, int] | None]:
    """Per socket (errno, state met): 0 destroyed, ESTALE identity changed, EALREADY no
    longer in a state of `states[i]` (a mask; planned.h); None: not settled here."""
    met = planned.run(NAME, PROGRAM, sockets, states=states)
    if met is None:
        return [None] * len(sockets)
    # EOPNOTSUPP: not a full socket (TIME-WAIT, request); SOCK_DESTROY takes those
    return [None if m is None or m[0] == -errno.EOPNOTSUPP else (-m[0], m[1])
            for m in met]  # m: (code, state, pad)
