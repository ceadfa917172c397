"""JSON and NDJSON output of `sockdoctor ls` (schema: docs/json.md).

Records are msgspec Structs rather than dicts: building and encoding a few
hundred thousand of them stays well under a second.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

import msgspec

from ..model import TIMER_NAMES, Process, Snapshot, Socket
from . import fmt

LS_SCHEMA = "sockdoctor.ls/1"


class OwnerRecord(msgspec.Struct, omit_defaults=True):
    pid: int
    fd: int
    comm: str = ""


class SocketRecord(msgspec.Struct, omit_defaults=True):
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
    timer: str = "off"
    expires_ms: int = 0
    retrans: int = 0
    age_ms: int | None = None
    owners: list[OwnerRecord] | None = None
    owner_note: str | None = None
    shutdown: int | None = None
    cgroup_id: int | None = None
    cong: str | None = None
    info: dict[str, int] | None = None
    mem: dict[str, int] | None = None


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


def record(sk: Socket, netns_name: str, processes: dict[int, Process] | None) -> SocketRecord:
    rec = SocketRecord(
        netns=netns_name, family=_FAMILY.get(sk.family, str(sk.family)),
        state=fmt.state_name(sk.state), local_addr=sk.local_addr, local_port=sk.local_port,
        peer_addr=sk.peer_addr, peer_port=sk.peer_port, recv_q=sk.recv_q, send_q=sk.send_q,
        inode=sk.inode, cookie=sk.cookie, uid=sk.uid,
        timer=TIMER_NAMES.get(sk.timer, str(sk.timer)), expires_ms=sk.expires_ms,
        retrans=sk.retrans, age_ms=sk.age_ms, shutdown=sk.shutdown, cgroup_id=sk.cgroup_id,
        cong=sk.cong, info=sk.info, mem=sk.mem,
    )
    if processes is not None:
        if sk.owners:
            rec.owners = [OwnerRecord(o.pid, o.fd, _comm(processes, o.pid)) for o in sk.owners]
        else:
            rec.owners = []
            rec.owner_note = sk.owner_note()
    return rec


def _comm(processes: dict[int, Process], pid: int) -> str:
    proc = processes.get(pid)
    return proc.comm if proc else ""


def records(snapshot: Snapshot) -> Iterator[SocketRecord]:
    names = fmt.netns_names(snapshot)
    processes = snapshot.processes if snapshot.owners_scanned else None
    for sk in snapshot.sockets:
        yield record(sk, names.get(sk.netns, str(sk.netns)), processes)


def write_json(snapshot: Snapshot, out: BinaryIO) -> None:
    doc = LsDocument(
        schema=LS_SCHEMA, created=snapshot.created, hostname=snapshot.hostname,
        kernel=snapshot.kernel,
        namespaces=[NamespaceRecord(ns.inode, ns.name, ns.kind, ns.error)
                    for ns in snapshot.namespaces],
        warnings=snapshot.warnings, count=len(snapshot.sockets),
        sockets=list(records(snapshot)),
    )
    out.write(msgspec.json.encode(doc))
    out.write(b"\n")


def write_ndjson(snapshot: Snapshot, out: BinaryIO, chunk: int = 2048) -> None:
    """One JSON object per line, written in chunks as records are built."""
    encoder = msgspec.json.Encoder()
    buf = bytearray()
    for i, rec in enumerate(records(snapshot), 1):
        encoder.encode_into(rec, buf, len(buf))
        buf += b"\n"
        if i % chunk == 0:
            out.write(buf)
            buf.clear()
    out.write(buf)
