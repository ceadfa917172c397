"""rst: forged packets. Provoke a challenge ACK (spoofed SYN or out-of-window ACK),
read the exact sequence numbers from it, send an in-window RST (and one to the peer).

The last resort, for kernels without SOCK_DESTROY. Needs CAP_NET_RAW; the
kernel's challenge-ACK rate limit and tcp_rfc1337 are detected and reported.
"""

from __future__ import annotations

from ...linux import host as hostmod
from ...model import TcpState
from ..steps import Action, PlanItem
from .base import Choice, Method, Runtime, Target, one_by_one

_STATUS = {"killed": "done", "not-found": "already-gone", "gone": "already-gone"}


class Rst(Method):
    name = "rst"
    in_netns = True
    by_state = True
    program_sees = "its next read or write fails (ECONNRESET or EPIPE); the descriptor stays open"
    peer_sees = "a reset (RST), if it is still there: ECONNRESET"

    def choose(self, t: Target, asked: bool) -> Choice:
        if not t.host.net_raw:
            return Choice("", "forged packets need CAP_NET_RAW", "not-permitted")
        if not asked:
            return Choice("rst", "forged RST")
        if t.sk.state == TcpState.TIME_WAIT:
            return Choice("rst", "asked: forged RST (TIME-WAIT honours it unless "
                                 "tcp_rfc1337=1)")
        return Choice("rst", "asked: forged RST after learning the sequence numbers")

    def run(self, batch: list[PlanItem], rt: Runtime) -> list[Action]:
        with hostmod.rst_killer() as killer:
            def one(item: PlanItem) -> Action:
                sk = item.socket
                assert sk is not None
                result = killer.kill((sk.local_addr, sk.local_port),
                                     (sk.peer_addr, sk.peer_port), sk.family, cookie=sk.cookie)
                detail = result.outcome + ("; " + "; ".join(result.notes) if result.notes
                                           else "")
                return Action(index=item.index, status=_STATUS.get(result.outcome, "failed"),
                              detail=detail)
            return one_by_one(batch, rt, one)
