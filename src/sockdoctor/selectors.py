"""What --netns and --process name, decided in one place for live hosts and snapshots.

Pure functions over anything shaped like a namespace (inode, name, kind) or
a process name: linux/netns.py resolves `--netns` on the running host with
them, query.py and doctor/scope.py on a saved snapshot, so `--netns X`
selects the same namespaces everywhere and an unknown one is the same
NotFoundError (exit 3) in every command.
"""

from __future__ import annotations

import difflib
import fnmatch
import os
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol, TypeVar

from .errors import NotFoundError, UsageError

COMM_LEN = 15  # the kernel keeps the first 15 bytes of a process name (TASK_COMM_LEN - 1)
_GLOB = re.compile(r"[*?\[]")
_CONTAINER_ID = re.compile(r"[0-9a-f]{4,64}")


class NamespaceLike(Protocol):
    @property
    def inode(self) -> int: ...
    @property
    def name(self) -> str: ...
    @property
    def kind(self) -> str: ...


N = TypeVar("N", bound=NamespaceLike)


def select_netns(namespaces: Sequence[N], wanted: str, *, own: int | None,
                 netns_of_pid: Callable[[int], int | None]) -> list[N]:
    """The namespaces `--netns wanted` names (an empty list: none of them).

    all, host, self (`own`: None where that cannot be known, in a snapshot),
    a name, an inode (or `net:[INODE]` as readlink shows it), container:ID
    (or the bare id, 4+ hex digits, a unique prefix) or a PID inside it.
    """
    wanted = wanted.strip()
    if wanted in ("", "all"):
        return list(namespaces)
    if wanted == "host":
        return [ns for ns in namespaces if ns.kind == "host"]
    if wanted in ("self", "current"):
        if own is None:
            raise UsageError("--netns self means sockdoctor's own network namespace, which a "
                             "saved snapshot does not know: give its name or inode")
        return [ns for ns in namespaces if ns.inode == own]
    key = wanted[5:-1] if wanted.startswith("net:[") and wanted.endswith("]") else wanted
    exact = [ns for ns in namespaces if key in (ns.name, str(ns.inode))]
    if exact:
        return exact
    if key.isdigit():
        inode = netns_of_pid(int(key))
        by_pid = [ns for ns in namespaces if ns.inode == inode] if inode else []
        if by_pid:
            return by_pid
    return _containers(namespaces, key.removeprefix("container:"))


def _containers(namespaces: Sequence[N], cid: str) -> list[N]:
    if not _CONTAINER_ID.fullmatch(cid):
        return []
    found = [ns for ns in namespaces if ns.kind == "container"
             and ns.name.startswith("container:" + cid[:12])]
    names = sorted({ns.name for ns in found})
    if len(names) > 1:
        raise UsageError(f"--netns container:{cid} matches {len(names)} containers "
                         f"({', '.join(names[:5])}): give more digits of the id")
    return found


def unknown_netns(wanted: str, namespaces: Iterable[NamespaceLike],
                  where: str = "") -> NotFoundError:
    """The exit-3 error for a --netns that names nothing, with what would have worked."""
    names = sorted({ns.name for ns in namespaces}, key=lambda n: (n != "host", n))
    close = difflib.get_close_matches(wanted, names, n=1)
    hint = f"; did you mean {close[0]}?" if close else ""
    shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
    return NotFoundError(f"--netns: no network namespace '{wanted}'{where} "
                         f"(known: {shown or 'none'}){hint}")


# --- --process ----------------------------------------------------------------------


def is_glob(pattern: str) -> bool:
    return bool(_GLOB.search(pattern))


def process_matcher(pattern: str) -> Callable[[str, Sequence[str]], bool]:
    """match(comm, cmdline) for `--process PATTERN`.

    The name is the process name (comm, what ss -p shows) or the base name of
    its program (argv[0]); PATTERN matches it exactly, or as a shell glob when
    it has * ? or [ (`python*`, `php-fpm*`). A name longer than the kernel's
    15 bytes also matches its truncated comm.
    """
    if is_glob(pattern):
        def match_glob(comm: str, cmdline: Sequence[str]) -> bool:
            return (fnmatch.fnmatchcase(comm, pattern)
                    or fnmatch.fnmatchcase(_program(cmdline), pattern))
        return match_glob
    raw = pattern.encode("utf-8", "surrogateescape")
    # The kernel cuts a name at 15 bytes, possibly inside a character.
    names = (pattern, raw[:COMM_LEN].decode("utf-8", "surrogateescape"))

    def match_exact(comm: str, cmdline: Sequence[str]) -> bool:
        return comm in names or _program(cmdline) == pattern
    return match_exact


def _program(cmdline: Sequence[str]) -> str:
    """The program's base name from argv[0], also when it was rewritten ("nginx: worker")."""
    if not cmdline:
        return ""
    return os.path.basename(cmdline[0].split(" ", 1)[0]).rstrip(":")


def unknown_process(pattern: str, names: Iterable[str], where: str = "") -> NotFoundError:
    """The exit-3 error for a --process that matches nothing, with the nearest names."""
    known = sorted(set(names))
    close = [n for n in known if n.startswith(pattern)][:3] or \
        difflib.get_close_matches(pattern, known, n=3)
    hint = ""
    if close:
        hint = "; did you mean " + " or ".join(close) + "?"
    if not is_glob(pattern):
        hint += f" (--process takes a name or a glob: '{pattern}*')"
    return NotFoundError(f"--process: no process named '{pattern}'{where}{hint}")


def unknown_pids(pids: Iterable[int], where: str = "") -> NotFoundError:
    shown = ", ".join(str(p) for p in sorted(pids))
    many = "es" if "," in shown else ""
    return NotFoundError(f"--pid: no process{many} {shown}{where} (`sockdoctor ls -p` shows "
                         "which processes hold sockets)")
