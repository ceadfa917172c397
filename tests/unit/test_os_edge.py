"""linux/ raises sockdoctor's errors at the OS edge: callers never read an errno."""

from __future__ import annotations

import errno
import socket
from pathlib import Path

import pytest

from sockdoctor import inventory
from sockdoctor.errors import (
    EXIT_NOT_FOUND,
    NotFoundError,
    PermissionDeniedError,
    SockdoctorError,
    UnsupportedError,
)
from sockdoctor.linux import netns, sockdiag
from sockdoctor.linux.oserrors import os_edge, user_error


@pytest.mark.parametrize(("exc", "kind", "text"), [
    (PermissionError(errno.EACCES, "Permission denied"), PermissionDeniedError,
     "permission denied (needs root)"),
    (OSError(errno.EPERM, "Operation not permitted"), PermissionDeniedError, "needs root"),
    (FileNotFoundError(errno.ENOENT, "No such file or directory"), NotFoundError,
     "no such file or directory (it went away)"),
    (OSError(errno.EOPNOTSUPP, "Operation not supported"), UnsupportedError, "lacks it"),
    (OSError(errno.EMFILE, "Too many open files"), SockdoctorError, "too many open files"),
])
def test_each_os_error_has_one_user_error(exc: OSError, kind: type, text: str) -> None:
    error = user_error(exc)
    assert type(error) is kind and text in str(error)
    assert error.__cause__ is exc
    with pytest.raises(kind) as raised, os_edge():
        raise exc
    assert raised.value.__cause__ is exc


def gone(tmp_path: Path) -> netns.NsRef:
    return netns.NsRef(netns.current_inode() + 1, "vanished", "named", str(tmp_path / "nope"))


def test_entering_a_namespace_fails_as_sockdoctor_error(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError):
        netns.run_in(gone(tmp_path), lambda: 1)
    [result] = netns.run_many([(gone(tmp_path), lambda: 1)])
    assert isinstance(result, NotFoundError)


def test_what_the_job_raises_stays_its_own(tmp_path: Path) -> None:
    def refused() -> None:
        raise ConnectionRefusedError(errno.ECONNREFUSED, "refused")

    here = netns.NsRef(netns.current_inode(), "here", "current", "/proc/thread-self/ns/net")
    with pytest.raises(ConnectionRefusedError):
        netns.run_in(here, refused)
    assert isinstance(netns.run_many([(here, refused)])[0], ConnectionRefusedError)


def test_the_scan_skips_a_vanished_namespace_and_names_a_lone_one(tmp_path: Path) -> None:
    here = netns.NsRef(netns.current_inode(), "here", "current", "/proc/thread-self/ns/net")
    opts = sockdiag.DumpOptions(states=1 << 10)
    warnings: list[str] = []
    records, _ = inventory.dump_namespaces([here, gone(tmp_path)], opts, (socket.AF_INET,),
                                           warnings)
    assert [r.name for r in records] == ["here"] and not warnings
    with pytest.raises(NotFoundError, match="cannot scan network namespace vanished: ") as err:
        inventory.dump_namespaces([gone(tmp_path)], opts, (socket.AF_INET,), [])
    assert err.value.exit_code == EXIT_NOT_FOUND


def test_a_dump_the_kernel_keeps_interrupting_is_a_user_error() -> None:
    assert isinstance(sockdiag.DumpInterrupted(), SockdoctorError)
    assert "try again" in str(sockdiag.DumpInterrupted())
