"""Who made each TCP socket of this process: a record taken when the socket is created.

The pytest guard blames a test only for sockets made on its behalf, so it must
know, for every socket, who made it — decided when it is made, never guessed
later from when a look happened (a server thread accepting a connection a
millisecond late must not change a verdict). While installed, a wrapper
around `socket.socket.__init__` (the one door every Python socket object goes
through: socket(), create_connection(), accept(), socketpair(), fromfd(),
ssl's wrap_socket) records:

- the *maker*: whoever the socket is attributed to (a test, a fixture, the
  session), chosen in this order: the socket it re-wraps (ssl, fileno=) keeps
  its maker; an accepted connection belongs to its listening socket's maker;
  a socket made in a thread belongs to whoever started the thread; otherwise
  to whatever pytest is running now (`Tracker.maker`);
- the thread, and a cheap stack: (code, line) pairs from a frame walk, which
  costs microseconds (tracemalloc would trace every allocation).

Python's `socket.__new__` audit event fires for the same sockets, but before
the descriptor exists and with no way to remove the hook afterwards; the
wrapper sees the descriptor and is taken off by uninstall().
"""

from __future__ import annotations

import linecache
import os
import socket
import sys
import sysconfig
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from types import CodeType, FrameType
from typing import Any

MAX_FRAMES = 40  # recorded per socket; the first frame outside libraries is nearly always within


@dataclass(eq=False)
class Maker:
    """Who a socket is attributed to: a test, a fixture broader than a test, the session."""

    kind: str  # "test" | "fixture" | "session"
    name: str  # a test's node id, a fixture's name
    scope: str = "function"
    where: str = ""  # a fixture's definition, file:line
    done: bool = False  # judged already: sockets made for it now come late
    value_id: int = 0  # id() of a fixture's value while it is set up
    checked: bool = True  # False: a test marked mode="off", never judged

    def label(self) -> str:
        if self.kind == "fixture":
            where = f", {self.where}" if self.where else ""
            return f"fixture {self.name} ({self.scope} scope{where})"
        return self.name


SESSION = Maker("session", "the session", "session")


@dataclass(eq=False, slots=True)
class Record:
    """One socket object as it was made."""

    ref: weakref.ref[socket.socket]
    fd: int
    inode: int
    maker: Maker
    thread: str
    frames: tuple[tuple[CodeType, int], ...]

    def socket(self) -> socket.socket | None:
        """The socket object if it still holds the descriptor it was made with."""
        sock = self.ref()
        if sock is None or sock.fileno() != self.fd:
            return None
        try:
            return sock if os.fstat(self.fd).st_ino == self.inode else None
        except OSError:
            return None

    def stack(self) -> list[tuple[str, int, str]]:
        """(file, line, source), outermost first, as a traceback reads."""
        return [(code.co_filename, line, linecache.getline(code.co_filename, line).strip())
                for code, line in reversed(self.frames)]


@dataclass
class Tracker:
    """Records TCP sockets of this process while installed; see the module's docstring."""

    maker: Maker = SESSION  # what pytest is running now
    records: dict[tuple[int, int], Record] = field(default_factory=dict)  # (inode, fd) ->
    latest: dict[int, Record] = field(default_factory=dict)  # inode -> its newest record
    threads: weakref.WeakKeyDictionary[threading.Thread, Maker] = field(
        default_factory=weakref.WeakKeyDictionary)
    quiet: int = 0  # a thread whose sockets are not recorded (the guard's own reads)
    _undo: list[Callable[[], None]] = field(default_factory=list)

    def install(self) -> Tracker:
        if not self._undo:
            self._patch(socket.socket, "__init__", self._wrap_init)
            self._patch(threading.Thread, "start", self._wrap_start)
        return self

    def uninstall(self) -> None:
        while self._undo:
            self._undo.pop()()

    def made_by(self, maker: Maker) -> list[Record]:
        """The records attributed to `maker` whose socket is still open."""
        return [rec for rec in list(self.records.values())
                if rec.maker is maker and rec.socket() is not None]

    def open_records(self) -> list[Record]:
        return [rec for rec in list(self.records.values()) if rec.socket() is not None]

    def forget_closed(self) -> None:
        """Drop records of closed sockets (called between tests: the dicts stay small)."""
        for key, rec in list(self.records.items()):
            if rec.socket() is None:
                self.records.pop(key, None)
                if self.latest.get(rec.inode) is rec:
                    del self.latest[rec.inode]

    def thread_maker(self) -> Maker:
        owner = self.threads.get(threading.current_thread())
        return owner if owner is not None else self.maker

    # --- the wrappers ------------------------------------------------------------

    def _patch(self, cls: type, name: str, make: Callable[[Any], Any]) -> None:
        original = cls.__dict__[name]
        setattr(cls, name, make(original))
        self._undo.append(lambda: setattr(cls, name, original))

    def _wrap_init(self, original: Callable[..., None]) -> Callable[..., None]:
        tracker = self

        def __init__(sock: socket.socket, *args: Any, **kwargs: Any) -> None:
            original(sock, *args, **kwargs)
            if tracker.quiet == threading.get_ident():
                return
            try:
                tracker._made(sock, sys._getframe(1))
            except (OSError, ValueError):
                pass  # not a socket we can look at (closed already): nothing to attribute
        return __init__

    def _wrap_start(self, original: Callable[[threading.Thread], None]
                    ) -> Callable[[threading.Thread], None]:
        tracker = self

        def start(thread: threading.Thread) -> None:
            if not _pool_worker(thread):  # a shared pool's thread works for whoever asks
                tracker.threads[thread] = tracker.thread_maker()
            original(thread)
        return start

    def _made(self, sock: socket.socket, frame: FrameType | None) -> None:
        if sock.family not in (socket.AF_INET, socket.AF_INET6) or \
                sock.type != socket.SOCK_STREAM:
            return
        fd = sock.fileno()
        inode = os.fstat(fd).st_ino
        before = self.records.get((inode, fd)) or self.latest.get(inode)
        if before is not None and _same_socket(before, sock):  # ssl, dup(), fileno=
            maker, frames = before.maker, before.frames
        else:
            maker, frames = self._maker_of(frame), _frames(frame)
        rec = Record(weakref.ref(sock), fd, inode, maker, threading.current_thread().name,
                     frames)
        self.records[(inode, fd)] = self.latest[inode] = rec

    def _maker_of(self, frame: FrameType | None) -> Maker:
        """An accepted connection is its listener's; otherwise its thread's."""
        if frame is not None and frame.f_code is _ACCEPT:
            listener = frame.f_locals.get("self")
            if isinstance(listener, socket.socket) and listener.fileno() >= 0:
                try:
                    rec = self.latest.get(os.fstat(listener.fileno()).st_ino)
                except OSError:
                    rec = None
                if rec is not None:
                    return rec.maker
        return self.thread_maker()


_ACCEPT = socket.socket.accept.__code__


def _same_socket(before: Record, sock: socket.socket) -> bool:
    """Is `sock` a new object for the socket `before` recorded (ssl's wrap_socket, dup(),
    socket(fileno=old.detach()))? Socket inodes come from a counter, not recycled."""
    return before.ref() is not sock


def _frames(frame: FrameType | None) -> tuple[tuple[CodeType, int], ...]:
    out = []
    while frame is not None and len(out) < MAX_FRAMES:
        out.append((frame.f_code, frame.f_lineno))
        frame = frame.f_back
    return tuple(out)


def _pool_worker(thread: threading.Thread) -> bool:
    futures = sys.modules.get("concurrent.futures.thread")
    return futures is not None and getattr(thread, "_target", None) is getattr(
        futures, "_worker", None)


# --- what counts as library code ---------------------------------------------------

def library_dirs(extra: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The standard library, installed packages (site-packages), and `extra`."""
    paths = sysconfig.get_paths()
    dirs = {paths["stdlib"], paths["platstdlib"], paths["purelib"], paths["platlib"]}
    return tuple(os.path.join(os.path.abspath(d), "") for d in (*dirs, *extra))


def installed_dirs(extra: tuple[str, ...] = ()) -> tuple[str, ...]:
    """Installed packages (site-packages) and `extra`, without the standard library."""
    paths = sysconfig.get_paths()
    dirs = {paths["purelib"], paths["platlib"]}
    return tuple(os.path.join(os.path.abspath(d), "") for d in (*dirs, *extra))


def is_library(filename: str, dirs: tuple[str, ...]) -> bool:
    return filename.startswith(dirs) or "site-packages" in filename or \
        filename.startswith("<frozen")


def creation_site(stack: list[tuple[str, int, str]], dirs: tuple[str, ...]) -> str:
    """file:line of the innermost frame outside library code (the user's code that made
    the socket); the innermost frame when every frame is a library's."""
    for filename, line, _source in reversed(stack):
        if not is_library(filename, dirs):
            return f"{filename}:{line}"
    return f"{stack[-1][0]}:{stack[-1][1]}" if stack else ""
