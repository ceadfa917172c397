"""The audit log: one JSON line per action, appended, never rewritten."""

from __future__ import annotations

import getpass
import os
import time
from typing import Any

import msgspec

from ..errors import PermissionDeniedError

DEFAULT_PATH = "/var/log/sockdoctor/audit.jsonl"


class AuditLog:
    """Opened before anything is done, so an unwritable log stops the kill up front."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self._file = None
        if path is None:
            return
        try:
            directory = os.path.dirname(os.path.abspath(path))
            os.makedirs(directory, mode=0o750, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            self._file = os.fdopen(fd, "ab")
        except OSError as exc:
            raise PermissionDeniedError(
                f"cannot write the audit log {path} ({exc.strerror}); run as root or "
                "choose another file with --audit-log") from exc
        self.user = _user()

    def write(self, entry: dict[str, Any]) -> None:
        if self._file is None:
            return
        record = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "user": self.user, **entry}
        self._file.write(msgspec.json.encode(record) + b"\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _user() -> str:
    sudo = os.environ.get("SUDO_USER")
    try:
        me = getpass.getuser()
    except (KeyError, OSError):
        me = str(os.getuid())
    return f"{me} (via sudo from {sudo})" if sudo and sudo != me else me
