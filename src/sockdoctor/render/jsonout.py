"""JSON and NDJSON output of `sockdoctor ls` (schema: docs/json.md).

Records are msgspec Structs rather than dicts: building and encoding a few
hundred thousand of them stays well under a second. Records without tcp_info
(ls --json, ls -p --json) are written by the C extension when it is built
(_fast.json_records): the same bytes, without a Python object per record.
"""

from __future__ import annotations

from typing import BinaryIO

import msgspec

from .. import jsontext
from ..linux.native import fast
from ..linux.tcpinfo import of as tcp_info
from ..model import SS_COLUMN_NAMES, TIMER_NAMES, SkMemInfo, Snapshot, Socket, TcpInfo
from ..sides import Sides
from . import fmt

LS_SCHEMA = "sockdoctor.ls/2"  # 2: comm always a string, comm_bytes, side, service


class OwnerRecord(msgspec.Struct, gc=False):
    pid: int
    fd: int
    comm: str  # "" when the process exited before we read its name; escaped if not UTF-8


class OwnerRecordBytes(OwnerRecord, gc=False):
    """An owner whose name is not UTF-8: also its exact bytes (a rare record type, so
    the common one stays without optional fields, the fastest to encode)."""

    comm_bytes: list[int]


# Fields without a default are in every record; the others only when the scan
# collected them (owners with -p, age where the kernel keeps it, ...).
class SocketRecord(msgspec.Struct, omit_defaults=True, gc=False):
    netns: str
    family: str
    state: str
    local_addr: str
    local_port: int
    peer_addr: str
    peer_port: int
    recv_q: int
    send_q: int
    inode: int
    cookie: int
    uid: int
    timer: str
    expires_ms: int
    retrans: int
    side: str  # server or client: the exporter's rule (sides.py)
    service: int  # our listening port (server) or the peer's port (client)
    age_ms: int | None = None
    owners: list[OwnerRecord] | None = None
    owner_note: str | None = None
    shutdown: int | None = None
    cgroup_id: int | None = None
    cong: str | None = None
    info: TcpInfo | None = None
    mem: SkMemInfo | None = None


class NamespaceRecord(msgspec.Struct, omit_defaults=True):
    inode: int
    name: str
    kind: str
    error: str = ""


class LsDocument(msgspec.Struct):
    schema: str
    created: float
    hostname: str
    kernel: str
    namespaces: list[NamespaceRecord]
    warnings: list[str]
    count: int
    sockets: list[SocketRecord]


_FAMILY = {2: "ipv4", 10: "ipv6"}


def records(snapshot: Snapshot, sockets: list[Socket] | None = None,
            sides: Sides | None = None) -> list[SocketRecord]:
    """One output record per socket, built positionally (this is the hot loop of --json).

    `sides`: the snapshot's Sides, built once when records are made in chunks.
    """
    sockets = snapshot.sockets if sockets is None else sockets
    clients = (sides or Sides(snapshot)).clients(sockets)
    names = fmt.netns_names(snapshot)
    state_names = SS_COLUMN_NAMES
    timers = TIMER_NAMES
    family = _FAMILY
    out = [
        SocketRecord(
            names.get(sk.netns) or str(sk.netns), family.get(sk.family, "?"),
            state_names.get(sk.state, "?"), sk.local_addr, sk.local_port, sk.peer_addr,
            sk.peer_port, sk.recv_q, sk.send_q, sk.inode, sk.cookie, sk.uid,
            timers.get(sk.timer, "?"), sk.expires_ms, sk.retrans,
            "client" if client else "server", sk.peer_port if client else sk.local_port,
            sk.age_ms, None, None, sk.shutdown, sk.cgroup_id, sk.cong, tcp_info(sk), sk.mem)
        for sk, client in zip(sockets, clients, strict=True)
    ]
    if snapshot.owners_scanned:
        _add_owners(snapshot, sockets, out)
    return out


def _add_owners(snapshot: Snapshot, sockets: list[Socket], out: list[SocketRecord]) -> None:
    comms = {pid: proc.comm for pid, proc in snapshot.processes.items()}
    exact = {pid: _comm(comm) for pid, comm in comms.items() if _surrogates(comm)}
    comms.update((pid, shown) for pid, (shown, _raw) in exact.items())
    for sk, rec in zip(sockets, out, strict=True):
        if sk.owners:
            rec.owners = [OwnerRecord(o.pid, o.fd, comms.get(o.pid, "")) for o in sk.owners]
            if exact:  # rare: a name that is not UTF-8 also gets its bytes
                rec.owners = [OwnerRecordBytes(o.pid, o.fd, *exact[o.pid])
                              if o.pid in exact else o for o in rec.owners]
        else:
            rec.owners = []
            rec.owner_note = sk.owner_note()


def _surrogates(text: str) -> bool:
    """Was this name read from bytes that are not UTF-8 (surrogateescape)?"""
    return not isinstance(jsontext.exact(text), str)


def _comm(comm: str) -> tuple[str, list[int]]:
    """A name that is not UTF-8 as JSON: escaped as the tables print it (\\xff), and its
    exact bytes. (A UTF-8 name is itself: JSON escapes its control characters.)"""
    return fmt.untrusted(comm), jsontext.exact(comm)


def write_json(snapshot: Snapshot, out: BinaryIO, chunk: int = 4096) -> None:
    """One JSON document, written a chunk of sockets at a time.

    The sockets list comes last in the document, so everything before it is
    encoded once and the records are appended in pieces: the whole document
    never has to exist in memory at once (it is hundreds of megabytes with -i
    on a busy host).
    """
    encoder = msgspec.json.Encoder()
    doc = LsDocument(
        schema=LS_SCHEMA, created=snapshot.created, hostname=snapshot.hostname,
        kernel=snapshot.kernel,
        namespaces=[NamespaceRecord(ns.inode, ns.name, ns.kind, ns.error)
                    for ns in snapshot.namespaces],
        warnings=snapshot.warnings, count=len(snapshot.sockets), sockets=[],
    )
    head = jsontext.encode(doc, encoder)
    out.write(head[:-2])  # drop the closing "]}" of the empty sockets list
    socks, sides, fast_args = snapshot.sockets, Sides(snapshot), _fast_args(snapshot)
    for start in range(0, len(socks), chunk):
        part = socks[start:start + chunk]
        body = _fast_records(part, sides, fast_args, b",")
        if body is not None:
            body = body[:-1]  # the separator after the last record
        else:
            body = jsontext.encode(records(snapshot, part, sides), encoder)[1:-1]
        out.write(body if start == 0 else b"," + body)
    out.write(b"]}\n")


def write_ndjson(snapshot: Snapshot, out: BinaryIO, chunk: int = 4096) -> None:
    """One JSON object per line, built and written a chunk at a time."""
    encoder = msgspec.json.Encoder()
    socks, sides, fast_args = snapshot.sockets, Sides(snapshot), _fast_args(snapshot)
    for start in range(0, len(socks), chunk):
        part = socks[start:start + chunk]
        body = _fast_records(part, sides, fast_args, b"\n")
        out.write(body if body is not None
                  else jsontext.encode_lines(records(snapshot, part, sides), encoder))


def _fast_args(snapshot: Snapshot) -> tuple[object, ...] | None:
    """What the C writer needs once per document, or None: records() does it all (no C
    extension, or a listing with tcp_info or memory, -i -m: every chunk would decline)."""
    first = snapshot.sockets[0] if snapshot.sockets else None
    if fast is None or (first is not None and (first.info is not None or first.mem is not None
                                               or first.info_blob is not None)):
        return None
    comms = ({pid: proc.comm for pid, proc in snapshot.processes.items()}
             if snapshot.owners_scanned else None)
    return (fmt.netns_names(snapshot), SS_COLUMN_NAMES, TIMER_NAMES, comms)


def _fast_records(part: list[Socket], sides: Sides, fast_args: tuple[object, ...] | None,
                  sep: bytes) -> bytes | None:
    """records() of these sockets as msgspec encodes them, each followed by `sep`, written
    by the C extension; None when a record has what only msgspec writes here (tcp_info,
    memory, congestion, text that JSON must escape): records() then does the chunk."""
    if fast_args is None:
        return None
    names, states, timers, comms = fast_args
    return fast.json_records(part, sides.clients(part), names, states, timers, comms, sep)
