"""Seed 002's clients: one long-lived connection, then bursts of quick ones.

The first connection takes the server's only slot and stays. Then bursts of
clients connect at the same moment, send a request, wait a little for an
answer and close: "clients connect and close quickly".
"""

from __future__ import annotations

import select
import socket
import time

from ._common import emit, idle_forever, parse, parser

REQUEST = b"GET /status HTTP/1.0\r\nHost: lab\r\n\r\n"


def burst(host: str, port: int, size: int, patience: float) -> int:
    """Open `size` connections at once; returns how many were answered."""
    socks = []
    for _ in range(size):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.connect_ex((host, port))
        socks.append(sock)
    _, writable, _ = select.select([], socks, [], patience)
    for sock in writable:
        try:
            sock.send(REQUEST)
        except OSError:
            pass
    answered, _, _ = select.select(socks, [], [], patience)
    for sock in socks:
        sock.close()
    return len(answered)


def main(argv: list[str] | None = None) -> None:
    ap = parser(__doc__ or "", port=8080, comm="et-client")
    ap.add_argument("--bursts", type=int, default=3)
    ap.add_argument("--size", type=int, default=10, help="connections per burst")
    ap.add_argument("--patience", type=float, default=0.3, help="seconds to wait for an answer")
    args = parse(ap, argv)
    keeper = socket.create_connection((args.host, args.port), timeout=10)
    greeting = keeper.recv(64).decode(errors="replace").strip()
    answered = 0
    for _ in range(args.bursts):
        answered += burst(args.host, args.port, args.size, args.patience)
        time.sleep(0.1)
    emit("done", greeting=greeting, connections=args.bursts * args.size, answered=answered)
    idle_forever()  # the keeper connection stays, as in the seed


if __name__ == "__main__":
    main()
