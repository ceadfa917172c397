"""One request, one answer, then the connection ends.

`--close-first`: the server closes right after answering (HTTP/1.0 style):
it is the active closer, its side goes FIN_WAIT2 until the client closes,
and if the client program never does, the client sits in CLOSE_WAIT and the
server's orphaned FIN_WAIT2 lasts until net.ipv4.tcp_fin_timeout (seed 004).
Without it the server waits for the client to hang up, so the client is the
active closer and keeps the TIME_WAIT (seeds 003, 004).
"""

from __future__ import annotations

from ._common import parse, parser, serve_on


def main(argv: list[str] | None = None) -> None:
    ap = parser(__doc__ or "", port=80, comm="reply-server")
    ap.add_argument("--close-first", action="store_true")
    args = parse(ap, argv)
    lst = serve_on(args, 512)
    while True:
        conn, _ = lst.accept()
        with conn:
            try:
                if conn.recv(4096):
                    conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nok\n")
                if not args.close_first:
                    while conn.recv(4096):  # wait for the client to hang up first
                        pass
            except OSError:
                pass


if __name__ == "__main__":
    main()
