"""The web flags of `exporter` and `reap`, spelled as node_exporter spells them.

`--web.listen-address` (repeatable; `--listen` is its older name), `--web.telemetry-path`
and `--web.config.file` (exporter-toolkit's TLS and basic-auth YAML). The
server behind them is sockdoctor.web.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import click

from .common import Once

CONFIG_HELP = ("exporter-toolkit's web config (YAML): tls_server_config (cert_file, "
               "key_file, client_ca_file, client_auth_type, min_version) and "
               "basic_auth_users (bcrypt hashes); re-read when it or a certificate changes.")


def web_options(default_listen: str | None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Add the three web flags; the command gets `listen` (a tuple), `telemetry_path`
    and `web_config`."""
    where = f"[default: {default_listen}]" if default_listen else "[default: no HTTP]"

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        options = [
            click.option("--web.listen-address", "--listen", "listen", multiple=True,
                         metavar="ADDR:PORT",
                         help=f"Where to serve HTTP(S); repeat for several addresses. "
                              f":PORT is every address, [::1]:PORT one. {where}"),
            click.option("--web.telemetry-path", "telemetry_path", cls=Once,
                         default="/metrics", show_default=True, metavar="PATH",
                         help="Path of the metrics."),
            click.option("--web.config.file", "web_config", cls=Once, metavar="FILE",
                         help=CONFIG_HELP),
        ]
        return functools.reduce(lambda cmd, opt: opt(cmd), reversed(options), command)
    return decorate


def check_path(value: str) -> str:
    """--web.telemetry-path: a path of its own (/ and /healthz are taken)."""
    from ..errors import UsageError

    if not value.startswith("/") or value in ("/", "/healthz") or "?" in value:
        raise UsageError(f"--web.telemetry-path {value}: give a path such as /metrics "
                         "(not / or /healthz)")
    return value
