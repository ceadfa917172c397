"""Errors a user can cause, each with its own exit code.

The CLI turns these into one sentence on stderr and the exit code below;
anything else is an internal error and keeps its traceback.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FINDINGS = 1  # doctor: warnings; kill: some planned sockets survived
EXIT_USAGE = 2  # bad filter syntax or arguments (click uses 2 as well)
EXIT_NOT_FOUND = 3  # unknown pid, namespace, process, file
EXIT_PERMISSION = 4  # not allowed (needs root or CAP_NET_ADMIN / ptrace rights)
EXIT_UNSUPPORTED = 5  # the running kernel lacks a needed feature
EXIT_BAD_INPUT = 6  # corrupt or foreign snapshot file
EXIT_WRITE = 7  # an output file that must not or cannot be written (symlink, disk full, ...)
EXIT_INTERRUPTED = 130


class SockdoctorError(Exception):
    """Base class: a problem the user can understand and act on."""

    exit_code = EXIT_FINDINGS


class UsageError(SockdoctorError):
    exit_code = EXIT_USAGE


class FilterSyntaxError(UsageError):
    """A filter expression that does not parse; points at the bad token."""

    def __init__(self, message: str, text: str = "", position: int = -1) -> None:
        self.text = text
        self.position = position
        if text and position >= 0:
            caret = " " * position + "^"
            message = f"{message}\n  {text}\n  {caret}"
        super().__init__(message)


class NotFoundError(SockdoctorError):
    exit_code = EXIT_NOT_FOUND


class PermissionDeniedError(SockdoctorError):
    exit_code = EXIT_PERMISSION


class UnsupportedError(SockdoctorError):
    exit_code = EXIT_UNSUPPORTED


class BadSnapshotError(SockdoctorError):
    exit_code = EXIT_BAD_INPUT


class WriteError(SockdoctorError):
    """An output path sockdoctor refuses (symlink, FIFO, device) or cannot fill (disk full)."""

    exit_code = EXIT_WRITE
