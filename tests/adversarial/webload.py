"""Clients that try to silence a metrics server, and a pids cgroup to hold it in.

Everything here talks to loopback only, holds a bounded number of
connections and closes them all on the way out.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

REQUEST = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"


def split_url(url: str) -> tuple[str, int, str]:
    """http://HOST:PORT/PATH -> (host, port, /PATH)."""
    rest = url.split("://", 1)[1]
    hostport, _, path = rest.partition("/")
    host, _, port = hostport.rpartition(":")
    return host.strip("[]"), int(port), "/" + path


@dataclass
class Attack:
    """`idle` connections that send nothing and `slow` ones that send a request a
    byte at a time (one byte every `pace` seconds), held until stop()."""

    address: tuple[str, int]
    idle: int
    slow: int
    pace: float = 0.5
    sockets: list[socket.socket] = field(default_factory=list)
    cut: int = 0  # connections the server closed on them

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._dribble, daemon=True)

    def start(self) -> Attack:
        for _ in range(self.idle + self.slow):
            s = socket.create_connection(self.address, timeout=10)
            s.setblocking(False)
            self.sockets.append(s)
        self._thread.start()
        return self

    def _dribble(self) -> None:
        """Send the next byte of a request on every slow connection, forever."""
        slow = self.sockets[self.idle:]
        step = 0
        while not self._stop.wait(self.pace):
            byte = REQUEST[step % len(REQUEST):step % len(REQUEST) + 1]
            for s in slow:
                try:
                    s.send(byte)
                except OSError:
                    pass
            step += 1

    def closed_by_server(self) -> int:
        """How many of our connections the server has closed (EOF or reset)."""
        n = 0
        for s in self.sockets:
            try:
                n += s.recv(65536) == b""
            except BlockingIOError:
                pass
            except OSError:
                n += 1
        return n

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        for s in self.sockets:
            s.close()


@contextmanager
def attacking(url: str, idle: int, slow: int) -> Iterator[Attack]:
    host, port, _ = split_url(url)
    attack = Attack((host, port), idle, slow)
    try:
        yield attack.start()
    finally:
        attack.stop()


def scrape(url: str, timeout: float = 5.0) -> int:
    """The status of one GET (0: no answer in time)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:
            reply.read()
            return reply.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def scrapes_during(url: str, seconds: float, every: float = 0.5) -> list[tuple[int, float]]:
    """(status, seconds taken) of a scrape every `every` seconds for `seconds`."""
    out = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        t0 = time.monotonic()
        out.append((scrape(url), time.monotonic() - t0))
        time.sleep(max(0.0, every - (time.monotonic() - t0)))
    return out


def concurrent_scrapes(url: str, n: int, timeout: float = 60.0) -> int:
    """Open n connections at once, each sends one GET; how many got a 200 in time."""
    host, port, path = split_url(url)
    request = f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()

    async def one() -> bool:
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            return False
        try:
            writer.write(request)
            await writer.drain()
            reply = await reader.read()
            return reply.startswith(b"HTTP/1.1 200")
        except OSError:
            return False
        finally:
            writer.close()

    async def every() -> int:
        tasks = [asyncio.ensure_future(one()) for _ in range(n)]
        done, pending = await asyncio.wait(tasks, timeout=timeout)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        return sum(t.result() for t in done if not t.cancelled() and t.exception() is None)

    return asyncio.run(every())


def tasks_of(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


# --- a pids cgroup ------------------------------------------------------------------

@dataclass
class PidsCgroup:
    """A child cgroup with pids.max, for v1 (the pids hierarchy) or v2 (unified)."""

    path: Path

    @property
    def procs(self) -> Path:
        return self.path / "cgroup.procs"

    def read(self, name: str) -> str:
        return (self.path / name).read_text().strip()

    def prefix(self) -> list[str]:
        """argv prefix: the command joins this cgroup, then execs (so its pid is in it)."""
        return ["sh", "-c", f'echo $$ > {self.procs} && exec "$@"', "sh"]


def pids_root() -> Path | None:
    v1 = Path("/sys/fs/cgroup/pids")
    if (v1 / "cgroup.procs").exists():
        return v1
    v2 = Path("/sys/fs/cgroup")
    controllers = v2 / "cgroup.controllers"
    if controllers.exists() and "pids" in controllers.read_text().split():
        return v2
    return None


@contextmanager
def pids_cgroup(name: str, limit: int) -> Iterator[PidsCgroup]:
    """Made here and removed after (its processes must have exited by then)."""
    root = pids_root()
    if root is None:
        raise RuntimeError("no pids cgroup controller on this machine")
    if root == Path("/sys/fs/cgroup"):  # v2: the parent must hand the controller down
        subtree = root / "cgroup.subtree_control"
        if "pids" not in subtree.read_text().split():
            subtree.write_text("+pids")
    group = PidsCgroup(root / name)
    group.path.mkdir()
    try:
        (group.path / "pids.max").write_text(str(limit))
        yield group
    finally:
        deadline = time.monotonic() + 10
        while True:
            try:
                group.path.rmdir()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
