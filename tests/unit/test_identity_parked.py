"""Identities beside a grouping pass: parked sockets keep their time, are not new or gone."""

from __future__ import annotations

import socket

from sockdoctor.model import Socket, TcpState
from sockdoctor.watch.identity import Identities

EST, CW = TcpState.ESTABLISHED, TcpState.CLOSE_WAIT


def sk(cookie: int, state: int = EST) -> Socket:
    return Socket(1, socket.AF_INET, state, "10.0.0.1", 8000, "10.0.0.2", 40000 + cookie,
                  cookie, cookie, 0, 0, 0)


def test_parked_sockets_are_followed_by_their_since() -> None:
    ids = Identities()
    assert ids.update([sk(1), sk(2), sk(3)], 10.0)[:2] == (3, 0)
    parked = {1: 10.0, 2: 10.0}
    # grouped: 1 and 2 counted in the kernel, 3 closed, 4 is new
    new, gone, since = ids.update([sk(4)], 20.0, parked)
    assert (new, gone, since) == (1, 1, {4: 20.0})
    # listed again (a full sample): 1 keeps its time, 2 went CLOSE-WAIT just now
    new, gone, since = ids.update([sk(1), sk(2, CW), sk(4)], 30.0, parked)
    assert (new, gone) == (0, 0)
    assert since == {1: 10.0, 2: 30.0, 4: 20.0}
    # the usual path afterwards is unchanged
    new, gone, since = ids.update([sk(1), sk(4)], 40.0)
    assert (new, gone, since) == (0, 1, {1: 10.0, 4: 20.0})
