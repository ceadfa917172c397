"""The binary format of tracefs ring-buffer pages, and of the TCP state-change event.

What per_cpu/cpuN/trace_pipe_raw hands out: whole pages, each a header (a
timestamp, a commit word) and events with 4-byte headers (5 bits type_len,
27 bits time delta); the layouts come from the kernel's own description
(events/header_page, the event's `format` file). No I/O here besides
reading header_page.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from ..errors import UnsupportedError

EVENT = "inet_sock_set_state"
TYPE_PADDING, TYPE_TIME_EXTEND, TYPE_TIME_STAMP = 29, 30, 31
TS_SHIFT = 27
COMMIT_SIZE_MASK = (1 << 27) - 1  # the other commit bits flag missed events
# common_flags: the event fired in interrupt context, so common_pid is whoever
# the interrupt happened to land on (TRACE_FLAG_HARDIRQ | TRACE_FLAG_SOFTIRQ).
IRQ_FLAGS = 0x08 | 0x10

U32 = struct.Struct("<I")
_FIELD = re.compile(r"field:(?P<decl>[^;]+);\s*offset:(?P<off>\d+);\s*size:(?P<size>\d+);"
                    r"\s*signed:(?P<signed>\d+);")


@dataclass(frozen=True, slots=True)
class StateChange:
    """One inet_sock_set_state event, decoded (addresses still raw bytes)."""

    ts_ns: int  # CLOCK_MONOTONIC, nanoseconds (the instance uses trace_clock mono)
    cpu: int
    task_pid: int  # the task on the CPU: the owner only in process context
    in_irq: bool  # fired in (soft)irq context: task_pid is unrelated to the socket
    skaddr: int  # the kernel's struct sock pointer: one socket while it lives
    old: int
    new: int
    family: int
    sport: int
    dport: int
    saddr: bytes  # 4 bytes for AF_INET, 16 for AF_INET6
    daddr: bytes


@dataclass(frozen=True, slots=True)
class PageLayout:
    commit_at: int
    commit_size: int
    data_at: int


def page_layout(root: str) -> PageLayout:
    """Where the commit word and the data start in a ring-buffer page."""
    with open(f"{root}/events/header_page") as f:
        fields = {_decl_name(m["decl"]): (int(m["off"]), int(m["size"]))
                  for m in _FIELD.finditer(f.read())}
    return PageLayout(fields["commit"][0], fields["commit"][1], fields["data"][0])


def _decl_name(decl: str) -> str:
    name = decl.split()[-1]
    return name.split("[", 1)[0]


class EventLayout:
    """Decodes the event's payload with one struct, built from its format file."""

    WANTED = ("common_type", "common_flags", "common_pid", "skaddr", "oldstate", "newstate",
              "sport", "dport", "family", "saddr", "daddr", "saddr_v6", "daddr_v6")

    def __init__(self, format_text: str) -> None:
        fields = {}
        for m in _FIELD.finditer(format_text):
            fields[_decl_name(m["decl"])] = (int(m["off"]), int(m["size"]), m["signed"] == "1")
        missing = [name for name in self.WANTED if name not in fields]
        if missing:
            raise UnsupportedError(f"the {EVENT} tracepoint lacks field(s) {', '.join(missing)}")
        self.event_id = int(re.search(r"^ID:\s*(\d+)", format_text, re.M)[1])
        ordered = sorted((fields[name][0], name) for name in self.WANTED)
        fmt, at = "<", 0
        for _offset, name in ordered:
            off, size, signed = fields[name]
            fmt += "x" * (off - at) + _code(name, size, signed)
            at = off + size
        self.struct = struct.Struct(fmt)
        self.order = [name for _, name in ordered]
        self.size = at

    def unpack(self, payload: bytes | memoryview) -> dict[str, object]:
        return dict(zip(self.order, self.struct.unpack_from(payload), strict=True))


def _code(name: str, size: int, signed: bool) -> str:
    if name in ("saddr", "daddr", "saddr_v6", "daddr_v6"):
        return f"{size}s"
    code = {1: "b", 2: "h", 4: "i", 8: "q"}[size]
    return code if signed else code.upper()


def iter_page(page: bytes, layout: PageLayout) -> Iterator[tuple[int, memoryview]]:
    """(timestamp, payload) of every data event in one ring-buffer page."""
    view = memoryview(page)
    ts = struct.unpack_from("<Q", page, 0)[0]
    commit = int.from_bytes(page[layout.commit_at:layout.commit_at + layout.commit_size],
                            "little")
    end = layout.data_at + (commit & COMMIT_SIZE_MASK)
    off = layout.data_at
    end = min(end, len(page))
    while off + 4 <= end:
        header = U32.unpack_from(page, off)[0]
        type_len, delta = header & 0x1F, header >> 5
        if type_len == TYPE_PADDING:
            if delta == 0:
                return  # the rest of the page is empty
            off += 4 + U32.unpack_from(page, off + 4)[0]
        elif type_len == TYPE_TIME_EXTEND:
            ts += (U32.unpack_from(page, off + 4)[0] << TS_SHIFT) | delta
            off += 8
        elif type_len == TYPE_TIME_STAMP:
            stamp = (U32.unpack_from(page, off + 4)[0] << TS_SHIFT) | delta
            ts = (ts & ~((1 << 59) - 1)) | stamp
            off += 8
        elif type_len == 0:
            length = U32.unpack_from(page, off + 4)[0]
            ts += delta
            yield ts, view[off + 8:off + 4 + length]
            off += 4 + length
        else:
            ts += delta
            yield ts, view[off + 4:off + 4 + 4 * type_len]
            off += 4 + 4 * type_len


