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


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess(*BASE, *args, timeout=120)


def test_close_wait_in_a_fixture_server_fails_the_test_with_the_creating_line(
        pytester: pytest.Pytester) -> None:
    pytester.makeconftest(SERVER_FIXTURE.replace("{fix}", "pass"))
    pytester.makepyfile(test_echo=ECHO_TEST)
    result = run(pytester, "--sockdoctor=fail", "--sockdoctor-tracemalloc=20")
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    assert re.search(r"CLOSE-WAIT +127\.0\.0\.1:\d+ -> 127\.0\.0\.1:\d+ +python pid \d+ fd \d+",
                     out), out
    assert f"created at conftest.py:{ACCEPT_LINE}" in out
    assert "conn, _ = self.listener.accept()" in out
    result.stdout.fnmatch_lines(["FAILED test_echo.py::test_echo - Failed: sockdoctor: 1 TCP*"])
    # the terminal summary at the end names the test and the socket once more
    result.stdout.fnmatch_lines(["*= sockdoctor =*", "1 test leaked 1 TCP socket (fail mode*",
                                 "test_echo.py::test_echo: 1 TCP socket leaked: 1 CLOSE-WAIT*",
                                 f"    CLOSE-WAIT 127.0.0.1:*created at conftest.py:{ACCEPT_LINE}"])


def test_the_fixed_server_passes(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(SERVER_FIXTURE.replace("{fix}", "key.fileobj.close()"))
    pytester.makepyfile(test_echo=ECHO_TEST)
    result = run(pytester, "--sockdoctor=fail")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["no TCP socket leaked (1 test, fail mode, checked per test)"])


def test_without_tracemalloc_the_report_says_how_to_turn_it_on(
        pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_keep=KEEPS_ACCEPTED.format(before_keeping=""))
    result = run(pytester, "--sockdoctor=fail")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["CLOSE-WAIT *",
                                 "*where it was created: unknown (tracemalloc is off: run pytest "
                                 "with --sockdoctor-tracemalloc=20, or set PYTHONTRACEMALLOC=20)"])


def test_socket_left_open_is_an_error_at_teardown(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_open=LISTENS_AND_FORGETS)
    result = run(pytester, "--sockdoctor=fail", "--sockdoctor-tracemalloc=5")
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
    result = run(pytester, "--sockdoctor=fail", "--sockdoctor-tracemalloc=5")
    result.assert_outcomes(failed=1)
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

CHILD_SERVER = """
    import socket, subprocess, sys, time
    import pytest

    @pytest.fixture
    def child_server():
        proc = subprocess.Popen([sys.executable, "leaky_child.py", "--port-on-stdout"],
                                stdout=subprocess.PIPE, text=True)
        port = int(proc.stdout.readline())
        yield proc, port
        proc.kill()
        proc.wait()
        proc.stdout.close()

    def test_talks_to_child(child_server):
        proc, port = child_server
        socket.create_connection(("127.0.0.1", port)).close()
        time.sleep(0.05)
"""


def test_close_wait_in_a_child_process_names_the_child(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_child=CHILD_SERVER, leaky_child=CHILD_PROGRAM)
    result = run(pytester, "--sockdoctor=fail")
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    match = re.search(r"CLOSE-WAIT +127\.0\.0\.1:\d+ -> 127\.0\.0\.1:\d+ +python\S* "
                      r"\(.*leaky_child\.py --port-on-stdout\) pid (\d+) fd \d+", out)
    assert match, out
    assert f"held by process {match.group(1)}, not this Python process: sockdoctor sees its " \
           "sockets, not its stack" in out


def test_warn_mode_passes_with_warnings(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(SERVER_FIXTURE.replace("{fix}", "pass"))
    pytester.makepyfile(test_echo=ECHO_TEST)
    result = run(pytester, "--sockdoctor=warn")
    result.assert_outcomes(passed=1, warnings=1)
    result.stdout.fnmatch_lines(["*warnings summary*", "test_echo.py::test_echo",
                                 "*SocketLeakWarning: sockdoctor: 1 TCP socket leaked: 1 "
                                 "CLOSE-WAIT*",
                                 "*= sockdoctor =*", "1 test leaked 1 TCP socket (warn mode*"])
    assert result.ret == 0


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
                                 "the session: 1 TCP socket leaked: 1 still open (still open at "
                                 "the end of the session) (opened by session or package "
                                 "fixtures, or outside any test)",
                                 "    LISTEN 127.0.0.1:* -> 0.0.0.0:*  python pid * fd *"])
    warned = run(pytester, "--sockdoctor=warn", *workers)
    assert warned.ret == pytest.ExitCode.OK
    warned.stdout.fnmatch_lines(["the session: 1 TCP socket leaked*"])


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
    pytester.makeconftest(SERVER_FIXTURE.replace("{fix}", "pass"))
    pytester.makepyfile(test_echo=ECHO_TEST)
    pytester.makepyfile(test_many="\n".join(
        f"def test_clean_{i}():\n    pass\n" for i in range(6)))
    result = run(pytester, "--sockdoctor=fail", "-n", "2", "--sockdoctor-tracemalloc=20")
    result.assert_outcomes(passed=6, failed=1)
    result.stdout.fnmatch_lines([f"*created at conftest.py:{ACCEPT_LINE}*",
                                 "FAILED test_echo.py::test_echo - Failed: sockdoctor: 1 TCP *",
                                 ])
    result.stdout.fnmatch_lines(["*= sockdoctor =*", "1 test leaked 1 TCP socket (fail mode*",
                                 "test_echo.py::test_echo: 1 TCP socket leaked: 1 CLOSE-WAIT*"])
    assert "gw" in result.stdout.str()  # the tests really ran on workers


def test_bad_settings_are_one_sentence(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nsockdoctor = loud\n")
    pytester.makepyfile(test_x="def test_x():\n    pass\n")
    result = run(pytester)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*sockdoctor: mode must be fail, warn or off, not 'loud'"])
