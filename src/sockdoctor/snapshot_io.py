"""Writing and reading Snapshot files (`snapshot -o`, `--from`)."""

from __future__ import annotations

import gzip
import zlib

import msgspec

from . import jsontext, safefile
from .errors import BadSnapshotError
from .model import SCHEMA, Snapshot

_GZIP_MAGIC = b"\x1f\x8b"


def dumps(snapshot: Snapshot) -> bytes:
    return jsontext.encode(snapshot)


def loads(data: bytes, source: str = "snapshot") -> Snapshot:
    """Decode and validate; any defect is a BadSnapshotError naming the problem."""
    if data[:2] == _GZIP_MAGIC:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise BadSnapshotError(f"{source} is a damaged gzip file: {exc}") from exc
    try:
        head = msgspec.json.decode(data, type=dict)
    except msgspec.DecodeError as exc:
        raise BadSnapshotError(f"{source} is not a sockdoctor snapshot: {exc}") from exc
    schema = head.get("schema")
    if schema != SCHEMA:
        what = f"schema '{schema}'" if schema else "no schema field"
        raise BadSnapshotError(
            f"{source} is not a sockdoctor snapshot ({what}; expected '{SCHEMA}')")
    try:
        return jsontext.decode(data, Snapshot)
    except msgspec.ValidationError as exc:
        raise BadSnapshotError(f"{source} is a damaged snapshot: {exc}") from exc


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
