"""The pytest plugin, run in a subprocess over sample test files (pytester).

Every sample keeps its sockets on loopback; each run is a separate pytest
process, so what it leaks dies with it.
"""

from __future__ import annotations

import re
import textwrap

import pytest

pytestmark = pytest.mark.slow

# Flags for every inner run: no hypothesis plugin (it imports all of hypothesis
# at the end of a run), and a short grace so failing samples stay quick.
QUIET = ("-p", "no:hypothesispytest", "-p", "no:cacheprovider")
BASE = (*QUIET, "--sockdoctor-grace=50")

SERVER_FIXTURE = """
    import selectors, socket, threading
    import pytest

    class EchoServer:
        '''Echoes on every connection; on EOF it forgets the connection (the bug).'''

        def __init__(self):
            self.listener = socket.create_server(("127.0.0.1", 0))
            self.port = self.listener.getsockname()[1]
            self.conns = {}
            self.sel = selectors.DefaultSelector()
            self.sel.register(self.listener, selectors.EVENT_READ)
            self.stopping = False
            self.thread = threading.Thread(target=self.serve, daemon=True)
            self.thread.start()

        def serve(self):
            while not self.stopping:
                for key, _ in self.sel.select(timeout=0.05):
                    if key.fileobj is self.listener:
                        conn, _ = self.listener.accept()
                        self.conns[conn.fileno()] = conn
                        self.sel.register(conn, selectors.EVENT_READ)
                        continue
                    data = key.fileobj.recv(1024)
                    if data:
                        key.fileobj.sendall(data)
                    else:
                        self.sel.unregister(key.fileobj)  # BUG: no close()
                        {fix}

        def stop(self):
            self.stopping = True
            self.thread.join()
            self.sel.close()
            self.listener.close()
            for conn in self.conns.values():
                conn.close()

    @pytest.fixture
    def echo_server():
        server = EchoServer()
        yield server
        server.stop()
"""

# Where the sample server makes the connection it leaks (pytester strips the text).
ACCEPT_LINE = next(n for n, line in enumerate(textwrap.dedent(SERVER_FIXTURE).strip().split("\n"),
                                              1) if "conn, _ = self.listener.accept()" in line)

ECHO_TEST = """
    import socket

    def test_echo(echo_server):
        with socket.create_connection(("127.0.0.1", echo_server.port)) as client:
            client.sendall(b"ping")
            assert client.recv(100) == b"ping"
"""


# A test that keeps the accepted end of a connection its client closed.
KEEPS_ACCEPTED = """
import socket
KEEP = []
def test_keeps_accepted():
    srv = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(srv.getsockname())
    conn, _ = srv.accept()
    {before_keeping}
    KEEP.append(conn)
    client.close(); srv.close()
"""

LISTENS_AND_FORGETS = """
import socket
KEEP = []
def test_listens_and_forgets():
    KEEP.append(socket.create_server(("127.0.0.1", 0)))
"""


# The everyday fixture: a server accepting in a thread, closing its connections at
# teardown. Beside it two real leaks: a client kept in a global, and a test that
# leaves the server side of its own connection open.
TEN_LINE_FIXTURE = """
    import socket, threading
    import pytest

    @pytest.fixture
    def server():
        srv = socket.create_server(("127.0.0.1", 0))
        conns = []
        def serve():
            while (conn := accept(srv)) is not None:
                conns.append(conn)
        thread = threading.Thread(target=serve)
        thread.start()
        yield srv.getsockname()
        srv.shutdown(socket.SHUT_RDWR)   # wakes accept()
        thread.join()
        srv.close()
        for conn in conns:
            conn.close()

    def accept(srv):
        try:
            return srv.accept()[0]
        except OSError:
            return None
"""

TEN_LINE_TESTS = """
import socket
import pytest

KEEP = []
many = pytest.mark.parametrize("i", range({n}))

@many
def test_clean(server, i):
    with socket.create_connection(server) as client:
        client.sendall(b"hello")

@many
def test_client_kept_in_a_global(server, i):
    KEEP.append(socket.create_connection(server))

@many
def test_leaves_its_server_side_open(i):
    srv = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(srv.getsockname())
    conn, _ = srv.accept()
    KEEP.append(conn)
    client.close()
    srv.close()
"""


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess(*BASE, *args, timeout=120)


def test_a_server_fixture_that_closes_at_teardown_is_not_blamed(
        pytester: pytest.Pytester) -> None:
    """The echo server forgets close() on EOF but closes everything at teardown: while the
    test runs its connection sits in CLOSE-WAIT, yet nothing is left once the test's
    fixtures are gone, and that is when a test is judged."""
    pytester.makeconftest(SERVER_FIXTURE.replace("{fix}", "pass"))
    pytester.makepyfile(test_echo=ECHO_TEST)
    result = run(pytester, "--sockdoctor=fail")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["no TCP socket leaked (1 test, fail mode, checked per test)"])


def test_the_ten_line_fixture_passes_every_time_and_real_leaks_fail_every_time(
        pytester: pytest.Pytester) -> None:
    """No verdict depends on thread scheduling (bench/pytest_attribution.py runs this
    50 times in separate processes)."""
    pytester.makeconftest(TEN_LINE_FIXTURE)
    pytester.makepyfile(test_ten=TEN_LINE_TESTS.format(n=15))
    result = run(pytester, "--sockdoctor=fail", "-rA")
    result.assert_outcomes(passed=45, errors=30)
    out = result.stdout.str()
    assert "ERROR test_ten.py::test_clean" not in out
    for i in range(15):
        for name in ("test_client_kept_in_a_global", "test_leaves_its_server_side_open"):
            assert f"ERROR test_ten.py::{name}[{i}]" in out
    result.stdout.fnmatch_lines(["*created at test_ten.py:14*",  # the global client
                                 "*created at test_ten.py:20*"])  # the accepted end


def test_the_fixed_server_passes(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(SERVER_FIXTURE.replace("{fix}", "key.fileobj.close()"))
    pytester.makepyfile(test_echo=ECHO_TEST)
    result = run(pytester, "--sockdoctor=fail")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["no TCP socket leaked (1 test, fail mode, checked per test)"])


APP = """
import socket

_connections = {}


def fetch(address):
    conn = _connections.get(address)
    if conn is None:
        conn = _connections[address] = socket.create_connection(address)
    conn.sendall(b"ping")
    return conn.recv(100)
"""

USES_APP = """
import app

def test_fetch(echo_server):
    assert app.fetch(("127.0.0.1", echo_server.port)) == b"ping"
"""


@pytest.mark.parametrize("stack", [False, True], ids=["creating line", "full stack"])
def test_a_client_cached_in_a_module_is_blamed_on_the_line_that_made_it(
        pytester: pytest.Pytester, stack: bool) -> None:
    pytester.makeconftest(SERVER_FIXTURE.replace("{fix}", "key.fileobj.close()"))
    pytester.makepyfile(app=APP, test_app=USES_APP)
    result = run(pytester, "--sockdoctor=fail", *(["--sockdoctor-stack"] if stack else []))
    result.assert_outcomes(passed=1, errors=1)
    out = result.stdout.str()
    # the server closed its end at teardown: the cached client is left in CLOSE-WAIT
    assert re.search(r"CLOSE-WAIT +127\.0\.0\.1:\d+ -> 127\.0\.0\.1:\d+ +python pid \d+ fd \d+",
                     out), out
    result.stdout.fnmatch_lines(["*created at app.py:9",
                                 "*conn = _connections[[]address[]] = socket.create_connection*"])
    assert "socket.py" not in out.split("= sockdoctor =")[0] or stack
    if stack:  # the test's line and socket.py's too
        result.stdout.fnmatch_lines(["*test_app.py:4", "*assert app.fetch(*"])
        assert "pluggy/" not in out
        assert "socket.py:" in out


def test_socket_left_open_is_an_error_at_teardown(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_open=LISTENS_AND_FORGETS)
    result = run(pytester, "--sockdoctor=fail")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*ERROR at teardown of test_listens_and_forgets*",
                                 "sockdoctor: 1 TCP socket leaked: 1 still open by "
                                 "test_open.py::test_listens_and_forgets*",
                                 "LISTEN *127.0.0.1:* -> 0.0.0.0:*  python pid * fd *",
                                 "*created at test_open.py:4"])


def test_shutdown_without_close_fails_with_the_dead_descriptor(
        pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_shut=KEEPS_ACCEPTED.format(
        before_keeping="conn.shutdown(socket.SHUT_RDWR)   # and never close()"))
    result = run(pytester, "--sockdoctor=fail")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["sockdoctor: 1 TCP socket leaked: 1 dead descriptor by *",
                                 "DEAD * 127.0.0.1:*, in no TCP table (socket:[[]*[]])  python "
                                 "pid * fd *",
                                 "*dead descriptor: the connection is over*",
                                 "*created at test_shut.py:6"])


CHILD_PROGRAM = """
    import socket
    srv = socket.create_server(("127.0.0.1", 0))
    print(srv.getsockname()[1], flush=True)
    conns = []
    while True:
        conn, _ = srv.accept()
        conns.append(conn)        # never closed: CLOSE-WAIT once the client leaves
"""

CHILDREN = """
    import socket, subprocess, sys, time
    import pytest

    LEFT = []

    def start_child():
        proc = subprocess.Popen([sys.executable, "leaky_child.py", "--port-on-stdout"],
                                stdout=subprocess.PIPE, text=True)
        return proc, int(proc.stdout.readline())

    @pytest.fixture(scope="session", autouse=True)
    def reaper():
        yield
        for proc in LEFT:
            proc.kill(); proc.wait(); proc.stdout.close()

    @pytest.fixture(scope="session")
    def shared_child():
        proc, port = start_child()
        yield port
        proc.kill(); proc.wait(); proc.stdout.close()

    @pytest.fixture
    def own_child():
        proc, port = start_child()
        yield port
        proc.kill(); proc.wait(); proc.stdout.close()

    def test_uses_the_session_child(shared_child):
        socket.create_connection(("127.0.0.1", shared_child)).close()   # CLOSE-WAIT there

    def test_uses_its_own_child(own_child):
        socket.create_connection(("127.0.0.1", own_child)).close()      # killed at teardown

    def test_leaves_its_child_running():
        proc, port = start_child()
        LEFT.append(proc)
        socket.create_connection(("127.0.0.1", port)).close()
        time.sleep(0.05)

    def test_last():   # the last test's teardown is also the session's (the reaper's)
        pass
"""


def test_child_processes_belong_to_whoever_started_them(pytester: pytest.Pytester) -> None:
    """A session fixture's server process piling up CLOSE-WAIT is not any test's; a test's
    own child is judged after the test, and blamed only when the test leaves it running."""
    pytester.makepyfile(test_child=CHILDREN, leaky_child=CHILD_PROGRAM)
    result = run(pytester, "--sockdoctor=fail", "-v")
    result.assert_outcomes(passed=4, errors=1)
    result.stdout.fnmatch_lines(["*ERROR at teardown of test_leaves_its_child_running*",
                                 "sockdoctor: 2 TCP sockets leaked: 1 CLOSE-WAIT, 1 still open "
                                 "by test_child.py::test_leaves_its_child_running*"])
    out = result.stdout.str()
    match = re.search(r"CLOSE-WAIT +127\.0\.0\.1:\d+ -> 127\.0\.0\.1:\d+ +python\S* "
                      r"\(.*leaky_child\.py --port-on-stdout\) pid (\d+) fd \d+", out)
    assert match, out
    assert f"held by process {match.group(1)}, not this Python process: sockdoctor sees its " \
           "sockets, not its stack" in out
    assert "ERROR test_child.py::test_uses" not in out


WARN_UNDER_ERROR = """
    [pytest]
    filterwarnings = error
"""


def test_warn_mode_fails_nothing_even_under_filterwarnings_error(
        pytester: pytest.Pytester) -> None:
    pytester.makeini(WARN_UNDER_ERROR)
    pytester.makeconftest(TEN_LINE_FIXTURE)
    pytester.makepyfile(test_ten=TEN_LINE_TESTS.format(n=2))
    result = run(pytester, "--sockdoctor=warn", "-W", "error")
    result.assert_outcomes(passed=6)
    assert result.ret == pytest.ExitCode.OK
    assert "warnings summary" not in result.stdout.str()
    result.stdout.fnmatch_lines(["*= sockdoctor =*", "4 tests leaked 4 TCP sockets (warn mode*",
                                 "test_ten.py::test_client_kept_in_a_global[[]0[]]: 1 TCP socket "
                                 "leaked*"])


ALLOWED = """
    import socket
    import pytest
    KEEP = []

    @pytest.mark.sockdoctor(allow=KEEP_PORT)
    def test_allowed_by_port():
        srv = socket.socket()
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("127.0.0.1", KEEP_PORT)); srv.listen()
        KEEP.append(srv)

    @pytest.mark.sockdoctor(allow="state close-wait")
    def test_allowed_by_ss_filter():
        srv = socket.create_server(("127.0.0.1", 0))
        client = socket.create_connection(srv.getsockname())
        conn, _ = srv.accept()
        KEEP.append(conn)
        client.close(); srv.close()

    def test_allowed_at_run_time(sockdoctor_guard):
        srv = socket.create_server(("127.0.0.1", 0))
        sockdoctor_guard.allow(srv)
        KEEP.append(srv)

    def test_not_allowed():
        KEEP.append(socket.create_server(("127.0.0.1", 0)))
"""


def test_allowed_sockets_do_not_fail(pytester: pytest.Pytester) -> None:
    import socket

    with socket.socket() as probe:  # a free port for the sample to bind
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    pytester.makepyfile(test_allow=ALLOWED.replace("KEEP_PORT", str(port)))
    result = run(pytester, "--sockdoctor=fail", "-v")
    result.assert_outcomes(passed=4, errors=1)
    result.stdout.fnmatch_lines(["ERROR test_allow.py::test_not_allowed - Failed: sockdoctor*"])
    assert "test_allowed_by" not in result.stdout.str().split("short test summary")[1]


def test_plugin_off_changes_nothing(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(SERVER_FIXTURE.replace("{fix}", "pass"))
    pytester.makepyfile(test_echo=ECHO_TEST)
    pytester.makepyfile(test_open=LISTENS_AND_FORGETS)
    default = run(pytester)
    off = run(pytester, "--sockdoctor=off")
    unloaded = pytester.runpytest_subprocess(*QUIET, "-p", "no:sockdoctor", timeout=120)
    for result in (default, off, unloaded):
        result.assert_outcomes(passed=2)
        assert "sockdoctor:" not in result.stdout.str()
        assert "= sockdoctor =" not in result.stdout.str()
        assert result.ret == 0


def test_the_fixture_opts_a_test_in_when_the_plugin_is_off(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_opt="""
        import socket
        KEEP = []
        def test_checked(sockdoctor_guard):
            KEEP.append(socket.create_server(("127.0.0.1", 0)))
        def test_unchecked():
            KEEP.append(socket.create_server(("127.0.0.1", 0)))
        def test_looks_mid_way(sockdoctor_guard):
            KEEP.append(socket.create_server(("127.0.0.1", 0)))
            report = sockdoctor_guard.check()
            assert [leak.state for leak in report.leaks] == ["LISTEN"]
            assert report.summary() == "1 TCP socket leaked: 1 still open"
    """)
    result = run(pytester)
    result.assert_outcomes(passed=3, errors=1)
    result.stdout.fnmatch_lines(["ERROR test_opt.py::test_checked - Failed: sockdoctor*"])


def test_session_fixture_sockets_are_not_blamed_on_the_test(pytester: pytest.Pytester) -> None:
    pytester.makeconftest("""
        import socket
        import pytest

        @pytest.fixture(scope="session")
        def shared_server():
            srv = socket.create_server(("127.0.0.1", 0))
            yield srv
            srv.close()
    """)
    pytester.makepyfile(test_session="""
        import socket
        def test_one(shared_server):
            socket.create_connection(shared_server.getsockname()).close()
            shared_server.accept()[0].close()
        def test_two(shared_server):
            assert shared_server.fileno() > 0
    """)
    result = run(pytester, "--sockdoctor=fail")
    result.assert_outcomes(passed=2)


SESSION_FIXTURE_LEAKS = """
    import socket
    import pytest

    KEEP = []

    @pytest.fixture(scope="session")
    def shared_server():
        srv = socket.create_server(("127.0.0.1", 0))
        yield srv
        KEEP.append(srv)        # BUG: the teardown forgets srv.close()
"""


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["one process", "xdist"])
def test_a_session_fixture_that_never_closes_is_named_at_the_end(
        pytester: pytest.Pytester, workers: list[str]) -> None:
    pytester.makeconftest(SESSION_FIXTURE_LEAKS)
    pytester.makepyfile(test_session="""
        def test_one(shared_server):
            assert shared_server.fileno() > 0
        def test_two(shared_server):
            assert shared_server.fileno() > 0
    """)
    result = run(pytester, "--sockdoctor=fail", *workers)
    result.assert_outcomes(passed=2)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*= sockdoctor =*",
                                 "fixture shared_server (session scope, conftest.py:6): 1 TCP "
                                 "socket leaked: 1 still open (after its teardown)",
                                 "    LISTEN 127.0.0.1:* -> 0.0.0.0:*  python pid * fd *, "
                                 "created at conftest.py:8"])
    assert "ERROR" not in result.stdout.str()
    warned = run(pytester, "--sockdoctor=warn", *workers)
    assert warned.ret == pytest.ExitCode.OK
    warned.stdout.fnmatch_lines(["fixture shared_server (session scope*1 TCP socket leaked*"])


def test_module_scope_checks_once_after_the_module(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_mod="""
        import socket
        import pytest

        @pytest.fixture(scope="module")
        def module_server():
            srv = socket.create_server(("127.0.0.1", 0))
            yield srv
            srv.close()

        def test_opens(module_server):
            pytest.kept = socket.create_server(("127.0.0.1", 0))

        def test_closes(module_server):
            pytest.kept.close()

        def test_leaks(module_server):
            pytest.kept = socket.create_server(("127.0.0.1", 0))
    """)
    per_test = run(pytester, "--sockdoctor=fail")
    per_test.assert_outcomes(passed=3, errors=2)  # test_opens and test_leaks
    per_module = run(pytester, "--sockdoctor=fail", "--sockdoctor-scope=module")
    per_module.assert_outcomes(passed=3, errors=1)
    per_module.stdout.fnmatch_lines(["*ERROR at teardown of test_leaks*",
                                     "sockdoctor: 1 TCP socket leaked: 1 still open by module "
                                     "test_mod.py*"])


def test_xdist_workers_report_leaks_on_their_tests(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(TEN_LINE_FIXTURE)
    pytester.makepyfile(test_ten=TEN_LINE_TESTS.format(n=4))
    result = run(pytester, "--sockdoctor=fail", "-n", "2")
    result.assert_outcomes(passed=12, errors=8)
    out = result.stdout.str()
    assert "ERROR test_ten.py::test_clean" not in out
    result.stdout.fnmatch_lines(["*= sockdoctor =*", "8 tests leaked 8 TCP sockets (fail mode*"])
    assert "gw" in out  # the tests really ran on workers


def test_bad_settings_are_one_sentence(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nsockdoctor = loud\n")
    pytester.makepyfile(test_x="def test_x():\n    pass\n")
    result = run(pytester)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*sockdoctor: mode must be fail, warn or off, not 'loud'"])
