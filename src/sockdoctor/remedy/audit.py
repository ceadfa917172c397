"""The audit log: JSON lines, appended as things happen, never rewritten.

Per acted-on socket there is first an `intent` line, on disk (written and
fsynced, once per batch) before anything is done to it: no action without
its record, even if the power goes or sockdoctor is killed mid-batch. Then an
`act` line with what the action did, written right after its batch and
before anything is verified, and a `verify` line with what became of it. An
interrupted run ends with an `interrupted` line that counts what was ended,
left and not tried.

Each write is whole lines in one write(2) on a descriptor opened with
O_APPEND, under an exclusive flock(2) shared by every sockdoctor writing the
file, so lines of concurrent runs never mix. A write that fails half-way
(disk full) is cut back to the length before it, and a file that does not
end in a newline (a crash of something else) gets one first: the next
append is always a whole line.

The file is opened without following a symbolic link planted in its place
(O_NOFOLLOW) and must be a regular file: the default path is in a directory
other users may be able to prepare.
"""

from __future__ import annotations

import errno
import fcntl
import getpass
import os
import stat
import time
from collections.abc import Iterable
from typing import Any

import msgspec

from .. import jsontext
from ..errors import PermissionDeniedError, SockdoctorError, WriteError
from ..model import SS_COLUMN_NAMES
from .steps import PlanItem

DEFAULT_PATH = "/var/log/sockdoctor/audit.jsonl"
# Paths refused for what is there, whoever we are (O_NOFOLLOW: ELOOP; a FIFO without
# a reader: ENXIO).
_REFUSED = {errno.ELOOP: "a symbolic link", errno.EISDIR: "a directory",
            errno.ENXIO: "a FIFO, a device or a socket"}
_FLAGS = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


class AuditLog:
    """Opened before anything is done, so an unwritable log stops a kill up front."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.fd = -1
        self.error = ""  # set when a write failed: the caller stops acting
        self.user = _user()
        if path is not None:
            self.fd = _open(path)

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def write_many(self, entries: Iterable[dict[str, Any]], *, sync: bool = False) -> bool:
        """Append the entries as whole lines in one write (fsynced if `sync`);
        False (and .error set) if that failed: then nothing of it is left in the file."""
        if self.fd < 0 or self.error:
            return not self.error
        head = self._head()
        return self._append(b"".join([head + jsontext.encode(e)[1:] + b"\n" for e in entries]),
                            sync)

    def write_event(self, event: str, lines: Iterable[tuple[bytes, bytes]], *,
                    sync: bool = False) -> bool:
        """Like write_many, for lines about items: `event`, then each (identity_json(item),
        fields from a FieldCache). Spliced from bytes made once: 9,000 lines cost little
        more than their copy (a dict per line cost 10x more)."""
        if self.fd < 0 or self.error:
            return not self.error
        start = self._head() + b'"event":"' + event.encode() + b'",'
        return self._append(b"".join([start + ident + rest + b"\n" for ident, rest in lines]),
                            sync)

    def _head(self) -> bytes:
        return jsontext.encode({"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                "user": self.user})[:-1] + b","

    def _append(self, data: bytes, sync: bool) -> bool:
        if not data:
            return True
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX)
            try:
                _append_whole(self.fd, data, sync)
            finally:
                fcntl.flock(self.fd, fcntl.LOCK_UN)
        except OSError as exc:
            self.error = f"writing the audit log {self.path} failed ({exc.strerror})"
            return False
        return True

    def write(self, entry: dict[str, Any]) -> bool:
        return self.write_many([entry])

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _append_whole(fd: int, data: bytes, sync: bool) -> None:
    """Append `data` (whole lines) or nothing: a partial write is cut back off."""
    size = os.fstat(fd).st_size
    if size and os.pread(fd, 1, size - 1) != b"\n":
        data = b"\n" + data  # someone's partial last line: ours start on a line of their own
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if sync:
            os.fsync(fd)
    except OSError:
        try:
            os.ftruncate(fd, size)
        except OSError:
            pass  # nothing more we can do; the next append starts with a newline
        raise


def _open(path: str) -> int:
    """Exit 4 when we may not write there, 7 when the path must not be written (README)."""
    directory = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(directory, mode=0o750, exist_ok=True)
    except FileExistsError as exc:  # something that is not a directory is in the way
        raise WriteError(f"cannot write the audit log {path}: {exc.filename} is not a "
                         "directory (choose another file with --audit-log)") from exc
    except OSError as exc:
        raise _refusal(path, exc) from exc
    try:
        fd = os.open(path, _FLAGS, 0o640)
    except OSError as exc:
        raise _refusal(path, exc) from exc
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise WriteError(f"refusing to write the audit log {path}: it is not a regular file "
                         "(remove it, or choose another file with --audit-log)")
    return fd


def _refusal(path: str, exc: OSError) -> SockdoctorError:
    if exc.errno in (errno.EACCES, errno.EPERM) and os.geteuid() != 0:
        return PermissionDeniedError(
            f"cannot write the audit log {path} ({exc.strerror}); run as root or choose "
            "another file with --audit-log")
    if exc.errno in _REFUSED:
        return WriteError(f"refusing to write the audit log {path}: it is "
                          f"{_REFUSED[exc.errno]} (remove it, or choose another file with "
                          "--audit-log)")
    # as root, EACCES/EPERM come from an immutable file or a security module
    return WriteError(f"cannot write the audit log {path} ({exc.strerror}); choose another "
                      "file with --audit-log")


def _user() -> str:
    sudo = os.environ.get("SUDO_USER")
    try:
        me = getpass.getuser()
    except (KeyError, OSError):
        me = str(os.getuid())
    return f"{me} (via sudo from {sudo})" if sudo and sudo != me else me


NO_FIELDS = b"}"  # the end of a line with nothing after the identity (an intent)


def encode_fields(fields: dict[str, Any]) -> bytes:
    """The end of a line after the identity: `,"key":value...}`, or `}`."""
    return b"," + jsontext.encode(fields)[1:] if fields else NO_FIELDS


class FieldCache:
    """The encoded ends of many lines, each distinct set of values encoded once: the
    lines of a batch mostly say the same ("done", "destroyed"), so 9,000 lines cost a
    few encodings. Called with the values of `keys`, in order; `constant` fields end
    every line (their values need not be hashable)."""

    def __init__(self, *keys: str, **constant: Any) -> None:
        self._keys, self._constant = keys, constant
        self._seen: dict[tuple[Any, ...], bytes] = {}

    def __call__(self, *values: Any) -> bytes:
        found = self._seen.get(values)
        if found is None:
            found = self._seen[values] = encode_fields(
                {**dict(zip(self._keys, values, strict=True)), **self._constant})
        return found


# The audit log spells states as the tables and JSON do (CLOSE-WAIT; before
# schema 2 of ls's JSON it wrote CLOSE_WAIT): docs/kill.md#audit-log.
_STATE_NAMES = SS_COLUMN_NAMES


def identity(item: PlanItem) -> dict[str, Any]:
    """Which socket (or dead descriptor) an entry is about, and who holds it."""
    sk = item.socket
    owner = item.owners[0] if item.owners else item.listener
    entry: dict[str, Any] = {
        "netns": item.netns_name, "netns_inode": item.netns_inode, "method": item.method,
        "pid": owner.pid if owner else None, "comm": owner.comm if owner else None,
        "fd": owner.fd if owner else None,
    }
    if sk is not None:
        entry.update(state=_STATE_NAMES.get(sk.state, str(sk.state)),
                     local=f"{sk.local_addr}:{sk.local_port}",
                     peer=f"{sk.peer_addr}:{sk.peer_port}", inode=sk.inode, cookie=sk.cookie)
    else:
        entry.update(state="dead-fd", inode=item.dead_inode)
    return entry


class _SocketIdentity(msgspec.Struct):
    """identity() of an item with a socket, as a struct: the same keys in the same order,
    encoded without building a dict per line."""

    netns: str
    netns_inode: int
    method: str
    pid: int | None
    comm: str | None
    fd: int | None
    state: str
    local: str
    peer: str
    inode: int
    cookie: int


def identity_json(item: PlanItem) -> bytes:
    """identity(item) as the inside of a JSON object (no braces), to splice into lines."""
    sk = item.socket
    if sk is None:
        return jsontext.encode(identity(item))[1:-1]
    owner = item.owners[0] if item.owners else item.listener
    return jsontext.encode(_SocketIdentity(
        item.netns_name, item.netns_inode, item.method, owner.pid if owner else None,
        owner.comm if owner else None, owner.fd if owner else None,
        _STATE_NAMES.get(sk.state, str(sk.state)), f"{sk.local_addr}:{sk.local_port}",
        f"{sk.peer_addr}:{sk.peer_port}", sk.inode, sk.cookie))[1:-1]
