"""pytest plugin: fail (or report) tests that leave TCP sockets behind.

Registered through the `pytest11` entry point, so installing sockdoctor is
enough; it does nothing until asked (`--sockdoctor=fail|warn`, the ini
option `sockdoctor`, the marker or the fixture), so installing it never
changes anybody's results.

Who is blamed is decided from who made each socket (socktrack.py records it
when the socket is made), and when is fixed: a test is judged after its
function-scoped fixtures are torn down, for the sockets it made (in its
setup, body or teardown, in threads it started, accepted on its listeners,
or held by processes it started) that are still open then. A broader
fixture's sockets (and its threads' and processes') are judged when its scope
ends; a pool of an installed package kept in a module is reported once per
session. Warn mode reports through pytest's report sections and terminal
summary, never through Python warnings, so `filterwarnings = error` cannot
turn it into failures. blame.py takes the verdicts; docs/pytest.md has the
details.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from .blame import Judge, Verdict
    from .guardreport import GuardReport, Leak
    from .socktrack import Maker, Tracker

MODES = ("fail", "warn", "off")
SCOPES = ("test", "module")
BROADER = {"test": ("class", "module", "package", "session"), "module": ("package", "session")}
MARKER = ("sockdoctor(allow=..., mode=...): allow known TCP sockets (a port, an ss filter such "
          "as 'sport = :8080', a socket object, or a function of a sockdoctor Leak), or set "
          "the leak check's mode (fail, warn, off) for these tests")
_CHECKER = pytest.StashKey["Checker"]()
_MAKER = pytest.StashKey["Maker"]()
_RULES = pytest.StashKey["list"]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("sockdoctor", "TCP socket leak checks (sockdoctor)")
    group.addoption("--sockdoctor", choices=MODES, default=None, dest="sockdoctor",
                    help="fail or warn when a test leaks TCP sockets (default: off, or the "
                         "ini option sockdoctor)")
    group.addoption("--sockdoctor-scope", choices=SCOPES, default=None,
                    dest="sockdoctor_scope", help="judge every test (default) or each module "
                                                  "as a whole")
    group.addoption("--sockdoctor-grace", type=float, default=None, metavar="MS",
                    dest="sockdoctor_grace",
                    help="milliseconds a closing socket gets before it counts (default 100)")
    group.addoption("--sockdoctor-strict", action="store_true", default=None,
                    dest="sockdoctor_strict",
                    help="sockets kept by long-lived pools of installed packages are leaks too")
    group.addoption("--sockdoctor-stack", action="store_true", default=None,
                    dest="sockdoctor_stack", help="show the full stack that created each "
                                                  "leaked socket, not only the creating line")
    parser.addini("sockdoctor", "leak check mode: fail, warn or off", default="off")
    parser.addini("sockdoctor_scope", "leak check scope: test or module", default="test")
    parser.addini("sockdoctor_grace", "grace period in milliseconds", default="100")
    parser.addini("sockdoctor_strict", "pools of installed packages count as leaks",
                  type="bool", default=False)
    parser.addini("sockdoctor_stack", "show full creation stacks", type="bool", default=False)
    parser.addini("sockdoctor_library", "directories whose code is library code, not the "
                  "creating line (besides the standard library and site-packages)",
                  type="paths", default=[])


@dataclass(frozen=True)
class Settings:
    mode: str
    scope: str
    grace_ms: float
    strict: bool = False
    stack: bool = False
    library: tuple[str, ...] = ()

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
            grace = float(pick("sockdoctor_grace"))
        except ValueError as exc:
            raise pytest.UsageError(f"sockdoctor: {exc}") from None
        if grace < 0:
            raise pytest.UsageError("sockdoctor: the grace period cannot be negative")
        library = tuple(os.path.join(str(p), "") for p in config.getini("sockdoctor_library"))
        return cls(mode, scope, grace, bool(pick("sockdoctor_strict")),
                   bool(pick("sockdoctor_stack")), library)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER)
    settings = Settings.of(config)
    if settings.mode != "off":
        _register(config, settings)


def pytest_unconfigure(config: pytest.Config) -> None:
    checker = config.stash.get(_CHECKER, None)
    if checker is not None:
        checker.tracker.uninstall()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """With the plugin off, a test that asks for the check (marker or fixture) still gets it."""
    if _CHECKER not in config.stash and any(_opted_in(item) for item in items):
        _register(config, Settings.of(config))


def _register(config: pytest.Config, settings: Settings) -> None:
    from .blame import Judge
    from .socktrack import Tracker

    tracker = Tracker().install()
    judge = Judge(tracker, settings.grace_ms / 1000, strict=settings.strict,
                  full_stack=settings.stack, extra_library=settings.library,
                  hide=_runner_dirs())
    checker = Checker(settings, tracker, judge)
    config.stash[_CHECKER] = checker
    config.pluginmanager.register(checker, "sockdoctor-checker")


def _opted_in(item: pytest.Item) -> bool:
    marker = item.get_closest_marker("sockdoctor")
    return (marker is not None and marker.kwargs.get("mode") in ("fail", "warn")) or \
        "sockdoctor_guard" in getattr(item, "fixturenames", ())


class SocketWatch:
    """What the `sockdoctor_guard` fixture gives a test: allow sockets, look mid-way."""

    def __init__(self, checker: Checker, item: pytest.Item) -> None:
        self._checker, self._item = checker, item

    def allow(self, *rules: Any) -> SocketWatch:
        """Never report sockets matching a rule (as the marker's allow=)."""
        from .leakguard import _compile

        self._item.stash.setdefault(_RULES, []).extend(_compile(rule) for rule in rules)
        return self

    def check(self) -> GuardReport:
        """What this test made that is still open now; those are not reported again."""
        return self._checker.look(self._item)


@pytest.fixture
def sockdoctor_guard(request: pytest.FixtureRequest) -> SocketWatch:
    """sockdoctor's watch over this test.

    Requesting it turns the leak check on for this test even when
    --sockdoctor is off. `sockdoctor_guard.allow(8080)` allows sockets at run
    time; `sockdoctor_guard.check()` returns what the test holds open so far
    (those sockets are then the test's business and are not reported again).
    """
    checker = request.config.stash[_CHECKER]
    if request.node.stash.get(_MAKER, None) is None or checker.mode_of(request.node) == "off":
        raise pytest.UsageError(f"{request.node.nodeid}: sockdoctor does not check this test "
                                "(its mark says mode='off')")
    return SocketWatch(checker, request.node)


@dataclass(eq=False)  # pytest keeps plugins in sets: identity, not value
class Checker:
    """The hooks, registered only when some test is checked."""

    settings: Settings
    tracker: Tracker
    judge: Judge
    fixtures: dict[Any, Maker] = field(default_factory=dict)  # live broader fixtures
    current: Maker | None = None  # the test (or module) being set up, run or torn down
    module_maker: Maker | None = None
    leaks: dict[str, list[str]] = field(default_factory=dict)  # nodeid -> summaries
    tests_seen: int = 0
    session_leaks: list[list[str]] = field(default_factory=list)  # fixtures', the session's
    pools: dict[str, list[str]] = field(default_factory=dict)  # pool -> lines, once each

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

    # --- who is running now ----------------------------------------------------

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> Generator[None, None, None]:
        from .socktrack import Maker

        self.judge.claim_children(self.tracker.maker)  # started between tests
        if self.settings.scope == "module":
            key = _module_key(item)
            if self.module_maker is None or self.module_maker.name != key:
                self.module_maker = Maker("test", f"module {key}")
            maker = self.module_maker
        else:
            maker = Maker("test", item.nodeid)
        maker.checked = maker.checked and self.mode_of(item) != "off"
        item.stash[_MAKER] = self.current = self.tracker.maker = maker
        return (yield)

    @pytest.hookimpl(wrapper=True)
    def pytest_fixture_setup(self, fixturedef: pytest.FixtureDef[Any],
                             request: pytest.FixtureRequest) -> Generator[None, Any, Any]:
        if fixturedef.scope not in BROADER[self.settings.scope]:
            return (yield)
        from .socktrack import Maker

        before = self.tracker.maker
        self.judge.claim_children(before)
        maker = Maker("fixture", fixturedef.argname, fixturedef.scope, _where(fixturedef))
        self.tracker.maker = maker
        try:
            value = yield
        finally:
            self.judge.claim_children(maker)
            self.tracker.maker = before
        maker.value_id = id(value)
        self.fixtures[fixturedef] = maker
        fixturedef.addfinalizer(lambda: setattr(self.tracker, "maker", maker))
        return value

    def pytest_fixture_post_finalizer(self, fixturedef: pytest.FixtureDef[Any],
                                      request: pytest.FixtureRequest) -> None:
        maker = self.fixtures.pop(fixturedef, None)
        if maker is None:
            return
        self.tracker.maker = self.current or self._session()
        if self.settings.mode != "off":
            self._session_verdict(maker, self.judge.judge(maker, self._values()),
                                  "after its teardown")
        maker.done = True

    # --- verdicts ----------------------------------------------------------------

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_teardown(self, item: pytest.Item,
                                nextitem: pytest.Item | None) -> Generator[None, None, None]:
        maker = item.stash.get(_MAKER, None)
        last = self.settings.scope == "test" or nextitem is None or \
            _module_key(nextitem) != _module_key(item)
        try:
            result = yield
        except BaseException:
            self._finish(item, maker, last, failed=True)
            raise
        self._finish(item, maker, last, failed=False)
        return result

    def _finish(self, item: pytest.Item, maker: Maker | None, last: bool, failed: bool) -> None:
        if maker is None:
            return
        self.current = None
        self.tracker.maker = self._session()
        if not last:
            return
        self.judge.claim_children(maker)
        self.tracker.forget_closed()
        maker.done = True
        if not maker.checked:
            return
        verdict = self.judge.judge(maker, self._values(), _allowed(item))
        self._keep_pools(verdict, maker)
        self._report(item, verdict.leaks, failed)

    def look(self, item: pytest.Item) -> GuardReport:
        """The sockdoctor_guard fixture's check(): what the test holds open now."""
        from .guardreport import GuardReport

        maker = item.stash[_MAKER]
        verdict = self.judge.judge(maker, self._values(), _allowed(item))
        return GuardReport(verdict.leaks, 1, len(verdict.leaks))

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when == "teardown":
            self.tests_seen += 1
        for name, value in report.user_properties:
            if name == "sockdoctor" and value not in self.leaks.setdefault(report.nodeid, []):
                self.leaks[report.nodeid].append(value)

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        """What is still open once every fixture is gone: sockets made outside any test,
        and sockets made for a test after it was judged (by a thread it left running)."""
        config = session.config
        if self.settings.mode != "off":
            self._late_verdicts()
        if hasattr(config, "workerinput"):  # an xdist worker tells the controller
            config.workeroutput["sockdoctor_session"] = self.session_leaks  # type: ignore[attr-defined]
            config.workeroutput["sockdoctor_pools"] = self.pools  # type: ignore[attr-defined]
        if (self.session_leaks and self.settings.mode == "fail"
                and session.exitstatus == pytest.ExitCode.OK):
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: object) -> None:
        """xdist's controller: a worker's session-level findings, sent in its workeroutput."""
        output = getattr(node, "workeroutput", {})
        self.session_leaks.extend(list(lines) for lines in output.get("sockdoctor_session", ()))
        for what, lines in output.get("sockdoctor_pools", {}).items():
            self.pools.setdefault(what, list(lines))

    def pytest_terminal_summary(self, terminalreporter: Any, config: pytest.Config) -> None:
        if hasattr(config, "workerinput"):
            return  # an xdist worker: the controller summarises
        _summary(terminalreporter, self)

    # --- helpers ---------------------------------------------------------------

    def _session(self) -> Maker:
        from .socktrack import SESSION

        return SESSION

    def _values(self) -> dict[int, Maker]:
        return {maker.value_id: maker for maker in self.fixtures.values() if maker.value_id}

    def _late_verdicts(self) -> None:
        from .socktrack import SESSION

        self.judge.claim_children(SESSION)
        late: dict[int, Maker] = {}
        for rec in self.tracker.open_records():
            if rec.maker.kind in ("test", "fixture") and rec.maker.done and rec.maker.checked:
                late.setdefault(id(rec.maker), rec.maker)
        for maker in [SESSION, *late.values()]:
            verdict = self.judge.judge(maker, {})
            self._keep_pools(verdict, maker)
            when = "at the end of the session" if maker is SESSION else \
                "made after its end, by a thread it started"
            self._session_verdict(maker, verdict, when)

    def _session_verdict(self, maker: Maker, verdict: Verdict, when: str) -> None:
        from .guardreport import GuardReport

        self._keep_pools(verdict, maker)
        if verdict.leaks:
            report = GuardReport(verdict.leaks)
            self.session_leaks.append([f"{maker.label()}: {report.summary()} ({when})",
                                       *_leak_lines(verdict.leaks)])

    def _keep_pools(self, verdict: Verdict, maker: Maker) -> None:
        for pool in verdict.pools:
            lines = self.pools.setdefault(pool.what, [f"first used by {maker.label()}"])
            lines.extend(_leak_lines(pool.leaks))
        verdict.pools = []

    def _report(self, item: pytest.Item, leaks: list[Leak], failed: bool) -> None:
        from .guardreport import GuardReport

        if not leaks:
            return
        report = GuardReport(leaks, grace_ms=round(self.settings.grace_ms))
        where = item.nodeid if self.settings.scope == "test" else f"module {_module_key(item)}"
        text = report.text(where)
        item.user_properties.append(
            ("sockdoctor", "\n".join([f"{report.summary()} (after teardown)",
                                      *_leak_lines(leaks)])))
        if self.mode_of(item) == "warn" or failed:  # never hide a failure under ours
            item.add_report_section("teardown", "sockdoctor", text)
        else:
            pytest.fail(text, pytrace=False)


def _allowed(item: pytest.Item) -> Callable[[Leak], bool]:
    """The allow= of every sockdoctor mark on the test (fixtures may add marks in setup),
    and what the test allowed through sockdoctor_guard.allow()."""
    from .leakguard import _compile

    rules = list(item.stash.get(_RULES, []))
    for marker in item.iter_markers("sockdoctor"):
        if "allow" in marker.kwargs:
            allow = marker.kwargs["allow"]
            rules.extend(_compile(rule) for rule in
                         (allow if isinstance(allow, list | tuple | set) else [allow]))
    return lambda leak: any(rule(leak) for rule in rules)


def _runner_dirs() -> tuple[str, ...]:
    """pytest's, pluggy's and runpy's code: not where a test's socket was made."""
    import _pytest
    import pluggy

    dirs = (os.path.join(os.path.dirname(m.__file__ or ""), "") for m in (_pytest, pluggy, pytest))
    return (*dirs, "<frozen")


def _where(fixturedef: pytest.FixtureDef[Any]) -> str:
    code = getattr(fixturedef.func, "__code__", None)
    if code is None:
        return ""
    from .guardreport import _short

    return f"{_short(code.co_filename)}:{code.co_firstlineno}"


def _module_key(item: pytest.Item) -> str:
    return item.nodeid.split("::", 1)[0]


def _leak_lines(leaks: list[Leak]) -> list[str]:
    lines = []
    for leak in leaks:
        where = f", created at {leak.created_at}" if leak.created_at else ""
        lines.append(f"{leak.state} {leak.endpoints()}  {leak.holders()}{where}")
    return lines


def _summary(tr: Any, checker: Checker) -> None:
    settings = checker.settings
    leaky = {nodeid: found for nodeid, found in checker.leaks.items() if found}
    if not leaky and not checker.session_leaks and not checker.pools and settings.mode == "off":
        return  # only tests that asked were checked, and they said nothing
    tr.write_sep("=", "sockdoctor")
    scope = "per test" if settings.scope == "test" else "per module"
    for head, *rest in checker.session_leaks:
        tr.write_line(head)
        for line in rest:
            tr.write_line(f"    {line}")
    for what, (first, *rest) in checker.pools.items():
        n = len(rest)
        tr.write_line(f"held by a long-lived pool: {what}, {first}: {n} TCP socket"
                      f"{'s' if n != 1 else ''} (not a leak; --sockdoctor-strict counts it)")
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
