"""The HTTP server of the exporter and the reaper: one that a client cannot silence.

One asyncio event loop in one thread holds every connection (no thread per
client), parses HTTP/1.1 with h11, and hands complete requests to a small
pool of worker threads that run the WSGI app (and bcrypt). So the task
count stays fixed (the loop and `workers` threads) whatever the clients do,
well within a unit's TasksMax.

What keeps it answering:
- a listen backlog of 4096 (the kernel caps it at net.core.somaxconn);
- at most `max_connections` open connections; at the cap, the one waiting
  longest for its request (past `evict_after`) is cut to make room, else the
  next connection waits in the backlog until a slot frees;
- a request (and the TLS handshake before it) must arrive complete within
  `request_timeout` of the connection or of the previous reply: idle and
  byte-at-a-time clients are cut; a reply must be taken within
  `write_timeout`.
Cut and refused clients are counted and summed up in at most one line per
`REPORT_EVERY` seconds, never a traceback.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import sys
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http import HTTPStatus

import h11

from ..errors import PermissionDeniedError, UsageError
from .auth import Checker
from .config import Source
from .wsgi import Reply, Request, WSGIApp, header, respond, text, unauthorized

REPORT_EVERY = 10.0
REASONS = {
    "timeout": "sent no complete request in time",
    "slow-reader": "did not take its reply in time",
    "evicted": "cut at the connection limit",
    "tls": "failed the TLS handshake",
    "bad-request": "sent a malformed request",
    "no-descriptors": "refused: out of file descriptors",
    "internal": "met an internal error (traceback above)",
    "auth-busy": "were answered 503: too many new credentials already waiting for bcrypt",
}


@dataclass(frozen=True)
class Limits:
    max_connections: int = 512
    request_timeout: float = 5.0  # connection (or previous reply) to complete request
    write_timeout: float = 10.0
    evict_after: float = 1.0  # at the cap, a connection waiting this long may be cut
    backlog: int = 4096
    max_header_bytes: int = 16384
    workers: int = 2  # threads running the app
    auth_queue: int = 8  # new credentials waiting for the bcrypt thread; more: 503


@dataclass(eq=False)
class _Conn:
    sock: socket.socket
    waiting_since: float | None = None  # set while waiting for a request
    task: asyncio.Task | None = None
    evicted: bool = False
    requests: int = 0
    writer: asyncio.StreamWriter | None = None  # once a transport owns the socket


@dataclass
class _Tally:
    """Counts cut clients; one summary line per REPORT_EVERY seconds at most."""

    say: Callable[[str], None]
    counts: Counter = field(default_factory=Counter)
    since: float = field(default_factory=time.monotonic)
    total: Counter = field(default_factory=Counter)

    def add(self, reason: str) -> None:
        self.counts[reason] += 1
        self.total[reason] += 1

    def flush(self) -> None:
        if self.counts:
            parts = ", ".join(f"{n} {REASONS[r]}" for r, n in self.counts.most_common())
            self.say(f"http: cut {sum(self.counts.values())} client(s) in the last "
                     f"{time.monotonic() - self.since:.0f}s: {parts}")
        self.counts.clear()
        self.since = time.monotonic()


def bind(address: str, backlog: int = Limits.backlog) -> socket.socket:
    """A listening socket for ADDR:PORT, [V6]:PORT, :PORT or PORT, bound now (so a
    taken port fails before the first sample). No host: every address, IPv6 and
    IPv4 on one socket where the host has IPv6, IPv4 only where it has not."""
    host, port = parse_address(address)
    candidates = [(host, socket.AF_INET6 if ":" in host else socket.AF_INET)] if host else \
        [("::", socket.AF_INET6), ("0.0.0.0", socket.AF_INET)]
    error: OSError | None = None
    for addr, family in candidates:
        try:
            return socket.create_server((addr, port), family=family, backlog=backlog,
                                        dualstack_ipv6=not host and family == socket.AF_INET6)
        except OSError as exc:
            error = exc
            if exc.errno not in (97, 99):  # EAFNOSUPPORT, EADDRNOTAVAIL: try IPv4
                break
    assert error is not None
    where = f"{host or '*'}:{port}"
    if isinstance(error, PermissionError):
        raise PermissionDeniedError(f"cannot listen on {where}: ports below 1024 need root "
                                    "(CAP_NET_BIND_SERVICE)") from None
    raise UsageError(f"cannot listen on {where}: {error.strerror or error} "
                     "(choose another with --web.listen-address)") from None


def parse_address(text: str) -> tuple[str, int]:
    """ADDR:PORT, [V6ADDR]:PORT, :PORT (every address) or PORT -> (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "", text
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not port.isdigit() or int(port) > 65535:
        raise UsageError(f"--web.listen-address {text}: write it as ADDR:PORT, [ADDR]:PORT "
                         "or :PORT")
    return host, int(port)


def url_of(sock: socket.socket, scheme: str, path: str) -> str:
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"{scheme}://{shown}:{port}{path}"


class WebServer:
    """Serve `app` on already bound sockets, from a thread of its own, until stop()."""

    def __init__(self, sockets: list[socket.socket], app: WSGIApp, source: Source,
                 say: Callable[[str], None], limits: Limits | None = None) -> None:
        self.sockets, self.app, self.source, self.say = sockets, app, source, say
        self.limits = limits or Limits()
        self.tally = _Tally(say)
        self.checker = Checker()
        self.conns: set[_Conn] = set()
        self._pool = ThreadPoolExecutor(self.limits.workers, thread_name_prefix="http-worker")
        self._auth_pool = ThreadPoolExecutor(1, thread_name_prefix="http-auth")
        self._auth_waiting = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()

    def urls(self, path: str) -> list[str]:
        scheme = "https" if self.source.config.ssl else "http"
        return [url_of(s, scheme, path) for s in self.sockets]

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="http", daemon=True)
        self._thread.start()
        self._started.wait(10)

    def stop(self) -> None:
        if self._loop is not None and self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
        if self._thread is not None:
            self._thread.join(10)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._auth_pool.shutdown(wait=False, cancel_futures=True)
        for s in self.sockets:
            s.close()

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.set_exception_handler(self._loop_error)
        self._stopping = asyncio.Event()
        accepting = [asyncio.create_task(self._accept(s)) for s in self.sockets]
        reporting = asyncio.create_task(self._report())
        self._started.set()
        await self._stopping.wait()
        for task in [*accepting, reporting, *(c.task for c in self.conns if c.task)]:
            task.cancel()
        await asyncio.gather(*accepting, reporting, return_exceptions=True)
        self.tally.flush()

    def _loop_error(self, _loop: asyncio.AbstractEventLoop, context: dict) -> None:
        """What asyncio reports on its own (a transport's fatal error...): one line."""
        exc = context.get("exception")
        self.say(f"http: {context.get('message', 'error')}"
                 + (f": {type(exc).__name__}: {exc}" if exc else ""))

    async def _report(self) -> None:
        while True:
            await asyncio.sleep(REPORT_EVERY)
            self.tally.flush()

    async def _accept(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        listener.setblocking(False)
        while True:
            await self._room()
            try:
                sock, _addr = await loop.sock_accept(listener)
            except OSError as exc:  # EMFILE, ENFILE, ENOBUFS: wait, the backlog holds them
                self.tally.add("no-descriptors" if exc.errno in (23, 24) else "bad-request")
                await asyncio.sleep(0.5)
                continue
            conn = _Conn(sock, waiting_since=time.monotonic())
            self.conns.add(conn)
            conn.task = asyncio.create_task(self._client(conn))

    async def _room(self) -> None:
        """Wait for a free slot; at the cap, cut the client waiting longest for its request."""
        while len(self.conns) >= self.limits.max_connections:
            now = time.monotonic()
            waiting = [c for c in self.conns if c.waiting_since is not None
                       and now - c.waiting_since >= self.limits.evict_after and not c.evicted]
            if waiting:
                oldest = min(waiting, key=lambda c: c.waiting_since or 0.0)
                oldest.evicted = True
                if oldest.task is not None:
                    oldest.task.cancel()
            await asyncio.sleep(0.02)

    async def _client(self, conn: _Conn) -> None:
        reason = None
        try:
            await self._converse(conn)
        except asyncio.CancelledError:
            if not conn.evicted:
                raise
            reason = "evicted"
        except TimeoutError:
            reason = "timeout" if conn.waiting_since is not None else "slow-reader"
        except ssl.SSLError:
            reason = "tls"
        except h11.RemoteProtocolError:
            reason = "bad-request"
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            pass  # the client went away: nothing to say
        except Exception:  # a bug of ours: its traceback, and the server goes on
            traceback.print_exc(file=sys.stderr)
            reason = "internal"
        finally:
            self.conns.discard(conn)
            writer = conn.writer
            if writer is None:
                conn.sock.close()  # no transport took it (or the one that did closed it)
            elif reason in (None, "bad-request"):
                writer.close()  # the reply (200, 400, 431...) is all in the kernel's hands
            else:
                writer.transport.abort()
        if reason and (conn.requests == 0 or reason != "timeout"):
            self.tally.add(reason)

    async def _converse(self, conn: _Conn) -> None:
        """Handshake, then request after request until the client or a reply closes."""
        limits = self.limits
        config = self.source.current()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limits.request_timeout  # handshake and first request: both
        async with asyncio.timeout_at(deadline):
            reader, writer = await self._streams(conn.sock, config.ssl)
        conn.writer = writer  # from here on the transport owns the socket: close that
        peer = _addr(writer.get_extra_info("peername"))
        server = _addr(writer.get_extra_info("sockname"))
        scheme = "https" if config.ssl else "http"
        http = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.max_header_bytes)
        while True:
            conn.waiting_since = conn.waiting_since or time.monotonic()
            try:
                async with asyncio.timeout_at(deadline):
                    got = await _read_request(http, reader)
            except h11.RemoteProtocolError as exc:
                await self._send(http, writer, text(exc.error_status_hint, "bad request\n"))
                raise
            if got is None:
                return
            conn.waiting_since = None
            conn.requests += 1
            request = Request(got.method.decode("latin-1"), got.target,
                              list(got.headers), peer, server, scheme)
            reply = await self._authorize(request)
            if reply is None:
                reply = await loop.run_in_executor(self._pool, respond, self.app, request)
            await self._send(http, writer, reply, head=request.method == "HEAD")
            if http.our_state is not h11.DONE or http.their_state is not h11.DONE:
                return
            http.start_next_cycle()
            deadline = loop.time() + limits.request_timeout  # for the next request

    async def _authorize(self, request: Request) -> Reply | None:
        """None if the request may go on, else the reply (401; 503 when too many new
        credentials already wait for bcrypt: remembered ones never wait behind them)."""
        users = self.source.current().users
        if not users:
            return None
        given = header(request, b"authorization")
        verdict = self.checker.known(users, given)
        if verdict is None:
            if self._auth_waiting >= self.limits.auth_queue:
                self.tally.add("auth-busy")
                return text(503, "too many logins at once, try again\n",
                            [("Retry-After", "1")])
            self._auth_waiting += 1
            try:
                verdict = await asyncio.get_running_loop().run_in_executor(
                    self._auth_pool, self.checker.allowed, users, given)
            finally:
                self._auth_waiting -= 1
        return None if verdict else unauthorized()

    async def _streams(self, sock: socket.socket, context: ssl.SSLContext | None
                       ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=self.limits.max_header_bytes)
        protocol = asyncio.StreamReaderProtocol(reader)
        transport, _ = await loop.connect_accepted_socket(
            lambda: protocol, sock, ssl=context,
            ssl_handshake_timeout=self.limits.request_timeout if context else None)
        transport.set_write_buffer_limits(high=0)  # drain(): all of it taken by the kernel
        return reader, asyncio.StreamWriter(transport, protocol, reader, loop)

    async def _send(self, http: h11.Connection, writer: asyncio.StreamWriter, reply: Reply,
                    head: bool = False) -> None:
        if http.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return  # (from IDLE: the answer to a request h11 could not parse)
        headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in reply.headers]
        data = http.send(h11.Response(status_code=reply.status, headers=headers,
                                      reason=_phrase(reply.status)))
        if not head:
            data += http.send(h11.Data(data=reply.body))
        data += http.send(h11.EndOfMessage())
        writer.write(data)
        async with asyncio.timeout(self.limits.write_timeout):
            await writer.drain()


async def _read_request(http: h11.Connection, reader: asyncio.StreamReader
                        ) -> h11.Request | None:
    """The next complete request (its body, if any, read and dropped); None at EOF."""
    request = None
    body = 0
    while True:
        event = http.next_event()
        if event is h11.NEED_DATA:
            http.receive_data(await reader.read(8192))
        elif isinstance(event, h11.Request):
            request = event
        elif isinstance(event, h11.Data):
            body += len(event.data)
            if body > 65536:
                raise h11.RemoteProtocolError("request body too large", 413)
        elif isinstance(event, h11.EndOfMessage):
            return request
        elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
            return None


def _phrase(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


def _addr(value: object) -> tuple[str, int]:
    if isinstance(value, tuple) and len(value) >= 2:
        return str(value[0]), int(value[1])
    return ("", 0)


def stderr_say(prefix: str) -> Callable[[str], None]:
    return lambda line: print(f"{prefix}: {line}", file=sys.stderr, flush=True)
