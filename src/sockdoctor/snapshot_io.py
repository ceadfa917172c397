"""Writing and reading Snapshot files (`snapshot -o`, `--from`).

A snapshot file is untrusted input (docs/reliability.md, "Input limits"):
a gzip stream is inflated a chunk at a time up to a cap, so a bomb costs
bounded memory; nesting deeper than the schema's is refused (msgspec raises
RecursionError at Python's recursion limit, long before the stack is in
danger); every field is checked against its range (model.py) and every
address must be IPv4 or IPv6 text before anything uses it.
"""

from __future__ import annotations

import gzip
import io
import socket
import zlib

import msgspec

from . import jsontext, safefile
from .errors import BadSnapshotError
from .model import SCHEMA, Snapshot

_GZIP_MAGIC = b"\x1f\x8b"
# Inflated size allowed: 100 times the compressed size (a real snapshot
# compresses 8-30 times), at least 64 MiB, never more than 2 GiB.
INFLATE_RATIO = 100
INFLATE_FLOOR = 64 << 20
INFLATE_MAX = 2 << 30
_CHUNK = 1 << 20


class _Head(msgspec.Struct):
    """Only the schema field: the rest of the document is skipped, not built."""

    schema: object = None


def dumps(snapshot: Snapshot) -> bytes:
    return jsontext.encode(snapshot)


def loads(data: bytes, source: str = "snapshot") -> Snapshot:
    """Decode and validate; any defect is a BadSnapshotError naming the problem."""
    if data[:2] == _GZIP_MAGIC:
        data = inflate(data, source)
    try:
        snap = _decode(data, source)
    except RecursionError:
        raise BadSnapshotError(f"corrupt snapshot: {source} is nested deeper than a "
                               "snapshot can be") from None
    check_addresses(snap, source)
    return snap


def _decode(data: bytes, source: str) -> Snapshot:
    try:
        schema = msgspec.json.decode(data, type=_Head).schema
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise BadSnapshotError(f"{source} is not a sockdoctor snapshot: {exc}") from None
    if schema != SCHEMA:
        what = f"schema '{jsontext.readable(str(schema))[:80]}'" if schema else "no schema field"
        raise BadSnapshotError(
            f"{source} is not a sockdoctor snapshot ({what}; expected '{SCHEMA}')")
    try:
        return jsontext.decode(data, Snapshot)
    except msgspec.ValidationError as exc:
        raise BadSnapshotError(f"corrupt snapshot: {source}: {_field_error(exc)}") from None


def _field_error(exc: msgspec.ValidationError) -> str:
    """msgspec's 'Expected `int` <= 65535 - at `$.sockets[0].local_port`', reordered."""
    text = str(exc)
    problem, sep, where = text.rpartition(" - at ")
    if not sep:
        return text
    problem = problem.replace("`", "")
    problem = problem[:1].lower() + problem[1:]
    field = where.replace("`", "").removeprefix("$").lstrip(".")
    return problem if not field or "..." in field else f"{field}: {problem}"


def inflate(data: bytes, source: str = "snapshot") -> bytes:
    """A gzip stream inflated a chunk at a time; refused past the cap (module doc)."""
    cap = min(INFLATE_MAX, max(INFLATE_FLOOR, INFLATE_RATIO * len(data)))
    chunks: list[bytes] = []
    total = 0
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as stream:
            while chunk := stream.read(_CHUNK):
                total += len(chunk)
                if total > cap:
                    raise BadSnapshotError(
                        f"corrupt snapshot: {source} inflates to more than {cap >> 20} MiB, "
                        "the most a gzip file of its size may (docs/json.md): a gzip bomb "
                        "or a damaged file")
                chunks.append(chunk)
    except (OSError, EOFError, zlib.error) as exc:
        raise BadSnapshotError(f"{source} is a damaged gzip file: {exc}") from None
    return b"".join(chunks)


def check_addresses(snap: Snapshot, source: str = "snapshot") -> None:
    """Every address is IPv4/IPv6 text of its socket's family (each distinct one parsed once)."""
    good: set[tuple[int, str]] = set()
    for i, sk in enumerate(snap.sockets):
        for field in ("local_addr", "peer_addr"):
            addr = getattr(sk, field)
            if (sk.family, addr) not in good:
                _address(sk.family, addr, f"sockets[{i}].{field}", source)
                good.add((sk.family, addr))
    for i, dead in enumerate(snap.dead_fds):
        for field in ("local_addr", "peer_addr"):
            addr = getattr(dead, field)
            if addr:
                family = socket.AF_INET6 if ":" in addr else socket.AF_INET
                _address(family, addr, f"dead_fds[{i}].{field}", source)


def _address(family: int, addr: str, field: str, source: str) -> None:
    try:
        socket.inet_pton(family, addr)
    except (OSError, ValueError):
        kind = "IPv6" if family == socket.AF_INET6 else "IPv4"
        shown = jsontext.readable(addr)[:60].encode("unicode_escape").decode("ascii")
        raise BadSnapshotError(f"corrupt snapshot: {source}: {field} is not an {kind} "
                               f"address: '{shown}'") from None


def load(path: str) -> Snapshot:
    """A snapshot file ("-": stdin), gzip-compressed or not."""
    data = safefile.read(path, "snapshot file")
    return loads(data, "stdin" if path == safefile.STDIO else path)


def save(snapshot: Snapshot, path: str) -> None:
    """Write atomically to a regular file or a new path ("-": stdout).

    gzip-compressed when the name ends in .gz; symlinks, FIFOs, devices and
    directories are refused (safefile.py says why).
    """
    data = dumps(snapshot)
    if path.endswith(".gz"):
        data = gzip.compress(data, compresslevel=5)
    safefile.write(path, data, "the snapshot")
