"""One request through a WSGI app, in a worker thread: environ, the reply.

The app is an ordinary WSGI callable (the exporter's Site, with
prometheus_client's own /metrics handler: content negotiation, gzip). The
whole body is collected, so the event loop only writes bytes.
"""

from __future__ import annotations

import io
import sys
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_to_bytes, urlsplit

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


@dataclass(frozen=True)
class Request:
    method: str
    target: bytes
    headers: list[tuple[bytes, bytes]]
    peer: tuple[str, int]
    server: tuple[str, int]
    scheme: str  # http or https


@dataclass
class Reply:
    status: int
    headers: list[tuple[str, str]]
    body: bytes


def unauthorized() -> Reply:
    return text(401, "Unauthorized\n",
                [("WWW-Authenticate", 'Basic realm="sockdoctor", charset="UTF-8"')])


def respond(app: WSGIApp, request: Request) -> Reply:
    """The reply of `app` to one (authorized) request."""
    if request.method not in ("GET", "HEAD"):
        return text(405, "only GET and HEAD\n", [("Allow", "GET, HEAD")])
    captured: list[Any] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None
                       ) -> Callable[[bytes], None]:
        captured[:] = [status, headers]
        return lambda _data: None

    try:
        result = app(environ(request), start_response)
        try:
            body = b"".join(result)
        finally:
            getattr(result, "close", lambda: None)()
    except Exception:  # an internal error: its traceback, and the server goes on
        traceback.print_exc(file=sys.stderr)
        return text(500, "internal error\n")
    status, headers = captured
    kept = [(k, v) for k, v in headers if k.lower() != "content-length"]
    return Reply(int(status.split(" ", 1)[0]), [*kept, ("Content-Length", str(len(body)))],
                 body)


def text(status: int, body: str, headers: list[tuple[str, str]] | None = None) -> Reply:
    data = body.encode()
    return Reply(status, [("Content-Type", "text/plain; charset=utf-8"),
                          ("Content-Length", str(len(data))), *(headers or [])], data)


def environ(request: Request) -> dict[str, Any]:
    target = request.target.decode("latin-1")
    if not target.startswith("/"):  # absolute-form (http://host/path) or '*'
        parts = urlsplit(target)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    path, _, query = target.partition("?")
    env: dict[str, Any] = {
        "REQUEST_METHOD": request.method, "SCRIPT_NAME": "",
        "PATH_INFO": unquote_to_bytes(path).decode("latin-1"), "QUERY_STRING": query,
        "SERVER_NAME": request.server[0], "SERVER_PORT": str(request.server[1]),
        "SERVER_PROTOCOL": "HTTP/1.1", "REMOTE_ADDR": request.peer[0],
        "REMOTE_PORT": str(request.peer[1]), "wsgi.version": (1, 0),
        "wsgi.url_scheme": request.scheme, "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": sys.stderr, "wsgi.multithread": True, "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    for name, value in request.headers:
        key = name.decode("latin-1").upper().replace("-", "_")
        if key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            env[key] = value.decode("latin-1")
        else:
            key = "HTTP_" + key
            text_value = value.decode("latin-1")
            env[key] = f"{env[key]},{text_value}" if key in env else text_value
    return env


def header(request: Request, name: bytes) -> str | None:
    for key, value in request.headers:
        if key == name:  # h11 gives names in lower case
            return value.decode("latin-1")
    return None


def only(path: str, app: WSGIApp) -> WSGIApp:
    """`app` at `path`, 404 elsewhere (the reaper's metrics: --web.telemetry-path)."""
    def routed(env: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if env.get("PATH_INFO") == path:
            return app(env, start_response)
        start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
        return [f"not found: try {path}\n".encode()]
    return routed
