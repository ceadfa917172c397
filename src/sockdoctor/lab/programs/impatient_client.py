"""Clients with a short timeout, arriving faster than the server can answer.

Every 1/rate seconds a new client connects, sends its request, waits
`--timeout` seconds for the answer and, not getting it, closes: the
connection it leaves behind is in the server's accept queue, already closed.
"""

from __future__ import annotations

import socket
import threading
import time

from ._common import emit, parse, parser

REQUEST = b"GET /report HTTP/1.0\r\nHost: lab\r\n\r\n"


class Tally:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: dict[str, int] = {}

    def add(self, outcome: str) -> None:
        with self.lock:
            self.counts[outcome] = self.counts.get(outcome, 0) + 1


def one_client(host: str, port: int, timeout: float, tally: Tally) -> None:
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(REQUEST)
            tally.add("answered" if sock.recv(4096) else "closed")
    except TimeoutError:
        tally.add("timed out")  # we give up and close: our FIN goes out
    except OSError as exc:
        tally.add(type(exc).__name__)


def main(argv: list[str] | None = None) -> None:
    ap = parser(__doc__ or "", port=8088, comm="slow-client")
    ap.add_argument("--count", type=int, default=48)
    ap.add_argument("--rate", type=float, default=20.0, help="new clients per second")
    ap.add_argument("--timeout", type=float, default=0.3)
    args = parse(ap, argv)
    tally = Tally()
    threads = []
    for _ in range(args.count):
        t = threading.Thread(target=one_client, args=(args.host, args.port, args.timeout, tally))
        t.start()
        threads.append(t)
        time.sleep(1 / args.rate)
    for t in threads:
        t.join()
    emit("done", connections=args.count, outcomes=tally.counts)


if __name__ == "__main__":
    main()
