"""The metrics server against clients that misbehave, in-process and fast.

A real sockdoctor.web.WebServer on loopback (port 0) serving a tiny WSGI app,
with small limits so that each case takes a second or two: malformed and
random requests (hypothesis), idle clients, the connection limit, a client
that never reads its reply. The same server under the exporter and the
reaper, with 300 clients and a pids cgroup: test_web_silencing.py.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sockdoctor.web import Limits, Source, WebServer, bind


def app(environ: dict, start_response) -> list[bytes]:
    body = f"{environ['REQUEST_METHOD']} {environ['PATH_INFO']}\n".encode()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [body]


@pytest.fixture
def server(request: pytest.FixtureRequest) -> Iterator[WebServer]:
    limits = getattr(request, "param", None) or Limits(request_timeout=1.0)
    said: list[str] = []
    web = WebServer([bind("127.0.0.1:0")], app, Source(None), said.append, limits)
    web.said = said  # type: ignore[attr-defined]
    web.start()
    yield web
    web.stop()


def address(web: WebServer) -> tuple[str, int]:
    return web.sockets[0].getsockname()[:2]


def exchange(web: WebServer, data: bytes, timeout: float = 5.0) -> bytes:
    """Send `data`, read until the server closes (or `timeout`)."""
    with socket.create_connection(address(web), timeout=timeout) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        chunks = []
        try:
            while chunk := s.recv(65536):
                chunks.append(chunk)
        except ConnectionResetError:  # closed with our bytes unread: a reset
            pass
        return b"".join(chunks)


def test_get_head_keep_alive_and_methods(server: WebServer) -> None:
    two = exchange(server, b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nHEAD /b HTTP/1.1\r\nHost: x\r\n\r\n")
    assert two.count(b"HTTP/1.1 200 OK") == 2 and b"GET /a\n" in two
    assert b"HEAD /b" not in two  # no body for HEAD
    assert exchange(server, b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi"
                    ).startswith(b"HTTP/1.1 405")
    assert exchange(server, b"garbage\r\n\r\n").startswith(b"HTTP/1.1 400")
    huge = b"GET / HTTP/1.1\r\nX: " + b"a" * 70000 + b"\r\n\r\n"
    assert exchange(server, huge).startswith(b"HTTP/1.1 431")


def test_an_idle_client_is_cut_after_the_request_timeout(server: WebServer) -> None:
    with socket.create_connection(address(server)) as s:
        t0 = time.monotonic()
        s.settimeout(5)
        assert s.recv(100) == b""
        assert 0.8 < time.monotonic() - t0 < 3
    server.tally.flush()
    (line,) = server.said  # type: ignore[attr-defined]
    assert line.startswith("http: cut 1 client(s)") and "sent no complete request" in line


@pytest.mark.parametrize("server", [Limits(max_connections=4, request_timeout=30,
                                           evict_after=0.2)], indirect=True)
def test_at_the_connection_limit_the_longest_waiting_client_makes_room(
        server: WebServer) -> None:
    idle = [socket.create_connection(address(server)) for _ in range(4)]
    try:
        time.sleep(0.5)
        reply = exchange(server, b"GET /m HTTP/1.1\r\nHost: x\r\n\r\n")
        assert reply.startswith(b"HTTP/1.1 200")
        assert server.tally.total["evicted"] >= 1
    finally:
        for s in idle:
            s.close()


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=600) | st.builds(
    lambda m, p, h: m + b" " + p + b" HTTP/1.1\r\n" + h + b"\r\n\r\n",
    st.sampled_from([b"GET", b"HEAD", b"PUT", b"G\x00T", b""]),
    st.binary(max_size=40), st.binary(max_size=200)))
def test_no_request_stops_the_server(server: WebServer, data: bytes) -> None:
    """Any bytes: an answer or a closed connection, and the next request still works."""
    reply = exchange(server, data, timeout=5)
    assert reply == b"" or reply.startswith(b"HTTP/1.1 ")
    assert exchange(server, b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n").startswith(b"HTTP/1.1 200")



def big(environ: dict, start_response) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"x" * (8 << 20)]


def test_a_client_that_does_not_read_its_reply_is_cut() -> None:
    said: list[str] = []
    web = WebServer([bind("127.0.0.1:0")], big, Source(None), said.append,
                    Limits(write_timeout=1.0))
    web.start()
    try:
        with socket.create_connection(address(web)) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            deadline = time.monotonic() + 10
            while not web.tally.total["slow-reader"] and time.monotonic() < deadline:
                time.sleep(0.1)
            assert web.tally.total["slow-reader"] == 1  # cut, though we read nothing
            assert not web.conns
    finally:
        web.stop()


def test_what_asyncio_reports_is_one_line(server: WebServer) -> None:
    loop = server._loop
    assert loop is not None
    loop.call_soon_threadsafe(loop.call_exception_handler, {
        "message": "Fatal error on transport", "exception": ConnectionResetError(104, "reset")})
    deadline = time.monotonic() + 5
    while not server.said and time.monotonic() < deadline:  # type: ignore[attr-defined]
        time.sleep(0.05)
    assert server.said == [  # type: ignore[attr-defined]
        "http: Fatal error on transport: ConnectionResetError: [Errno 104] reset"]


def test_a_flood_of_wrong_passwords_does_not_delay_known_credentials(tmp_path) -> None:
    """bcrypt is slow on purpose: new credentials wait for one thread, at most 8 of them
    (more: 503), and credentials already verified never wait behind them."""
    import base64
    import concurrent.futures
    import urllib.error
    import urllib.request

    import bcrypt

    hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(10)).decode()
    (tmp_path / "web.yml").write_text(f"basic_auth_users: {{prom: '{hashed}'}}\n")
    web = WebServer([bind("127.0.0.1:0")], app, Source(str(tmp_path / "web.yml")), print)
    web.start()
    host, port = address(web)
    url = f"http://{host}:{port}/m"

    def get(password: str) -> int:
        token = base64.b64encode(f"prom:{password}".encode()).decode()
        request = urllib.request.Request(url, headers={"Authorization": f"Basic {token}"})
        try:
            with urllib.request.urlopen(request, timeout=5) as reply:
                return reply.status
        except urllib.error.HTTPError as exc:
            return exc.code
    try:
        assert get("pw") == 200  # verified once, remembered
        with concurrent.futures.ThreadPoolExecutor(32) as pool:
            flood = [pool.submit(get, f"wrong{i}") for i in range(200)]
            good = [get("pw") for _ in range(20)]
            refused = [f.result() for f in flood]
        assert good == [200] * 20
        assert set(refused) <= {401, 503} and 401 in refused and 503 in refused
    finally:
        web.stop()
