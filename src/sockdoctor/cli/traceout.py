"""Where `trace`'s records go: one line (or JSON object) each, or counted into summaries."""

from __future__ import annotations

import sys
import time
from typing import Any

import msgspec


class Events:
    """Each record as a table line, or one JSON object per line with --ndjson."""

    def __init__(self, ndjson: bool) -> None:
        from ..render.trace import Table

        self.ndjson = ndjson
        self.table = Table()
        self.encoder = msgspec.json.Encoder()

    def header(self) -> None:
        sys.stdout.write(self.table.header() + "\n")

    def records(self, records: list[Any]) -> None:
        if not records:
            return
        out = sys.stdout
        if self.ndjson:
            out.buffer.write(self.encoder.encode_lines(records))
        else:
            out.write("".join(self.table.line(rec) + "\n" for rec in records))
        out.flush()

    def end(self) -> None:
        pass


class Summaries:
    """Records counted by transition; a summary every `every_s` seconds and at the end."""

    def __init__(self, tracer: Any, ndjson: bool, every_s: float | None) -> None:
        from ..watch.tracesummary import Transitions

        join = tracer.join
        self.counts = Transitions(time.time(), lambda rec: rec.peer_port == 0 or bool(
            join.listener_namespaces(rec.local_port)))
        self.ndjson, self.every_s = ndjson, every_s
        self.next_at = time.monotonic() + every_s if every_s else None
        self.encoder = msgspec.json.Encoder()

    def header(self) -> None:
        pass  # each summary has its own

    def records(self, records: list[Any]) -> None:
        self.counts.add(records)
        if self.next_at is not None and time.monotonic() >= self.next_at:
            self.next_at += self.every_s  # type: ignore[operator]
            self._print()

    def end(self) -> None:
        self._print()

    def _print(self) -> None:
        period = self.counts.take(time.time())
        out = sys.stdout
        if self.ndjson:
            out.buffer.write(self.encoder.encode(period) + b"\n")
        else:
            from ..render.trace import summary

            out.write("".join(line + "\n" for line in summary(period)))
        out.flush()
