"""guard(): fail code that leaves TCP sockets open, in CLOSE-WAIT or as dead descriptors.

    with sockdoctor.guard():          # raises SocketLeakError on a leak
        run_the_code_under_test()

    @sockdoctor.guard(mode="warn")    # or as a decorator (sync or async)
    def test_client(): ...

On entry the guard records the TCP sockets of the watched processes (this
process and its descendants by default, or `pids`, or every process of a
network namespace with `netns`). On exit, after a grace period that lets
normal closes finish, it reports:

- sockets that appeared inside the block and are still open;
- sockets that went into CLOSE-WAIT (the peer closed, we did not), owned
  FIN-WAIT-2 (we shut down, the peer did not close), or became dead
  descriptors (the connection is over, the fd was never closed) — whether
  they were made inside the block or before it.

It never scans the whole host: see linux/heldsockets.py for what it reads.
"""

from __future__ import annotations

import functools
import gc
import inspect
import os
import socket
import sys
import time
import warnings
from collections.abc import Callable, Hashable, Iterable
from typing import Any, Literal, TypeVar, overload

from . import guardreport
from .errors import NotFoundError, UsageError
from .guardreport import GuardReport, Leak
from .linux import heldsockets, procfs
from .linux.heldsockets import Held
from .model import Owner, Socket, TcpState

Mode = Literal["raise", "warn", "return"]
MODES = ("raise", "warn", "return")
DEFAULT_GRACE = 0.1  # seconds: a close() racing with the check usually lands well within this
AllowRule = int | str | socket.socket | Callable[[Leak], bool]
F = TypeVar("F", bound=Callable[..., Any])
_POLL = 0.01


class SocketLeakError(AssertionError):
    """Raised by guard(mode="raise") when the guarded code leaked; `.report` has the details.

    An AssertionError, so test runners show it as a test failure.
    """

    def __init__(self, report: GuardReport, where: str = "") -> None:
        super().__init__(report.text(where))
        self.report = report


class SocketLeakWarning(UserWarning):
    """Issued by guard(mode="warn"); a UserWarning, so Python shows it by default."""


class Guard:
    """Watches TCP sockets of some processes between start() and stop().

    A context manager and a decorator; `check()` looks mid-way without
    ending the watch. `report` holds the last result (a GuardReport, falsy
    when nothing leaked).
    """

    # How a leak's creation traceback is told: the note shown when tracemalloc
    # is off, and directories whose frames it skips (a test runner's own code).
    # Set on an instance to change them; decorated calls inherit them.
    trace_hint: str = guardreport.TRACEMALLOC_HINT
    trace_hide: tuple[str, ...] = ()

    def __init__(self, *, pids: Iterable[int] | None = None, netns: str | None = None,
                 children: bool = True, grace: float = DEFAULT_GRACE, mode: Mode = "raise",
                 allow: AllowRule | Iterable[AllowRule] = (), name: str = "") -> None:
        if mode not in MODES:
            raise UsageError(f"guard mode must be one of {', '.join(MODES)}, not {mode!r}")
        if pids is not None and netns is not None:
            raise UsageError("guard() watches either processes (pids=) or a namespace (netns=)")
        if grace < 0:
            raise UsageError(f"the grace period cannot be negative ({grace} s)")
        self.pids = _existing(pids) if pids is not None else None
        self.netns = netns
        self.children = children
        self.grace = grace
        self.mode: Mode = mode
        self.name = name
        self.report: GuardReport | None = None
        self._allow: list[Callable[[Leak], bool]] = []
        self.allow(*_as_rules(allow))
        self._inspector = heldsockets.FdInspector()
        self._baseline: dict[Hashable, str | None] | None = None
        self._reported: set[tuple[Hashable, str]] = set()
        self.last_view: dict[Hashable, Held] = {}  # what the last look found
        self._watched = 0  # processes (or namespace members) looked at by the last view
        self._seen = 0  # TCP sockets in the last view

    # --- the public life cycle -------------------------------------------------

    def allow(self, *rules: AllowRule) -> Guard:
        """Never report sockets matching any rule: a port (local or peer), an ss filter
        ("sport = :8080"), a socket object, or a function of a Leak returning True."""
        self._allow.extend(_compile(rule) for rule in rules)
        return self

    def start(self, view: dict[Hashable, Held] | None = None) -> Guard:
        """Record what is open now; later checks report relative to this.

        `view`: the `last_view` of a check that ended just now, instead of a
        new look (the plugin chains one test's last check to the next start).
        """
        if view is None:
            view = self._view()
        self._baseline = {key: _stuck_kind(held) for key, held in view.items()}
        self._reported.clear()
        self.report = None
        return self

    def adopt(self) -> None:
        """Treat every socket open now as if it had been there at start()."""
        if self._baseline is None:
            raise UsageError("guard.adopt() before guard.start()")
        for key, held in self._view().items():
            self._baseline.setdefault(key, _stuck_kind(held))

    def check(self, *, stuck_only: bool = False) -> GuardReport:
        """What leaked so far (each leak is reported once per guard); nothing raised.

        stuck_only: report only CLOSE-WAIT, FIN-WAIT-2 and dead descriptors,
        not sockets that are merely still open (a fixture may close them later).
        """
        if self._baseline is None:
            raise UsageError("guard.check() before guard.start()")
        found = sorted(self._settled(stuck_only), key=_order)
        self._inspector.describe(held for _key, _kind, held in found)
        leaks = [Leak(kind, held.socket, held.owners) for _key, kind, held in found
                 if held.socket is not None]
        self._reported.update((key, kind) for key, kind, _held in found)
        guardreport.describe(leaks, self.trace_hint, self.trace_hide)
        notes = []
        if self._inspector.refused:
            notes.append(f"{self._inspector.refused} sockets could not be read through a "
                         "duplicate (no ptrace right); looked up in this namespace instead")
        self.report = GuardReport(leaks, self._watched, self._seen,
                                  round(self.grace * 1000) if leaks else 0, notes)
        return self.report

    def stop(self) -> GuardReport:
        """The final check; then raise, warn or just return, as the mode says."""
        report = self.check()
        self._baseline = None
        if report.leaks and self.mode == "raise":
            raise SocketLeakError(report, self.name)
        if report.leaks and self.mode == "warn":
            warnings.warn(SocketLeakWarning(report.text(self.name)), stacklevel=3)
        return report

    def __enter__(self) -> Guard:
        if not self.name:
            caller = sys._getframe(1)
            self.name = f"the block at {caller.f_code.co_filename}:{caller.f_lineno}"
        return self.start()

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        if exc is None:
            self.stop()
            return
        report = self.check()  # the block failed: say what leaked, do not hide its error
        self._baseline = None
        if report.leaks and self.mode != "return":
            exc.add_note(report.text(self.name))

    def __call__(self, func: F) -> F:
        """Use as a decorator: every call is guarded on its own."""
        name = self.name or f"{func.__module__}.{func.__qualname__}()"

        def fresh() -> Guard:
            copy = Guard(pids=self.pids, netns=self.netns, children=self.children,
                         grace=self.grace, mode=self.mode, allow=self._allow, name=name)
            copy.trace_hint, copy.trace_hide = self.trace_hint, self.trace_hide
            return copy

        if inspect.iscoroutinefunction(func):
            @functools.wraps(func)
            async def run_async(*args: Any, **kwargs: Any) -> Any:
                with fresh() as inner:
                    try:
                        return await func(*args, **kwargs)
                    finally:
                        self.report = inner.report
            return run_async  # type: ignore[return-value]

        @functools.wraps(func)
        def run(*args: Any, **kwargs: Any) -> Any:
            inner = fresh()
            try:
                with inner:
                    return func(*args, **kwargs)
            finally:
                self.report = inner.report
        return run  # type: ignore[return-value]

    # --- looking ---------------------------------------------------------------

    def _view(self) -> dict[Hashable, Held]:
        """Every TCP socket of the watched processes (or namespace), keyed stably."""
        if self.netns is not None:
            view, self._watched = _namespace_view(self.netns)
        else:
            pids = self.pids if self.pids is not None else [os.getpid()]
            if self.children:
                pids = heldsockets.descendants(pids)
            self._watched = len(pids)
            view = dict(self._inspector.inspect(self._inspector.tcp_sockets(pids)))
        self._seen = len(view)
        self.last_view = view
        return view

    def _findings(self, view: dict[Hashable, Held], stuck_only: bool
                  ) -> list[tuple[Hashable, str, Held]]:
        assert self._baseline is not None
        found = []
        for key, held in view.items():
            kind = _stuck_kind(held)
            before = self._baseline.get(key, _NEW)
            if kind is not None:
                if before == kind:
                    continue  # already stuck like this when the guard started
            elif stuck_only or before is not _NEW or not _holds(held):
                continue
            else:
                kind = guardreport.OPEN
            if (key, kind) in self._reported or self._allowed(kind, held):
                continue
            found.append((key, kind, held))
        return found

    def _settled(self, stuck_only: bool) -> list[tuple[Hashable, str, Held]]:
        """Findings that outlast the grace period (closes in flight get time to land)."""
        found = self._findings(self._view(), stuck_only)
        deadline = time.monotonic() + self.grace
        collected = False
        own = os.getpid()
        while found and time.monotonic() < deadline:
            if not collected and any(o.pid == own for _k, _kind, h in found for o in h.owners):
                gc.collect()  # sockets only garbage holds are closed by their finalizers
                collected = True
            else:
                time.sleep(max(0.0, min(_POLL, deadline - time.monotonic())))
            found = self._findings(self._view(), stuck_only)
        return found

    def _allowed(self, kind: str, held: Held) -> bool:
        if not self._allow:
            return False
        self._inspector.describe([held])
        if held.socket is None:
            return False
        leak = Leak(kind, held.socket, held.owners)
        return any(rule(leak) for rule in self._allow)


_NEW = object()  # baseline marker: the socket was not there at start()


def _order(finding: tuple[Hashable, str, Held]) -> tuple[int, int, int]:
    _key, kind, held = finding
    first = held.owners[0] if held.owners else Owner(0, 0)
    return guardreport.KINDS.index(kind), first.pid, first.fd


@overload
def guard(func: None = None, /, **options: Any) -> Guard: ...
@overload
def guard(func: F, /, **options: Any) -> F: ...


def guard(func: F | None = None, /, **options: Any) -> Guard | F:
    """A Guard (see its arguments: pids, netns, children, grace, mode, allow, name);
    `@guard` without parentheses decorates a function directly."""
    checker = Guard(**options)
    return checker if func is None else checker(func)


def _stuck_kind(held: Held) -> str | None:
    """Which kind of leak a socket's state is by itself, whoever made it; None if healthy."""
    state = held.state
    if state == TcpState.CLOSE_WAIT:
        return guardreport.CLOSE_WAIT
    if state == TcpState.FIN_WAIT2 and held.owners:  # orphans expire (tcp_fin_timeout)
        return guardreport.FIN_WAIT2
    if state == TcpState.CLOSE and held.segs_out > 0:
        return guardreport.DEAD
    return None


def _holds(held: Held) -> bool:
    """A program holds it: through a descriptor, or queued on its listener, not yet accepted.

    Orphans (closed, the kernel finishes the handshake) and TIME-WAIT are the
    kernel's business, not a leak.
    """
    if held.owners:
        return True
    return held.inode == 0 and held.state in (TcpState.ESTABLISHED, TcpState.SYN_RECV)


def _namespace_view(name: str) -> tuple[dict[Hashable, Held], int]:
    """Every socket of one network namespace (one dump), its dead descriptors, and
    how many processes hold them."""
    from .inventory import scan

    snap = scan(netns=name, owners=True, evidence=True)
    view: dict[Hashable, Held] = {}
    for sk in snap.sockets:
        view[("socket", sk.cookie)] = Held(sk.inode, sk.owners, sk.state, socket=sk)
    for dead in snap.dead_fds:
        family = socket.AF_INET6 if dead.protocol == "TCPv6" else socket.AF_INET
        sk = Socket(procfs.netns_inode(dead.pid), family, TcpState.CLOSE, "0.0.0.0", 0,
                    "0.0.0.0", 0, dead.inode, 0, -1, 0, 0)
        view[("fd", dead.inode)] = Held(dead.inode, [Owner(dead.pid, dead.fd)], sk.state, 1, sk)
    return view, len(snap.processes)


def _existing(pids: Iterable[int]) -> list[int]:
    pids = list(pids)
    missing = [pid for pid in pids if not procfs.pid_exists(pid)]
    if missing:
        raise NotFoundError(f"no process {', '.join(map(str, missing))}")
    return pids


def _as_rules(allow: AllowRule | Iterable[AllowRule]) -> list[AllowRule]:
    if isinstance(allow, int | str | socket.socket) or callable(allow):
        return [allow]  # type: ignore[list-item]
    return list(allow)  # type: ignore[arg-type]


def _compile(rule: AllowRule) -> Callable[[Leak], bool]:
    """One allow rule as a predicate over a leak."""
    if isinstance(rule, bool):
        raise UsageError(f"allow= takes ports, ss filters, sockets or functions, not {rule!r}")
    if isinstance(rule, int):
        return lambda leak: rule in (leak.socket.local_port, leak.socket.peer_port)
    if isinstance(rule, str):
        from .query import Query

        query = Query.build(rule)
        return lambda leak: query.match_socket(leak.socket)
    if isinstance(rule, socket.socket):
        inode = os.fstat(rule.fileno()).st_ino if rule.fileno() >= 0 else -1
        return lambda leak: leak.socket.inode == inode
    if callable(rule):
        return rule
    raise UsageError(f"allow= takes ports, ss filters, sockets or functions, not {rule!r}")
