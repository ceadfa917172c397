"""The optional C fast path for the hot loops (sockdoctor._fast), if it is in use.

sockdiag.py and procfs.py hold the reference implementation in Python and
call the C one instead when `fast` is not None: the extension was built at
install time (it needs a C compiler; without one the install still works)
and neither SOCKDOCTOR_PURE=1 nor SOCKDOCTOR_ENGINE=pure is set. Both give
identical results; the tests compare them.
"""

from __future__ import annotations

import os
from types import ModuleType

# The build this Python code expects (FAST_ABI in _fast.c). A stale build, e.g. an
# in-place one older than the sources, is not used: it could misread new requests.
ABI = 4
_stale = False


def pure_requested() -> bool:
    """SOCKDOCTOR_PURE=1 or SOCKDOCTOR_ENGINE=pure: no compiled code at all."""
    engine = os.environ.get("SOCKDOCTOR_ENGINE", "").strip().lower()
    return engine == "pure" or (engine not in ("bpf", "c")
                                and os.environ.get("SOCKDOCTOR_PURE", "") not in ("", "0"))


def _load() -> ModuleType | None:
    global _stale
    if pure_requested():
        return None
    try:
        from .. import _fast
    except ImportError:
        return None
    if getattr(_fast, "ABI", None) != ABI:
        _stale = True
        return None
    from ..model import SkMemInfo, Socket, TcpInfo

    _fast.bind(Socket, SkMemInfo, TcpInfo)
    return _fast


fast = _load()


def describe() -> str:
    """One line for `sockdoctor --version`: which implementation the hot loops use."""
    if fast is not None:
        return "fast path: C extension (sockdoctor._fast)"
    if pure_requested():
        return "fast path: off (SOCKDOCTOR_PURE or SOCKDOCTOR_ENGINE=pure), pure Python in use"
    if _stale:
        return ("fast path: off (sockdoctor._fast is an older build than this code: "
                "reinstall sockdoctor), pure Python in use")
    return ("fast path: not installed (sockdoctor._fast was not built: no C compiler at "
            "install time?), pure Python in use")


def never_free(obj: object) -> None:
    """Let the process end without freeing `obj`: freeing a few hundred thousand
    sockets, owners and numbers one by one costs 0.05-0.1 s (10 % of `ls -p --json`
    at 144k) that the kernel does for nothing when the process exits. One
    reference more and Python never frees it, even when it finalizes."""
    import ctypes

    ctypes.pythonapi.Py_IncRef(ctypes.py_object(obj))
