"""A thread-per-connection server without SO_KEEPALIVE.

Each connection gets a thread blocked in recv(). If a client host vanishes
without sending a FIN or RST (power loss, cable pulled, a NAT entry or
firewall state dropped), nothing is ever sent on the idle connection, so
nothing ever fails: the socket stays ESTABLISHED and the thread stays
blocked, forever. SO_KEEPALIVE (with TCP_KEEPIDLE/INTVL/CNT) or an
application heartbeat would notice.
"""

from __future__ import annotations

import socket
import threading

from ._common import parse, parser, serve_on


def session(conn: socket.socket) -> None:
    with conn:
        try:
            while data := conn.recv(4096):
                conn.sendall(b"pong " + data)
        except OSError:
            pass


def main(argv: list[str] | None = None) -> None:
    ap = parser(__doc__ or "", port=5000, comm="idle-server")
    args = parse(ap, argv)
    lst = serve_on(args, 64)
    while True:
        conn, _ = lst.accept()  # no SO_KEEPALIVE: the point of this scenario
        threading.Thread(target=session, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    main()
