"""Seed 001's client application: a connection pool that never checks its connections.

It opens `--size` connections, runs one query on each, and keeps them for
later. It never reads them again, never validates them on checkout and has
no idle timeout of its own, so when the server side closes them the kernel
ACKs the FIN and the sockets sit in CLOSE_WAIT (Recv-Q 1: the unread FIN)
for as long as the program runs. The same program plays every peer that
holds connections without ever looking at them.
"""

from __future__ import annotations

import socket

from ._common import emit, idle_forever, parse, parser


def main(argv: list[str] | None = None) -> None:
    ap = parser(__doc__ or "", port=3306, comm="pool-client")
    ap.add_argument("--size", type=int, default=6)
    ap.add_argument("--query", default="SELECT 1")
    args = parse(ap, argv)
    pool: list[socket.socket] = []
    for _ in range(args.size):
        conn = socket.create_connection((args.host, args.port), timeout=10)
        conn.sendall(args.query.encode() + b"\n")
        conn.recv(4096)
        conn.settimeout(None)
        pool.append(conn)
    emit("done", connections=len(pool))
    idle_forever()  # BUG: the pool is never validated, trimmed or closed


if __name__ == "__main__":
    main()
