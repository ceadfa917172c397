"""Seed 003's server.c in Python: one read per connection, and no close().

The C original loses `connfd` by overwriting it on the next accept(); in
Python the socket object would close itself when garbage-collected, so the
leak here is the usual Python form of the bug: every connection is kept in a
session table that nothing ever removes from. Each client that hangs up
leaves a CLOSE_WAIT socket owned by this process, Recv-Q 1 (the unread FIN).
"""

from __future__ import annotations

import socket

from ._common import parse, parser, serve_on


def main(argv: list[str] | None = None) -> None:
    ap = parser(__doc__ or "", port=8000, comm="echo-server")
    ap.add_argument("--backlog", type=int, default=20)
    args = parse(ap, argv)
    lst = serve_on(args, args.backlog)
    sessions: list[socket.socket] = []
    while True:
        conn, _peer = lst.accept()
        sessions.append(conn)
        data = conn.recv(80)
        if data:
            conn.sendall(data.upper())
        # BUG (seed 003): no conn.close(); the next accept() comes straight away


if __name__ == "__main__":
    main()
