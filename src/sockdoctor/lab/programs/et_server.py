"""Seed 002's epoll server: edge-triggered listener, `return` instead of `continue`.

The listening socket is registered with EPOLLET, so epoll reports it only
when new connections arrive, not while the accept queue is non-empty. Over
its connection limit the server accepts one connection, turns it away and
returns instead of draining the queue until EAGAIN. Every connection that
arrived in the same wake-up stays in the accept queue; when its client gives
up and closes it becomes a CLOSE_WAIT socket that no process owns, the
listener's Recv-Q counts them, and the process sleeps in epoll_wait.
"""

from __future__ import annotations

import select
import socket

from ._common import emit, listener, parse, parser

BUSY = b"busy: too many connections\n"


class Server:
    def __init__(self, lst: socket.socket, limit: int) -> None:
        self.lst = lst
        self.limit = limit
        self.ep = select.epoll()
        self.conns: dict[int, socket.socket] = {}
        lst.setblocking(False)
        self.ep.register(lst.fileno(), select.EPOLLIN | select.EPOLLET)

    def accept_new_conn(self) -> None:
        while True:
            try:
                conn, _ = self.lst.accept()
            except BlockingIOError:
                return  # drained: the only correct way out of this loop
            if len(self.conns) >= self.limit:
                try:
                    conn.send(BUSY)
                except OSError:
                    pass
                conn.close()
                return  # BUG (seed 002): must be `continue`; the queue is left as it is
            conn.setblocking(False)
            self.conns[conn.fileno()] = conn
            self.ep.register(conn.fileno(), select.EPOLLIN | select.EPOLLET)
            conn.send(b"hello\n")

    def handle(self, fd: int) -> None:
        conn = self.conns[fd]
        while True:
            try:
                data = conn.recv(4096)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:  # the peer closed: this path is correct
                self.ep.unregister(fd)
                del self.conns[fd]
                conn.close()
                return
            conn.send(data)

    def loop(self) -> None:
        listen_fd = self.lst.fileno()
        while True:
            for fd, _events in self.ep.poll():
                if fd == listen_fd:
                    self.accept_new_conn()
                else:
                    self.handle(fd)


def main(argv: list[str] | None = None) -> None:
    ap = parser(__doc__ or "", port=8080, comm="et-server")
    ap.add_argument("--backlog", type=int, default=511)
    ap.add_argument("--limit", type=int, default=1, help="connections served at once")
    args = parse(ap, argv)
    server = Server(listener(args.port, args.backlog, args.host), args.limit)
    emit("ready", port=args.port)  # only once epoll watches the listener
    server.loop()


if __name__ == "__main__":
    main()
