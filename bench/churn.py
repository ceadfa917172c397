"""Loopback connection churn for the trace benchmark: known owners, known rate.

Run inside a network namespace the benchmark created:
    python bench/churn.py --rate 2000 --seconds 10 --out DIR

Servers: three processes, two sharing one port through SO_REUSEPORT (so the
owner cannot be guessed from the port) and one on a port of its own. Each
accepts, waits for the client's FIN (its socket enters CLOSE-WAIT), holds it
--hold-ms, then closes. Clients: two processes that open --rate connections a
second in total and close each as soon as it is established. One connection
is ten state changes (five per side), so --rate 2000 drives 20,000 a second.

Ground truth: each server writes `accept_time pid local_port peer_port` for
every connection it accepted to DIR/server-PID.txt; the clients write how many
connections they completed to DIR/client-PID.txt.
"""

from __future__ import annotations

import argparse
import heapq
import os
import select
import signal
import socket
import sys
import time

ADDR = "127.0.0.1"
SHARED_PORT, OWN_PORT = 9100, 9101


def serve(port: int, hold_s: float, out_dir: str, stop_at: float) -> None:
    lsock = socket.socket()
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    lsock.bind((ADDR, port))
    lsock.listen(4096)
    lsock.setblocking(False)
    ep = select.epoll()
    ep.register(lsock.fileno(), select.EPOLLIN)
    conns: dict[int, socket.socket] = {}
    closing: list[tuple[float, int]] = []
    log: list[str] = []
    pid = os.getpid()
    while time.monotonic() < stop_at or conns:
        now = time.monotonic()
        while closing and closing[0][0] <= now:
            conns.pop(heapq.heappop(closing)[1]).close()
        for fd, _ in ep.poll(0.005):
            if fd == lsock.fileno():
                _accept_all(lsock, ep, conns, log, pid, port)
            elif fd in conns:
                ep.unregister(fd)
                try:
                    conns[fd].recv(1)  # the EOF: the socket is in CLOSE-WAIT now
                except OSError:
                    pass
                heapq.heappush(closing, (now + hold_s, fd))
    with open(f"{out_dir}/server-{pid}.txt", "w") as f:
        f.write("\n".join(log) + "\n")


def _accept_all(lsock: socket.socket, ep: select.epoll, conns: dict[int, socket.socket],
                log: list[str], pid: int, port: int) -> None:
    while True:
        try:
            conn, peer = lsock.accept()
        except BlockingIOError:
            return
        conn.setblocking(False)
        conns[conn.fileno()] = conn
        ep.register(conn.fileno(), select.EPOLLIN | select.EPOLLRDHUP)
        log.append(f"{time.time():.6f} {pid} {port} {peer[1]}")


def connect_loop(rate: float, ports: list[int], out_dir: str, stop_at: float) -> None:
    ep = select.epoll()
    pending: dict[int, socket.socket] = {}
    done = started = 0
    begin = time.monotonic()
    while time.monotonic() < stop_at:
        due = int((time.monotonic() - begin) * rate) - started
        for _ in range(max(0, min(due, 200))):
            sock = socket.socket()
            sock.setblocking(False)
            try:
                sock.connect((ADDR, ports[started % len(ports)]))
            except BlockingIOError:
                pass
            except OSError:
                sock.close()
                continue
            pending[sock.fileno()] = sock
            ep.register(sock.fileno(), select.EPOLLOUT)
            started += 1
        for fd, _ in ep.poll(0.002):
            ep.unregister(fd)
            pending.pop(fd).close()  # established (or refused): the FIN goes out now
            done += 1
    for sock in pending.values():
        sock.close()
    with open(f"{out_dir}/client-{os.getpid()}.txt", "w") as f:
        f.write(f"{done}\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=float, default=2000.0, help="connections per second")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--hold-ms", type=float, default=300.0)
    ap.add_argument("--start-delay", type=float, default=1.0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    start = time.monotonic() + args.start_delay
    stop_at = start + args.seconds
    children = []
    for port in (SHARED_PORT, SHARED_PORT, OWN_PORT):
        children.append(_fork(lambda p=port: serve(p, args.hold_ms / 1000, args.out, stop_at)))
    time.sleep(max(0.0, start - time.monotonic()))
    print(f"servers {' '.join(map(str, children))}", flush=True)
    ports = [SHARED_PORT, SHARED_PORT, OWN_PORT]
    for _ in range(2):
        children.append(_fork(lambda: connect_loop(args.rate / 2, ports, args.out, stop_at)))
    for pid in children:
        os.waitpid(pid, 0)


def _fork(fn) -> int:
    pid = os.fork()
    if pid == 0:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        try:
            fn()
        finally:
            os._exit(0)
    return pid


if __name__ == "__main__":
    sys.exit(main())
