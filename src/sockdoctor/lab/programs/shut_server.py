"""Seed 004's Python pitfall: shutdown() taken for close().

When a client is done, the server "terminates" the connection with
shutdown(SHUT_RDWR) and keeps the socket object in its session table.
shutdown() sends the FIN and the connection completes its close, so the
kernel drops it from every TCP table, but the descriptor and the kernel
socket stay allocated until close(): the process collects descriptors that
point at TCP sockets no tool lists any more, until it runs out of them.
"""

from __future__ import annotations

import socket

from ._common import parse, parser, serve_on


def finish(conn: socket.socket) -> None:
    """Read until the client hangs up, then "terminate" the session."""
    while conn.recv(4096):
        pass
    conn.shutdown(socket.SHUT_RDWR)  # BUG (seed 004): never followed by conn.close()


def main(argv: list[str] | None = None) -> None:
    ap = parser(__doc__ or "", port=9000, comm="shut-server")
    args = parse(ap, argv)
    lst = serve_on(args, 64)
    sessions: list[socket.socket] = []  # kept for "statistics"; never pruned
    while True:
        conn, _ = lst.accept()
        sessions.append(conn)
        try:
            request = conn.recv(4096)
            if request:
                conn.sendall(b"bye\n")
            finish(conn)
        except OSError:
            pass


if __name__ == "__main__":
    main()
