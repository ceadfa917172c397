"""Seed 001, causes 2 and 3: a one-at-a-time handler far slower than its clients.

It accepts one connection, reads the request, works for `--work` seconds,
answers and closes, then accepts the next. Its backlog is large compared
with its speed, so new connections wait in the accept queue much longer than
the clients are willing to; they give up and close, and the queue fills with
CLOSE_WAIT sockets nobody has accept()ed yet. Once the queue is full the
kernel drops new handshakes (ListenOverflows / ListenDrops). Unlike seed
002's server this one is not idle: it is busy (sleeping) in its handler.
"""

from __future__ import annotations

import time

from ._common import parse, parser, serve_on


def main(argv: list[str] | None = None) -> None:
    ap = parser(__doc__ or "", port=8088, comm="slow-server")
    ap.add_argument("--backlog", type=int, default=32)
    ap.add_argument("--work", type=float, default=1.5, help="seconds spent on each request")
    args = parse(ap, argv)
    lst = serve_on(args, args.backlog)
    while True:
        conn, _ = lst.accept()
        with conn:
            try:
                request = conn.recv(4096)
                if not request:
                    continue  # the client is already gone: nothing to do
                time.sleep(args.work)  # the slow part: a query, a remote call, a lock...
                conn.sendall(b"HTTP/1.0 200 OK\r\n\r\ndone\n")
            except OSError:
                pass  # the client gave up and reset the connection


if __name__ == "__main__":
    main()
