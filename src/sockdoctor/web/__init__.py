"""Serving metrics over HTTP(S) the way Prometheus exporters do.

`serve(addresses, app, config_file)` checks the web config (exporter-toolkit's
YAML: TLS, client certificates, basic auth), binds every address at once (so
mistakes end the command before its first sample) and returns a WebServer to
start() and stop(). Used by `sockdoctor exporter` and `sockdoctor reap --listen`.
"""

from __future__ import annotations

from collections.abc import Callable

from .config import Source, WebConfig, load
from .server import Limits, WebServer, bind, parse_address
from .wsgi import WSGIApp

__all__ = ["Limits", "Source", "WebConfig", "WebServer", "bind", "load", "parse_address",
           "serve"]


def serve(addresses: list[str], app: WSGIApp, config_file: str | None,
          say: Callable[[str], None], limits: Limits | None = None) -> WebServer:
    """A WebServer bound to every address (not started yet)."""
    source = Source(config_file, say)  # a bad file ends here, before any port is taken
    limits = limits or Limits()
    sockets = []
    try:
        for address in dict.fromkeys(addresses):
            sockets.append(bind(address, limits.backlog))
    except BaseException:
        for s in sockets:
            s.close()
        raise
    return WebServer(sockets, app, source, say, limits)
