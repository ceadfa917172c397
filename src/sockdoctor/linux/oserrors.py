"""The OS edge's one translation: an OSError becomes sockdoctor's own error, once.

As psutil's `wrap_exceptions`: code above linux/ catches the SockdoctorError
family (errors.py) and never reads an errno. The message says what went
wrong, briefly; the caller adds where ("network namespace X: ..."). The
OSError stays reachable as the new error's __cause__.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import contextmanager

from ..errors import NotFoundError, PermissionDeniedError, SockdoctorError, UnsupportedError

_DENIED = frozenset({errno.EPERM, errno.EACCES})
_GONE = frozenset({errno.ENOENT, errno.ESRCH})
_UNSUPPORTED = frozenset({errno.EOPNOTSUPP, errno.ENOSYS, errno.EPROTONOSUPPORT,
                          errno.EAFNOSUPPORT})


def user_error(exc: OSError) -> SockdoctorError:
    """The error a user understands for an OSError from the kernel or /proc."""
    code = exc.errno
    reason = (exc.strerror or str(exc) or exc.__class__.__name__).lower()
    if isinstance(exc, PermissionError) or code in _DENIED:
        error: SockdoctorError = PermissionDeniedError("permission denied (needs root)")
    elif isinstance(exc, FileNotFoundError | ProcessLookupError) or code in _GONE:
        error = NotFoundError(f"{reason} (it went away)")
    elif code in _UNSUPPORTED:
        error = UnsupportedError(f"{reason} (this kernel lacks it)")
    else:
        error = SockdoctorError(reason)
    error.__cause__ = exc
    return error


@contextmanager
def os_edge() -> Iterator[None]:
    """Run a block whose OSError leaves as the matching SockdoctorError."""
    try:
        yield
    except OSError as exc:
        raise user_error(exc) from exc
