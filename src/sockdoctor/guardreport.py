"""What guard() found: leaked sockets, where they were made, and the text that says so.

A leak names the socket the way `ss -tanp` would (state, local -> peer,
process, fd), says in one line why that state is a leak, and for a socket
of this Python process points at the line that created it, taken from
tracemalloc. Everything here is plain data plus formatting; leakguard.py finds
the sockets.
"""

from __future__ import annotations

import gc
import linecache
import os
import socket
import sysconfig
import tracemalloc
from collections import Counter
from dataclasses import dataclass, field

from . import words
from .linux import netns, procfs
from .model import Owner, Socket, TcpState

# Kinds of leak, in the order a report lists them.
CLOSE_WAIT = "close-wait"
FIN_WAIT2 = "fin-wait-2"
DEAD = "dead"
OPEN = "open"
KINDS = (CLOSE_WAIT, FIN_WAIT2, DEAD, OPEN)

WHY = {
    CLOSE_WAIT: "the peer closed the connection and nothing called close(): the kernel keeps "
                "it in CLOSE-WAIT until the process exits",
    FIN_WAIT2: "this side called shutdown() and kept the descriptor, and the peer never "
               "closed its end: both stay until someone calls close()",
    DEAD: "dead descriptor: the connection is over (shutdown() and the peer's close, or a "
          "reset) but close() was never called, so the fd and the socket stay allocated",
    OPEN: "opened inside the guarded code and still open after it",
}

TRACEMALLOC_HINT = ("where it was created: unknown (tracemalloc is off; start Python with "
                    "PYTHONTRACEMALLOC=20 or -X tracemalloc=20, or call tracemalloc.start(20) "
                    "before the sockets are made)")


@dataclass
class Leak:
    """One socket that the guarded code left behind."""

    kind: str  # close-wait | fin-wait-2 | dead | open
    socket: Socket
    owners: list[Owner]
    processes: dict[int, str] = field(default_factory=dict)  # pid -> "comm (cmdline)"
    netns: str = ""  # name of the socket's namespace when it is not ours
    created: list[tuple[str, int, str]] = field(default_factory=list)  # (file, line, source)
    created_note: str = ""  # why `created` is empty, or how to fill it
    site: str = ""  # file:line of the code that made it (the pytest guard's records)
    site_source: str = ""  # that line's text
    thread: str = ""  # the thread that made it

    @property
    def state(self) -> str:
        if self.kind == DEAD:
            return "DEAD"
        return words.state_name(self.socket.state)

    @property
    def created_at(self) -> str:
        """file:line of the first frame outside the standard library, or ''."""
        if self.site:
            return _short(self.site)
        for filename, lineno, _source in reversed(self.created):
            if not _is_library(filename):
                return f"{filename}:{lineno}"
        return f"{self.created[-1][0]}:{self.created[-1][1]}" if self.created else ""

    def endpoints(self) -> str:
        sk = self.socket
        if sk.state == TcpState.CLOSE and not sk.local_port:
            return f"socket:[{sk.inode}], in no TCP table"
        if sk.state == TcpState.CLOSE:
            local = words.endpoint(sk.local_addr, sk.local_port, sk.family)
            return f"{local}, in no TCP table (socket:[{sk.inode}])"
        return (f"{words.endpoint(sk.local_addr, sk.local_port, sk.family)} -> "
                f"{words.endpoint(sk.peer_addr, sk.peer_port, sk.family, peer=True)}")

    def holders(self) -> str:
        return ", ".join(f"{words.untrusted(self.processes.get(o.pid, '?'))} pid {o.pid} fd {o.fd}"
                         for o in self.owners) or self.socket.owner_note()

    def lines(self) -> list[str]:
        out = [f"{self.state:<11} {self.endpoints()}  {self.holders()}"]
        if self.netns:
            out.append(f"    in network namespace {words.untrusted(self.netns)}")
        why = WHY[self.kind]
        if self.kind == OPEN and self.socket.state == TcpState.CLOSE:
            why = "a socket that was never connected, still open after the guarded code"
        out.append(f"    {why}")
        if self.site:
            thread = f" (thread {words.untrusted(self.thread)})" if self.thread and \
                self.thread != "MainThread" else ""
            out.append(f"    created at {words.untrusted(self.created_at)}{thread}")
            if self.site_source and not self.created:
                out.append(f"        {words.untrusted(self.site_source)}")
        if self.created:
            if not self.site:
                out.append(f"    created at {self.created_at}")
            for filename, lineno, source in self.created:
                out.append(f"        {words.untrusted(filename)}:{lineno}")
                if source:
                    out.append(f"            {words.untrusted(source)}")
        elif self.created_note:
            out.append(f"    {self.created_note}")
        return out

    def to_dict(self) -> dict[str, object]:
        sk = self.socket
        return {"kind": self.kind, "state": self.state, "local": [sk.local_addr, sk.local_port],
                "peer": [sk.peer_addr, sk.peer_port], "inode": sk.inode,
                "owners": [{"pid": o.pid, "fd": o.fd, "process": self.processes.get(o.pid, "")}
                           for o in self.owners],
                "netns": self.netns, "created_at": self.created_at,
                "traceback": [list(frame) for frame in self.created]}


@dataclass
class GuardReport:
    """The result of one check: leaks (empty when clean) and what was looked at."""

    leaks: list[Leak] = field(default_factory=list)
    processes: int = 0
    sockets: int = 0
    grace_ms: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.leaks

    def __bool__(self) -> bool:
        """True when something leaked, so `if guard.report:` reads naturally."""
        return bool(self.leaks)

    def summary(self) -> str:
        """'2 TCP sockets leaked: 1 CLOSE-WAIT, 1 open', or 'no TCP socket leaked'."""
        if not self.leaks:
            return "no TCP socket leaked"
        counts = Counter(leak.kind for leak in self.leaks)
        parts = ", ".join(f"{counts[k]} {_KIND_LABEL[k]}" for k in KINDS if counts[k])
        n = len(self.leaks)
        return f"{n} TCP socket{'s' if n != 1 else ''} leaked: {parts}"

    def text(self, where: str = "") -> str:
        """The full report; `where` names the code that leaked (a test, a block)."""
        head = f"sockdoctor: {self.summary()}"
        if where:
            head += f" by {where}"
        if self.grace_ms:
            head += f" (checked after a {self.grace_ms} ms grace period)"
        body = [line for leak in self.leaks for line in ("", *leak.lines())]
        return "\n".join([head, *body, *(f"note: {n}" for n in self.notes)])

    def __str__(self) -> str:
        return self.text()

    def to_dict(self) -> dict[str, object]:
        return {"summary": self.summary(), "leaks": [leak.to_dict() for leak in self.leaks],
                "processes": self.processes, "sockets": self.sockets,
                "grace_ms": self.grace_ms, "notes": self.notes}


_KIND_LABEL = {CLOSE_WAIT: "CLOSE-WAIT", FIN_WAIT2: "FIN-WAIT-2", DEAD: "dead descriptor",
               OPEN: "still open"}


def _stdlib_dirs() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    return tuple({os.path.join(paths["stdlib"], ""), os.path.join(paths["platstdlib"], "")})


_STDLIB = _stdlib_dirs()


def _is_library(filename: str) -> bool:
    """Frames of the standard library (socket.py, asyncio, ...) are not 'where it leaked'."""
    return filename.startswith(_STDLIB) and "site-packages" not in filename


MAX_FRAMES = 10  # of a creation traceback, innermost kept


def describe(leaks: list[Leak], hint: str = TRACEMALLOC_HINT, hide: tuple[str, ...] = ()) -> None:
    """Fill in process names, namespace names and creation tracebacks (only when reporting).

    Frames of files under `hide` (a test runner's own code) are left out.
    """
    if not leaks:
        return
    own = os.getpid()
    objects = _socket_objects() if any(o.pid == own and not leak.site
                                       for leak in leaks for o in leak.owners) else {}
    names = netns.names_by_inode()
    own_ns = procfs.netns_inode(own)
    for leak in leaks:
        for owner in leak.owners:
            leak.processes.setdefault(owner.pid, _process_name(owner.pid))
        if leak.socket.netns and leak.socket.netns != own_ns:
            leak.netns = names.get(leak.socket.netns, f"net:[{leak.socket.netns}]")
        if not leak.site:
            _find_creation(leak, own, objects, hint, hide)


def _find_creation(leak: Leak, own: int, objects: dict[int, socket.socket], hint: str,
                   hide: tuple[str, ...]) -> None:
    mine = [o for o in leak.owners if o.pid == own]
    if not mine:
        pids = ", ".join(str(o.pid) for o in leak.owners) or "none"
        leak.created_note = (f"held by process {pids}, not this Python process: sockdoctor "
                             "sees its sockets, not its stack")
        return
    obj = next((objects[o.fd] for o in mine if o.fd in objects), None)
    if obj is None:
        leak.created_note = (f"no Python socket object holds fd {mine[0].fd} (made by C code, "
                             "os.dup() or socket.detach())")
        return
    if not tracemalloc.is_tracing():
        leak.created_note = hint
        return
    trace = tracemalloc.get_object_traceback(obj)
    if trace is None:
        leak.created_note = "created before tracemalloc started tracing"
        return
    frames = [frame for frame in trace if not frame.filename.startswith(hide)] or list(trace)
    while len(frames) > 1 and _is_library(frames[0].filename):
        frames.pop(0)  # thread bootstrap and the like, before the first frame of the program
    leak.created = [(_short(frame.filename), frame.lineno,
                     linecache.getline(frame.filename, frame.lineno).strip())
                    for frame in frames[-MAX_FRAMES:]]
    if len(trace) == 1 and _is_library(trace[0].filename):
        leak.created_note = ("tracemalloc keeps 1 frame: start it with 20 "
                             "(PYTHONTRACEMALLOC=20) to see the caller")


def _short(path: str) -> str:
    """A path relative to the working directory when it lies below it (as pytest prints)."""
    cwd = os.path.join(os.getcwd(), "")
    return path[len(cwd):] if path.startswith(cwd) else path


def _socket_objects() -> dict[int, socket.socket]:
    """fd -> the live Python socket object using it (a walk over the GC's objects)."""
    found: dict[int, socket.socket] = {}
    for obj in gc.get_objects():
        if isinstance(obj, socket.socket):
            try:
                fd = obj.fileno()
            except OSError:
                continue
            if fd >= 0:
                found.setdefault(fd, obj)
    return found


def _process_name(pid: int) -> str:
    proc = procfs.process_info(pid)
    if proc is None:
        return "exited"
    if pid == os.getpid() or not proc.cmdline:
        return proc.comm
    return f"{proc.comm} ({' '.join(_short_arg(arg) for arg in proc.cmdline)[:160]})"


def _short_arg(arg: str) -> str:
    """One argument of a command line, cut at its first line and at 40 characters."""
    first = arg.strip().split("\n", 1)[0]
    return first if len(first) <= 40 and first == arg else first[:40] + "…"
