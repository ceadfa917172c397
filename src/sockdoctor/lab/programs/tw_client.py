"""Short connections in a tight loop: every one leaves a TIME_WAIT behind.

The client opens a connection, sends a request, reads the answer and closes
first, so its side keeps the connection in TIME_WAIT for 60 s. All of them go
from one source address to one server address:port, so each TIME_WAIT pins
one port of net.ipv4.ip_local_port_range; when the range is used up,
connect() fails (EADDRNOTAVAIL, or EADDRINUSE when binding explicitly).
The client reports how far it got and exits, like a failed batch job.
"""

from __future__ import annotations

import errno
import socket

from ._common import emit, parse, parser

REQUEST = b"GET /ping HTTP/1.0\r\nHost: lab\r\n\r\n"


def main(argv: list[str] | None = None) -> None:
    ap = parser(__doc__ or "", port=80, comm="tw-client")
    ap.add_argument("--max", type=int, default=100_000, help="stop after this many connections")
    args = parse(ap, argv)
    done = 0
    while done < args.max:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.connect((args.host, args.port))
        except OSError as exc:
            sock.close()
            emit("exhausted", connections=done, errno=errno.errorcode.get(exc.errno or 0, "?"),
                 message=exc.strerror or str(exc))
            return
        with sock:
            sock.sendall(REQUEST)
            sock.recv(4096)
        done += 1
    emit("done", connections=done)


if __name__ == "__main__":
    main()
