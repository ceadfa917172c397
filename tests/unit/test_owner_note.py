"""Why a socket has no owner: one sentence per case, from the socket's own facts."""

from __future__ import annotations

import pytest

from sockdoctor.model import Owner, Socket, TcpState


def sock(state: TcpState, inode: int) -> Socket:
    return Socket(netns=1, family=2, state=state, local_addr="10.0.0.1", local_port=8080,
                  peer_addr="10.0.0.2", peer_port=40000, inode=inode, cookie=1, uid=0,
                  recv_q=0, send_q=0, timer=0, expires_ms=0, retrans=0)


@pytest.mark.parametrize(("state", "inode", "words", "queued", "orphaned"), [
    (TcpState.CLOSE_WAIT, 0, "accept queue", True, False),
    (TcpState.ESTABLISHED, 0, "accept queue", True, False),
    (TcpState.SYN_RECV, 0, "handshake in progress", False, False),
    (TcpState.FIN_WAIT2, 0, "orphaned", False, True),
    (TcpState.LAST_ACK, 0, "orphaned", False, True),
    (TcpState.TIME_WAIT, 0, "kept by the kernel only", False, True),
    (TcpState.LISTEN, 77, "listener held by no process", False, False),
    (TcpState.ESTABLISHED, 77, "owner not visible", False, False),
    (TcpState.FIN_WAIT2, 77, "owner not visible", False, False),  # held: shutdown, no close
])
def test_owner_notes(state: TcpState, inode: int, words: str, queued: bool,
                     orphaned: bool) -> None:
    sk = sock(state, inode)
    assert words in sk.owner_note()
    assert (sk.queued, sk.orphaned) == (queued, orphaned)


def test_an_owned_socket_needs_no_note() -> None:
    sk = sock(TcpState.ESTABLISHED, 77)
    sk.owners = [Owner(10, 3)]
    assert sk.owner_note() == ""
