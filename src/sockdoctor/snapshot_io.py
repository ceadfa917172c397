"""Writing and reading Snapshot files (`snapshot -o`, `--from`)."""

from __future__ import annotations

import gzip
import os
import tempfile
import zlib

import msgspec

from .errors import BadSnapshotError, NotFoundError, PermissionDeniedError, UsageError
from .model import SCHEMA, Snapshot

_GZIP_MAGIC = b"\x1f\x8b"


def dumps(snapshot: Snapshot) -> bytes:
    return msgspec.json.encode(snapshot)


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
        return msgspec.json.decode(data, type=Snapshot)
    except msgspec.ValidationError as exc:
        raise BadSnapshotError(f"{source} is a damaged snapshot: {exc}") from exc


def load(path: str) -> Snapshot:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError as exc:
        raise NotFoundError(f"no such snapshot file: {path}") from exc
    except PermissionError as exc:
        raise PermissionDeniedError(f"cannot read {path}: permission denied") from exc
    except IsADirectoryError as exc:
        raise BadSnapshotError(f"{path} is a directory, not a snapshot file") from exc
    return loads(data, path)


def save(snapshot: Snapshot, path: str) -> None:
    """Write atomically (temp file + rename), gzip-compressed when the name ends in .gz."""
    if os.path.isdir(path):
        raise UsageError(f"cannot write the snapshot to {path}: it is a directory")
    data = dumps(snapshot)
    if path.endswith(".gz"):
        data = gzip.compress(data, compresslevel=5)
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=".sockdoctor-", dir=directory)
    except FileNotFoundError as exc:
        raise NotFoundError(f"no such directory: {directory}") from exc
    except PermissionError as exc:
        raise PermissionDeniedError(f"cannot write in {directory}: permission denied") from exc
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
