"""What `trace` reports: one record per state change, destroyed socket or loss.

Plain data (msgspec Structs, so `--ndjson` encodes them directly). The schema
is documented in docs/watch.md; `event` says which kind a record is.
"""

from __future__ import annotations

import msgspec

from ..model import TcpInfo

TRACE_SCHEMA = "sockdoctor.trace/1"


class EventOwner(msgspec.Struct, gc=False):
    pid: int
    fd: int | None  # None: the process is known (it closed the socket), the fd is not
    comm: str


class TraceEvent(msgspec.Struct, omit_defaults=True, gc=False, kw_only=True):
    """A state change (event="state") or a socket freed by the kernel (event="destroy")."""

    event: str
    time: float  # seconds since the epoch
    netns: str | None  # None: not known (see netns_candidates / owner_note)
    netns_inode: int | None
    family: str
    old: str | None = None  # state before (state events)
    new: str | None = None  # state after (state events); the final state (destroy)
    local_addr: str
    local_port: int
    peer_addr: str
    peer_port: int
    cookie: int | None = None
    inode: int | None = None
    owners: list[EventOwner]  # always present; [] when not known (owner_note says why)
    owner_note: str | None = None  # why owners is empty or incomplete
    prev_state_ms: float | None = None  # time spent in `old`, when trace saw it begin
    task_pid: int | None = None  # the task on the CPU, when the change ran in its context
    netns_candidates: list[str] | None = None  # the same 4-tuple lived in these namespaces
    info: TcpInfo | None = None  # destroy: the socket's last tcp_info


class LostEvent(msgspec.Struct, kw_only=True):
    """The kernel could not keep some events: never hidden from the reader."""

    event: str  # "lost"
    time: float
    source: str  # "tracefs" (ring buffer full) or "destroy" (netlink buffer overflow)
    count: int | None  # None: the kernel does not say how many (netlink overflow)
    total: int | None = None
    netns: str | None = None
    detail: str = ""
