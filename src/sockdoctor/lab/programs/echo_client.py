"""Seed 003's client.c: connect, write a message, read the answer, close.

Run it with a count to make several short connections, one after another.
"""

from __future__ import annotations

import socket

from ._common import emit, parse, parser


def main(argv: list[str] | None = None) -> None:
    ap = parser(__doc__ or "", port=8000, comm="echo-client")
    ap.add_argument("--count", type=int, default=5)
    ap.add_argument("--message", default="hello")
    args = parse(ap, argv)
    answers = []
    for i in range(args.count):
        with socket.create_connection((args.host, args.port), timeout=10) as sock:
            sock.sendall(f"{args.message} {i}\n".encode())
            answers.append(sock.recv(80).decode(errors="replace").strip())
    emit("done", connections=args.count, last_answer=answers[-1] if answers else "")


if __name__ == "__main__":
    main()
