"""sockdoctor.web in-process: the web config file, basic auth, and the server's limits.

A real WebServer on loopback (port 0) serving a tiny WSGI app; real sockets,
small limits so that each case takes a second or two.
"""

from __future__ import annotations

import base64
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import bcrypt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sockdoctor.errors import NotFoundError, UsageError
from sockdoctor.web import Limits, Source, WebServer, auth, bind, load, serve

HASH = bcrypt.hashpw(b"pw", bcrypt.gensalt(4)).decode()


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


def test_basic_auth_results_are_remembered(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = auth._bcrypt_ok
    monkeypatch.setattr(auth, "_bcrypt_ok", lambda p, h: calls.append(p) or real(p, h))
    checker = auth.Checker()
    users = {"prom": HASH.encode()}
    good = "Basic " + base64.b64encode(b"prom:pw").decode()
    assert all(checker.allowed(users, good) for _ in range(50))
    assert len(calls) == 1
    assert not checker.allowed(users, "Basic " + base64.b64encode(b"prom:no").decode())
    assert not checker.allowed(users, "Basic " + base64.b64encode(b"who:pw").decode())
    assert len(calls) == 3  # an unknown user costs a bcrypt too (no timing oracle)
    assert not checker.allowed(users, None) and not checker.allowed(users, "Basic !!")
    assert not checker.allowed({"prom": b"$2b$10$short"}, good)  # a broken hash: refused


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(("text", "error", "words"), [
    ("tls_server_config: [", UsageError, "not valid YAML"),
    ("- a list", UsageError, "expected a mapping"),
    ("http_server_config: {http2: true}", UsageError, "unknown key http_server_config"),
    ("basic_auth_users: {prom: plain-text}", UsageError, "must be a bcrypt hash"),
    ("tls_server_config: {cert_file: a.crt}", UsageError, "needs both cert_file and key_file"),
    ("tls_server_config: {cert_file: a.crt, key_file: a.key}", NotFoundError, "no such file"),
    ("tls_server_config: {cert_file: x, key_file: x, client_auth_type: RequireAnyClientCert}",
     UsageError, "without verifying"),
    ("tls_server_config: {cert_file: x, key_file: x, client_auth_type: Sometimes}",
     UsageError, "use one of NoClientCert"),
    ("tls_server_config: {cert_file: x, key_file: x, client_auth_type: "
     "RequireAndVerifyClientCert}", UsageError, "needs client_ca_file"),
    ("tls_server_config: {cert_file: x, key_file: x, min_version: TLS14}", UsageError,
     "min_version TLS14"),
    ("tls_server_config: {cert_file: x, key_file: x}", UsageError,
     "cannot use the certificate"),
])
def test_a_bad_web_config_is_one_sentence(tmp_path: Path, text: str, error: type,
                                          words: str) -> None:
    (tmp_path / "x").write_text("not a certificate")
    with pytest.raises(error) as caught:
        load(write(tmp_path / "web.yml", text))
    assert words in str(caught.value) and "\n" not in str(caught.value)
    assert str(tmp_path / "web.yml") in str(caught.value)


def test_a_missing_or_binary_file(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError):
        load(str(tmp_path / "none.yml"))
    (tmp_path / "bin.yml").write_bytes(b"\xff\xfe")
    with pytest.raises(UsageError, match="not UTF-8"):
        load(str(tmp_path / "bin.yml"))
    assert load(write(tmp_path / "empty.yml", "")).ssl is None


def test_the_config_is_re_read_when_it_changes_and_a_bad_one_is_not_taken(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sockdoctor.web.config.RECHECK_S", 0.0)
    said: list[str] = []
    path = write(tmp_path / "web.yml", f"basic_auth_users: {{a: '{HASH}'}}\n")
    source = Source(path, said.append)
    assert set(source.current().users) == {"a"}
    write(tmp_path / "web.yml", f"basic_auth_users: {{b: '{HASH}'}}\n")
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert set(source.current().users) == {"b"} and said[-1].startswith("web config reloaded")
    write(tmp_path / "web.yml", "basic_auth_users: [")
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 2 * 10**9))
    assert set(source.current().users) == {"b"} and set(source.current().users) == {"b"}
    assert said[-1].startswith("web config not reloaded, the one in force stays")
    assert len(said) == 2  # said once, not on every request


def test_serve_binds_every_address_or_none(tmp_path: Path) -> None:
    taken = bind("127.0.0.1:0")
    try:
        port = taken.getsockname()[1]
        with pytest.raises(UsageError, match=r"cannot listen on 127\.0\.0\.1"):
            serve(["127.0.0.1:0", f"127.0.0.1:{port}"], app, None, print)
        with pytest.raises(UsageError, match=r"--web\.listen-address"):
            serve(["localhost:http"], app, None, print)
    finally:
        taken.close()
    web = serve(["127.0.0.1:0", "127.0.0.2:0"], app, None, print)
    try:
        assert [u.split(":")[1] for u in web.urls("/m")] == ["//127.0.0.1", "//127.0.0.2"]
    finally:
        web.stop()


def test_the_cli_names_every_optional_collector() -> None:
    from sockdoctor.cli.exporter import COLLECTORS as FLAGS
    from sockdoctor.watch.metrics import COLLECTORS

    assert set(COLLECTORS) == {*FLAGS, "doctor"}


def test_the_documented_web_config_is_accepted(tmp_path: Path) -> None:
    """docs/exporter.md's example: every key known; only its files are missing here."""
    import re

    doc = (Path(__file__).resolve().parents[2] / "docs" / "exporter.md").read_text()
    block = re.search(r"```yaml\n(# /etc/sockdoctor/web.yml.*?)```", doc, re.S)
    assert block is not None
    with pytest.raises(NotFoundError, match="cert_file"):
        load(write(tmp_path / "web.yml", block.group(1)))
    users = load(write(tmp_path / "users.yml", block.group(1).split("basic_auth_users:")[1]
                       .join(["basic_auth_users:", ""]))).users
    assert auth.Checker().allowed(users, "Basic " + base64.b64encode(
        b"prometheus:example").decode())


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
