"""Where the exporter listens unless told otherwise (docs/exporter.md: why this port).

On the ground floor so that the CLI's --help can name it without importing
the exporter (and prometheus_client) and the library's default is the same.
"""

from __future__ import annotations

EXPORTER_PORT = 19808
EXPORTER_LISTEN = f":{EXPORTER_PORT}"  # every address, IPv6 and IPv4
