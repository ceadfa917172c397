"""pytest plugin: fail (or warn about) tests that leak TCP sockets.

Registered through the `pytest11` entry point, so installing sockdoctor is
enough; it does nothing until asked (`--sockdoctor=fail|warn`, the ini
option `sockdoctor`, the marker or the fixture), so installing it never
changes anybody's results.

Per test, a sockdoctor.guard() watches this process and its descendants from
the start of setup:
- at the end of the test body, a socket in CLOSE-WAIT, an owned FIN-WAIT-2
  or a dead descriptor fails the test (fixtures are still up, but the peer
  has closed and nobody answered with close() within the grace period);
- after the test's fixtures are torn down, a socket made during the test
  that is still open is an error at teardown, as any fixture problem is.
Sockets made while a broader-scoped fixture is set up (a session server)
belong to that fixture, not to the test; what is still open when the session
ends and no test was blamed for is named in the summary. With
`--sockdoctor-scope=module` there is one check per module, after its last
test's teardown. docs/pytest.md has the details.
"""

from __future__ import annotations

import tracemalloc
import warnings
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from .guardreport import GuardReport
    from .leakguard import Guard

MODES = ("fail", "warn", "off")
SCOPES = ("test", "module")
BROADER = {"test": ("class", "module", "package", "session"), "module": ("package", "session")}
HINT = ("where it was created: unknown (tracemalloc is off: run pytest with "
        "--sockdoctor-tracemalloc=20, or set PYTHONTRACEMALLOC=20)")
MARKER = ("sockdoctor(allow=..., mode=...): allow known TCP sockets (a port, an ss filter such "
          "as 'sport = :8080', a socket object, or a function of a sockdoctor Leak), or set "
          "the leak check's mode (fail, warn, off) for these tests")
_CHECKER = pytest.StashKey["Checker"]()
_GUARD = pytest.StashKey["Guard"]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("sockdoctor", "TCP socket leak checks (sockdoctor)")
    group.addoption("--sockdoctor", choices=MODES, default=None, dest="sockdoctor",
                    help="fail or warn when a test leaks TCP sockets (default: off, or the "
                         "ini option sockdoctor)")
    group.addoption("--sockdoctor-scope", choices=SCOPES, default=None,
                    dest="sockdoctor_scope", help="check after every test (default) or once "
                                                  "per module")
    group.addoption("--sockdoctor-grace", type=float, default=None, metavar="MS",
                    dest="sockdoctor_grace",
                    help="milliseconds a closing socket gets before it counts (default 100)")
    group.addoption("--sockdoctor-tracemalloc", type=int, default=None, metavar="FRAMES",
                    dest="sockdoctor_tracemalloc",
                    help="start tracemalloc with FRAMES frames so leaks show the line that "
                         "created the socket (slows tests down)")
    parser.addini("sockdoctor", "leak check mode: fail, warn or off", default="off")
    parser.addini("sockdoctor_scope", "leak check scope: test or module", default="test")
    parser.addini("sockdoctor_grace", "grace period in milliseconds", default="100")
    parser.addini("sockdoctor_tracemalloc", "tracemalloc frames to keep (0: off)", default="0")


@dataclass(frozen=True)
class Settings:
    mode: str
    scope: str
    grace_ms: float
    tracemalloc: int

    @classmethod
    def of(cls, config: pytest.Config) -> Settings:
        def pick(name: str) -> Any:
            value = config.getoption(name)
            return value if value is not None else config.getini(name)

        mode, scope = str(pick("sockdoctor")), str(pick("sockdoctor_scope"))
        if mode not in MODES:
            raise pytest.UsageError(f"sockdoctor: mode must be fail, warn or off, not {mode!r}")
        if scope not in SCOPES:
            raise pytest.UsageError(f"sockdoctor: scope must be test or module, not {scope!r}")
        try:
            grace, frames = float(pick("sockdoctor_grace")), int(pick("sockdoctor_tracemalloc"))
        except ValueError as exc:
            raise pytest.UsageError(f"sockdoctor: {exc}") from None
        if grace < 0 or frames < 0:
            raise pytest.UsageError("sockdoctor: grace and tracemalloc frames cannot be negative")
        return cls(mode, scope, grace, frames)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER)
    settings = Settings.of(config)
    if settings.mode != "off":
        _register(config, settings)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtestloop(session: pytest.Session) -> Generator[None, object, object]:
    """Trace allocations only while tests run: tracing imports and collection (and the
    imports other plugins make at the end) would cost more than the tests."""
    frames = Settings.of(session.config).tracemalloc
    if not frames or tracemalloc.is_tracing():
        return (yield)
    tracemalloc.start(frames)
    try:
        return (yield)
    finally:
        tracemalloc.stop()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """With the plugin off, a test that asks for the check (marker or fixture) still gets it."""
    if _CHECKER not in config.stash and any(_opted_in(item) for item in items):
        _register(config, Settings.of(config))


def _register(config: pytest.Config, settings: Settings) -> None:
    from . import leakguard  # noqa: F401  (imported now, before tracemalloc may start tracing)

    checker = Checker(settings)
    config.stash[_CHECKER] = checker
    config.pluginmanager.register(checker, "sockdoctor-checker")


def _opted_in(item: pytest.Item) -> bool:
    marker = item.get_closest_marker("sockdoctor")
    return (marker is not None and marker.kwargs.get("mode") in ("fail", "warn")) or \
        "sockdoctor_guard" in getattr(item, "fixturenames", ())


@pytest.fixture
def sockdoctor_guard(request: pytest.FixtureRequest) -> Guard:
    """The sockdoctor Guard watching this test.

    Requesting it turns the leak check on for this test even when
    --sockdoctor is off. `sockdoctor_guard.allow(8080)` allows sockets at run
    time; `sockdoctor_guard.check()` returns what leaked so far (those leaks
    are then the test's business and are not reported again).
    """
    checker = request.config.stash[_CHECKER]
    return checker.guard_of(request.node)


@dataclass(eq=False)  # pytest keeps plugins in sets: identity, not value
class Checker:
    """The hooks, registered only when some test is checked."""

    settings: Settings
    module_guard: Guard | None = None
    module_key: str = ""
    leaks: dict[str, list[str]] = field(default_factory=dict)  # nodeid -> summaries
    tests_seen: int = 0
    current: pytest.Item | None = None  # the test being set up, run or torn down
    last_view: dict[Any, Any] | None = None  # the sockets seen by the last test's final look
    session_guard: Guard | None = None  # from the first test on: what outlives every fixture
    reported: set[int] = field(default_factory=set)  # inodes already reported on a test
    session_leaks: list[list[str]] = field(default_factory=list)  # left open at the end

    def mode_of(self, item: pytest.Item) -> str:
        marker = item.get_closest_marker("sockdoctor")
        mode = marker.kwargs.get("mode") if marker is not None else None
        if mode is None:
            mode = self.settings.mode
            if mode == "off" and "sockdoctor_guard" in getattr(item, "fixturenames", ()):
                mode = "fail"
        if mode not in MODES:
            raise pytest.UsageError(f"{item.nodeid}: sockdoctor mode must be fail, warn or "
                                    f"off, not {mode!r}")
        return str(mode)

    def guard_of(self, item: pytest.Item) -> Guard:
        guard = item.stash.get(_GUARD, None)
        if guard is None:
            raise pytest.UsageError(f"{item.nodeid}: sockdoctor does not check this test "
                                    "(its mark says mode='off')")
        return guard

    def _new_guard(self) -> Guard:
        from .leakguard import Guard

        return Guard(mode="return", grace=self.settings.grace_ms / 1000, trace_hint=HINT,
                     trace_hide=_RUNNER_DIRS)

    # --- hooks -----------------------------------------------------------------

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> Generator[None, None, None]:
        self.current = item
        if self.mode_of(item) != "off":
            item.stash[_GUARD] = self._start(item)
        return (yield)

    @pytest.hookimpl(wrapper=True)
    def pytest_fixture_setup(self, fixturedef: pytest.FixtureDef[Any],
                             request: pytest.FixtureRequest) -> Generator[None, Any, Any]:
        item = self.current
        guard = item.stash.get(_GUARD, None) if item is not None else None
        if guard is None or fixturedef.scope not in BROADER[self.settings.scope]:
            return (yield)
        try:
            return (yield)
        finally:
            guard.adopt()  # what a broader fixture opens belongs to it, not to this test

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Generator[None, None, None]:
        guard = item.stash.get(_GUARD, None)
        if guard is None or self.settings.scope != "test":
            return (yield)
        try:
            result = yield
        except BaseException:
            self._report(item, self._check(item, guard, stuck_only=True), "call", failed=True)
            raise
        self._report(item, self._check(item, guard, stuck_only=True), "call", failed=False)
        return result

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_teardown(self, item: pytest.Item,
                                nextitem: pytest.Item | None) -> Generator[None, None, None]:
        guard = item.stash.get(_GUARD, None)
        if guard is None:
            self.current = self.last_view = None  # an unchecked test ran: nothing to reuse
            return (yield)
        if self.settings.scope == "module":
            if nextitem is not None and _module_key(nextitem) == self.module_key:
                self.last_view = None
                return (yield)
            self.module_guard = None  # this was the module's last test here
        del item.stash[_GUARD]
        try:
            result = yield
        except BaseException:
            self._report(item, self._check(item, guard), "teardown", failed=True)
            raise
        finally:
            self.current = None
        report = self._check(item, guard)
        self.last_view = guard.last_view
        self._report(item, report, "teardown", failed=False)
        return result

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when == "teardown":
            self.tests_seen += 1
        for name, value in report.user_properties:
            if name == "sockdoctor" and value not in self.leaks.setdefault(report.nodeid, []):
                self.leaks[report.nodeid].append(value)

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        """Sockets still open once every fixture is gone, not yet blamed on a test: those
        of session- or package-scoped fixtures that do not close what they open."""
        config = session.config
        if self.session_guard is not None:
            report = self.session_guard.check()
            report.leaks = [leak for leak in report.leaks
                            if leak.socket.inode not in self.reported]
            if report.leaks:
                self.session_leaks.append(_oneline(report, "session").splitlines())
                if hasattr(config, "workerinput"):  # an xdist worker tells the controller
                    config.workeroutput["sockdoctor_session"] = self.session_leaks[-1]  # type: ignore[attr-defined]
        if (self.session_leaks and self.settings.mode == "fail"
                and session.exitstatus == pytest.ExitCode.OK):
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: object) -> None:
        """xdist's controller: a worker's end-of-session leaks, sent in its workeroutput."""
        lines = getattr(node, "workeroutput", {}).get("sockdoctor_session")
        if lines:
            self.session_leaks.append(list(lines))

    def pytest_terminal_summary(self, terminalreporter: Any, config: pytest.Config) -> None:
        if hasattr(config, "workerinput"):
            return  # an xdist worker: the controller summarises
        _summary(terminalreporter, self)

    # --- helpers ---------------------------------------------------------------

    def _start(self, item: pytest.Item) -> Guard:
        # The previous test's last look ended a moment ago, with nothing run since:
        # it serves as this test's starting point (one look per test saved).
        view, self.last_view = self.last_view, None
        if self.session_guard is None and self.settings.mode != "off":
            self.session_guard = self._new_guard().start(view)  # for pytest_sessionfinish
            view = view if view is not None else self.session_guard.last_view
        if self.settings.scope == "test":
            return self._new_guard().start(view)
        key = _module_key(item)
        if self.module_guard is None or key != self.module_key:
            self.module_guard, self.module_key = self._new_guard().start(view), key
        return self.module_guard

    def _check(self, item: pytest.Item, guard: Guard, stuck_only: bool = False) -> GuardReport:
        _apply_allow(item, guard)
        return guard.check(stuck_only=stuck_only)

    def _report(self, item: pytest.Item, report: GuardReport, when: str, failed: bool) -> None:
        if report.ok:
            return
        where = item.nodeid if self.settings.scope == "test" else f"module {self.module_key}"
        text = report.text(where)
        self.reported.update(leak.socket.inode for leak in report.leaks)
        item.user_properties.append(("sockdoctor", _oneline(report, when)))
        if self.mode_of(item) == "warn":
            from .leakguard import SocketLeakWarning

            _path, lineno, _name = item.location
            warnings.warn_explicit(SocketLeakWarning(text), SocketLeakWarning, str(item.path),
                                   (lineno or 0) + 1)
        elif failed:  # the test already failed: add the leak, do not hide the failure
            item.add_report_section(when, "sockdoctor", text)
        else:
            pytest.fail(text, pytrace=False)


def _apply_allow(item: pytest.Item, guard: Guard) -> None:
    """The allow= of every sockdoctor mark on the test (fixtures may add marks in setup)."""
    applied = item.stash.setdefault(_APPLIED, set())
    for marker in item.iter_markers("sockdoctor"):
        if id(marker) not in applied and "allow" in marker.kwargs:
            applied.add(id(marker))
            rules = marker.kwargs["allow"]
            guard.allow(*(rules if isinstance(rules, list | tuple | set) else [rules]))


_APPLIED = pytest.StashKey[set]()


def _runner_dirs() -> tuple[str, ...]:
    """pytest's and pluggy's own code: not where a test's socket was made."""
    import os

    import _pytest
    import pluggy

    return tuple(os.path.join(os.path.dirname(m.__file__ or ""), "") for m in (_pytest, pluggy))


_RUNNER_DIRS = _runner_dirs()


def _module_key(item: pytest.Item) -> str:
    return item.nodeid.split("::", 1)[0]


def _oneline(report: GuardReport, when: str) -> str:
    phase = {"call": "end of the test", "teardown": "after teardown",
             "session": "still open at the end of the session"}[when]
    lines = [f"{report.summary()} ({phase})"]
    for leak in report.leaks:
        where = f", created at {leak.created_at}" if leak.created_at else ""
        lines.append(f"{leak.state} {leak.endpoints()}  {leak.holders()}{where}")
    return "\n".join(lines)


def _summary(tr: Any, checker: Checker) -> None:
    settings = checker.settings
    leaky = {nodeid: found for nodeid, found in checker.leaks.items() if found}
    if not leaky and not checker.session_leaks and settings.mode == "off":
        return  # only tests that asked were checked, and they said nothing
    tr.write_sep("=", "sockdoctor")
    scope = "per test" if settings.scope == "test" else "per module"
    for head, *rest in checker.session_leaks:
        tr.write_line(f"the session: {head} (opened by session or package fixtures, "
                      "or outside any test)")
        for line in rest:
            tr.write_line(f"    {line}")
    if not leaky:
        if not checker.session_leaks:
            n = checker.tests_seen
            tr.write_line(f"no TCP socket leaked ({n} test{'s' if n != 1 else ''}, "
                          f"{settings.mode} mode, checked {scope})")
        return
    total = sum(len(entry.splitlines()) - 1 for found in leaky.values() for entry in found)
    tr.write_line(f"{len(leaky)} test{'s' if len(leaky) != 1 else ''} leaked {total} TCP "
                  f"socket{'s' if total != 1 else ''} ({settings.mode} mode, checked {scope}):")
    for nodeid, found in leaky.items():
        for entry in found:
            head, *rest = entry.splitlines()
            tr.write_line(f"{nodeid}: {head}")
            for line in rest:
                tr.write_line(f"    {line}")
