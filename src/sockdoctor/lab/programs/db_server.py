"""Seed 001's database side: a server (or load balancer) that drops idle clients.

Like MySQL's wait_timeout or a load balancer's idle timeout, it closes every
connection that stayed silent for `--idle-timeout` seconds. That is correct
behaviour; the bug is in the client that never notices (pool_client).
"""

from __future__ import annotations

import select
import socket
import time

from ._common import parse, parser, serve_on


def serve(lst: socket.socket, idle_timeout: float) -> None:
    last_seen: dict[socket.socket, float] = {}
    while True:
        now = time.monotonic()
        expiry = min(last_seen.values(), default=now) + idle_timeout
        readable, _, _ = select.select([lst, *last_seen], [], [], max(0.05, expiry - now))
        for sock in readable:
            if sock is lst:
                conn, _ = lst.accept()
                last_seen[conn] = time.monotonic()
                continue
            try:
                data = sock.recv(4096)
            except OSError:
                data = b""
            if data:
                sock.sendall(b"1\n")  # the answer to every query: SELECT 1
                last_seen[sock] = time.monotonic()
            else:
                del last_seen[sock]
                sock.close()
        now = time.monotonic()
        for sock in [s for s, seen in last_seen.items() if now - seen >= idle_timeout]:
            del last_seen[sock]
            sock.close()  # idle too long: our FIN goes to the client


def main(argv: list[str] | None = None) -> None:
    ap = parser(__doc__ or "", port=3306, comm="db-server")
    ap.add_argument("--idle-timeout", type=float, default=1.5)
    args = parse(ap, argv)
    lst = serve_on(args, 128)
    serve(lst, args.idle_timeout)


if __name__ == "__main__":
    main()
