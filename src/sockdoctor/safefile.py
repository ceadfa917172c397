"""Files written and read on the user's behalf (`snapshot -o`, `--from`).

sockdoctor runs as root, so an output path is a weapon for whoever can plant
something there: a symlink to /etc/shadow, a FIFO that blocks us, a device
node. Output therefore goes only to a regular file or a new path, and
atomically: the data is written to a temporary file in the same directory,
flushed to disk, and then put in place in one step (a new path with link(2),
which fails if something appeared meanwhile; an existing regular file with
rename(2), which replaces the directory entry and never writes into the
inode a symlink or hard link points at). A full disk, a read-only file
system or Ctrl-C leaves the old file, or nothing, never half a file.
"-" means stdout for writing and stdin for reading.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
import tempfile

from .errors import (
    BadSnapshotError,
    NotFoundError,
    PermissionDeniedError,
    SockdoctorError,
    UsageError,
    WriteError,
)

STDIO = "-"

_KINDS = (
    (stat.S_ISLNK, "a symbolic link: sockdoctor does not write through links (give the "
                   "real path, or remove the link)"),
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe): write to `-` and redirect stdout instead"),
    (stat.S_ISCHR, "a device: write to `-` and redirect stdout instead"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)
# Link(2) is refused by file systems without hard links; rename(2) then does.
_NO_LINK = {errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK}


def write(path: str, data: bytes, what: str = "the snapshot", mode: int = 0o600) -> None:
    """Put `data` at `path` in one piece, or raise a one-sentence error and leave no trace.

    A new file gets `mode` (snapshots hold command lines: owner only); a file
    that is replaced keeps the mode it had.
    """
    if path == STDIO:
        _write_stdout(data, what)
        return
    existing = _target(path, what)
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp",
                                   dir=directory)
    except OSError as exc:
        raise _error(exc, path, what, existing) from None
    try:
        try:
            os.fchmod(fd, existing.st_mode & 0o7777 if existing else mode)
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        _put_in_place(tmp, path, existing, what)
    except BaseException as exc:
        _unlink_quietly(tmp)
        if isinstance(exc, OSError):
            raise _error(exc, path, what, existing) from None
        raise


def check(path: str, what: str = "the snapshot") -> None:
    """Refuse a target `write` would refuse, before the work that produces the data."""
    if path == STDIO:
        return
    _target(path, what)
    directory = os.path.dirname(os.path.abspath(path))
    try:
        if not stat.S_ISDIR(os.stat(directory).st_mode):
            raise NotADirectoryError(errno.ENOTDIR, "not a directory")
    except (FileNotFoundError, NotADirectoryError):
        raise _error(OSError(errno.ENOENT, "missing"), path, what, None) from None
    except OSError as exc:
        raise _error(exc, path, what, None) from None
    if os.statvfs(directory).f_flag & os.ST_RDONLY:
        raise _error(OSError(errno.EROFS, "read-only"), path, what, None)
    if not os.access(directory, os.W_OK):
        raise _error(OSError(errno.EACCES, "denied"), path, what, None)


def read(path: str, what: str = "snapshot file") -> bytes:
    """The bytes of `path` ("-": stdin); a regular file, a pipe or stdin, nothing else."""
    if path == STDIO:
        if sys.stdin.isatty():
            raise UsageError(f"`-` reads the {what} from stdin, but stdin is a terminal: "
                             "pipe one in (... | sockdoctor ... --from -)")
        return sys.stdin.buffer.read()
    try:
        st = os.stat(path)
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISFIFO(st.st_mode)):
            kind = next((text for test, text in _KINDS if test(st.st_mode)), "not a file")
            raise BadSnapshotError(f"{path} is {kind.split(':')[0]}, not a {what}")
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise NotFoundError(f"no such {what}: {path}") from None
    except PermissionError:
        raise PermissionDeniedError(f"cannot read {path}: permission denied") from None
    except OSError as exc:
        raise SockdoctorError(f"cannot read {path}: {exc.strerror or exc}") from None


def _target(path: str, what: str) -> os.stat_result | None:
    """The regular file `path` is now, None for a new path; anything else is refused."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise _error(exc, path, what, None) from None
    if stat.S_ISREG(st.st_mode):
        return st
    kind = next((text for test, text in _KINDS if test(st.st_mode)), "not a regular file")
    raise WriteError(f"not writing {what} to {path}: it is {kind}")


def _put_in_place(tmp: str, path: str, existing: os.stat_result | None, what: str) -> None:
    if existing is not None:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise WriteError(f"not writing {what} to {path}: something was created there while "
                         "sockdoctor wrote it; run again") from None
    except OSError as exc:
        if exc.errno not in _NO_LINK:
            raise
        os.replace(tmp, path)
        return
    os.unlink(tmp)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _write_stdout(data: bytes, what: str) -> None:
    out = sys.stdout.buffer
    try:
        out.write(data)
        out.flush()
    except BrokenPipeError:
        raise
    except OSError as exc:
        raise WriteError(f"cannot write {what} to stdout: {_reason(exc)}") from None


def _error(exc: OSError, path: str, what: str,
           existing: os.stat_result | None) -> SockdoctorError:
    """One sentence for a failed write; the old file, if any, is untouched."""
    kept = "; the existing file is unchanged" if existing else "; nothing was written"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return PermissionDeniedError(f"cannot write {what} to {path}: permission denied{kept}")
    if exc.errno == errno.ENOENT:  # an output path: exit 7 as README's table says
        return WriteError(f"cannot write {what} to {path}: no such directory "
                             f"{os.path.dirname(os.path.abspath(path))}")
    return WriteError(f"cannot write {what} to {path}: {_reason(exc)}{kept}")


def _reason(exc: OSError) -> str:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "no space left on the device (disk full or quota reached)"
    if exc.errno == errno.EROFS:
        return "the file system is mounted read-only"
    return (exc.strerror or str(exc)).lower()


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
