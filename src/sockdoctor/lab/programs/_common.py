"""What every lab program shares: a recognisable name, status lines, a listener."""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import socket
import sys
import time

PR_SET_NAME = 15  # prctl(2): name of the calling thread, shown as comm


def set_comm(name: str) -> None:
    """Rename the process as the kernel reports it (15 bytes at most)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_NAME, ctypes.c_char_p(name.encode()[:15]), 0, 0, 0)


def emit(event: str, **fields: object) -> None:
    """One JSON status line for the scenario that started us.

    After `lab run --keep` nobody reads the pipe any more: the program must
    keep running (it holds the stuck sockets), so it stops reporting instead
    of dying of a broken pipe.
    """
    try:
        sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
        sys.stdout.flush()
    except (BrokenPipeError, ValueError, OSError):
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - lives as long as we do


def listener(port: int, backlog: int, host: str = "0.0.0.0") -> socket.socket:
    """A listening TCP socket, with SO_REUSEADDR as the seeds' servers set it."""
    lst = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lst.bind((host, port))
    lst.listen(backlog)
    return lst


def idle_forever() -> None:
    """Stay alive (holding whatever we hold) until the lab kills us."""
    while True:
        time.sleep(3600)


def parser(description: str, port: int, comm: str) -> argparse.ArgumentParser:
    """Arguments every program takes: where the server is, and our name."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--host", default="0.0.0.0", help="server address (clients: to connect to)")
    ap.add_argument("--port", type=int, default=port)
    ap.add_argument("--comm", default=comm, help=f"process name to take (default: {comm})")
    return ap


def parse(ap: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Our arguments, and our name taken at once: the scenario looks for it."""
    args = ap.parse_args(argv)
    set_comm(args.comm)
    return args


def serve_on(args: argparse.Namespace, backlog: int) -> socket.socket:
    """A server's listener where its arguments say; then the scenario hears we are ready."""
    lst = listener(args.port, backlog, args.host)
    emit("ready", port=args.port)
    return lst
