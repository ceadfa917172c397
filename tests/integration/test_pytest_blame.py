"""Who the pytest plugin blames, case by case: broader fixtures, threads, asyncio, pools.

Each sample runs in its own pytest subprocess (pytester) on loopback, in fail
mode; a sample's tests that must not be blamed pass, the others error at
teardown.
"""

from __future__ import annotations

import textwrap

import pytest

pytestmark = pytest.mark.slow

QUIET = ("-p", "no:hypothesispytest", "-p", "no:cacheprovider", "--sockdoctor-grace=50")


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess(*QUIET, "--sockdoctor=fail", "-rA", *args, timeout=120)


def errors(result: pytest.RunResult) -> set[str]:
    """The names of the tests that errored (at teardown: sockdoctor's verdicts)."""
    return {line.split("::")[1].split(" ")[0] for line in result.outlines
            if line.startswith("ERROR ")}


MODULE_SERVER = """
    import socket, threading
    import pytest

    KEEP = []

    class Server:
        def __init__(self, close_at_end):
            self.srv = socket.create_server(("127.0.0.1", 0))
            self.conns, self.close_at_end = [], close_at_end
            self.thread = threading.Thread(target=self.serve)
            self.thread.start()

        def serve(self):
            while True:
                try:
                    conn = self.srv.accept()[0]
                except OSError:
                    return
                conn.sendall(b"hi")
                self.conns.append(conn)                    # held until the module ends

        def stop(self):
            self.srv.shutdown(socket.SHUT_RDWR)
            self.thread.join()
            self.srv.close()
            if self.close_at_end:
                for conn in self.conns:
                    conn.close()
            else:
                KEEP.extend(self.conns)         # BUG: never closed

    @pytest.fixture(scope="module")
    def server(request):
        server = Server(close_at_end=request.module.CLOSE)
        yield server.srv.getsockname()
        server.stop()
"""

MODULE_TESTS = """
    import socket
    CLOSE = {close}

    def test_one(server):
        with socket.create_connection(server) as client:
            assert client.recv(2) == b"hi"

    def test_two(server):
        client = socket.create_connection(server)
        assert client.recv(2) == b"hi"
        client.close()
"""


def test_a_module_server_holding_connections_blames_no_test(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(MODULE_SERVER)
    pytester.makepyfile(test_closes=MODULE_TESTS.format(close=True),
                        test_never_closes=MODULE_TESTS.format(close=False))
    result = run(pytester)
    result.assert_outcomes(passed=4)
    assert result.ret == pytest.ExitCode.TESTS_FAILED  # the fixture's own leak, at its end
    result.stdout.fnmatch_lines([
        "*= sockdoctor =*",
        "fixture server (module scope, conftest.py:*): 2 TCP sockets leaked: 2 CLOSE-WAIT "
        "(after its teardown)",
        "    CLOSE-WAIT 127.0.0.1:* -> 127.0.0.1:*  python pid * fd *, created at conftest.py:16",
    ])
    assert result.stdout.str().count("fixture server (module scope") == 1


THREADS = """
    import socket, threading, time

    KEEP = []

    def accept_one(srv, keep):
        conn, _ = srv.accept()
        if keep:
            KEEP.append(conn)
        else:
            conn.close()

    def test_thread_joined_and_closed():
        srv = socket.create_server(("127.0.0.1", 0))
        thread = threading.Thread(target=accept_one, args=(srv, False))
        thread.start()
        socket.create_connection(srv.getsockname()).close()
        thread.join(); srv.close()

    def test_thread_keeps_what_it_accepted():
        srv = socket.create_server(("127.0.0.1", 0))
        thread = threading.Thread(target=accept_one, args=(srv, True), name="acceptor")
        thread.start()
        socket.create_connection(srv.getsockname()).close()
        thread.join(); srv.close()

    def test_thread_outlives_the_test():
        def later():
            time.sleep(0.5)
            KEEP.append(socket.socket())          # made after the test was judged
            KEEP.append(socket.create_server(("127.0.0.1", 0)))
        threading.Thread(target=later, name="straggler").start()

    def test_after():
        time.sleep(1)
"""


def test_threads_a_test_starts_are_the_tests(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_threads=THREADS)
    result = run(pytester)
    result.assert_outcomes(passed=4, errors=1)
    assert errors(result) == {"test_thread_keeps_what_it_accepted"}
    result.stdout.fnmatch_lines([
        "sockdoctor: 1 TCP socket leaked: 1 CLOSE-WAIT by "
        "test_threads.py::test_thread_keeps_what_it_accepted*",
        "*created at test_threads.py:6 (thread acceptor)",
    ])
    # the straggler's socket is the test's that started the thread, not test_after's
    result.stdout.fnmatch_lines([
        "test_threads.py::test_thread_outlives_the_test: 2 TCP sockets leaked: 2 still open "
        "(made after its end, by a thread it started)",
        "    UNCONN socket:[[]*[]], in no TCP table  python pid * fd *, created at "
        "test_threads.py:29",
        "    LISTEN 127.0.0.1:* -> 0.0.0.0:*  python pid * fd *, created at test_threads.py:30"])
    assert result.ret == pytest.ExitCode.TESTS_FAILED


ASYNCIO = """
    import asyncio

    WRITERS = []

    async def exchange(keep_server_side):
        async def handle(reader, writer):
            await reader.read(100)
            if keep_server_side:
                WRITERS.append(writer)        # BUG: never closed
            else:
                writer.close()
                await writer.wait_closed()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname())
        writer.write(b"hello")
        await writer.drain()
        writer.close()
        await writer.wait_closed()
        await asyncio.sleep(0.05)
        server.close()
        await server.wait_closed()

    def test_asyncio_server_closes():
        asyncio.run(exchange(False))

    def test_asyncio_server_keeps_the_connection():
        asyncio.run(exchange(True))
"""


def test_an_asyncio_server_in_the_test(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_aio=ASYNCIO)
    result = run(pytester)
    result.assert_outcomes(passed=2, errors=1)
    assert errors(result) == {"test_asyncio_server_keeps_the_connection"}
    result.stdout.fnmatch_lines(["*CLOSE-WAIT *127.0.0.1:* -> 127.0.0.1:*  python pid * fd *",
                                 # accepted by the loop: the test's line that ran it
                                 "*created at test_aio.py:28"])


POOL_LIBRARY = """
    import socket

    class Pool:
        '''Keeps one connection per address, for the next request.'''

        def __init__(self):
            self.conns = {}

        def request(self, address):
            conn = self.conns.get(address)
            if conn is None:
                conn = self.conns[address] = socket.create_connection(address)
            conn.sendall(b"x")

    _DEFAULT = Pool()

    def request(address):
        _DEFAULT.request(address)
"""

POOL_TESTS = """
    import socket
    import pytest
    import fakepool

    @pytest.fixture(scope="session")
    def listener():
        srv = socket.create_server(("127.0.0.1", 0))
        yield srv
        srv.close()

    def test_first(listener):
        fakepool.request(listener.getsockname())

    def test_second(listener):
        fakepool.request(listener.getsockname())
"""


@pytest.mark.parametrize("strict", [False, True], ids=["default", "strict"])
def test_a_module_level_pool_is_reported_once(pytester: pytest.Pytester, strict: bool) -> None:
    (pytester.path / "lib").mkdir()
    (pytester.path / "lib" / "fakepool.py").write_text(textwrap.dedent(POOL_LIBRARY))
    pytester.makeini("[pytest]\npythonpath = lib\nsockdoctor_library = lib\n")
    pytester.makepyfile(test_pool=POOL_TESTS)
    result = run(pytester, *(["--sockdoctor-strict"] if strict else []))
    if strict:
        result.assert_outcomes(passed=2, errors=1)
        assert errors(result) == {"test_first"}
        result.stdout.fnmatch_lines(["*ESTAB* created at test_pool.py:12"])
        return
    result.assert_outcomes(passed=2)
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines([
        "held by a long-lived pool: a fakepool.Pool kept in fakepool._DEFAULT, first used by "
        "test_pool.py::test_first: 1 TCP socket (not a leak; --sockdoctor-strict counts it)",
        "    ESTAB 127.0.0.1:* -> 127.0.0.1:*  python pid * fd *, created at test_pool.py:12",
        "no TCP socket leaked (2 tests, fail mode, checked per test)"])


SESSION_CLIENT = """
    import socket
    import pytest

    class Client:
        '''Connects on first use and keeps the connection.'''

        def __init__(self, address):
            self.address, self.conn = address, None

        def send(self, data):
            if self.conn is None:
                self.conn = socket.create_connection(self.address)
            self.conn.sendall(data)

    @pytest.fixture(scope="session")
    def listener():
        srv = socket.create_server(("127.0.0.1", 0))
        yield srv
        srv.close()

    @pytest.fixture(scope="session")
    def client(listener):
        client = Client(listener.getsockname())
        yield client
        if client.conn is not None:
            client.conn.close()
"""


def test_a_connection_a_session_fixture_keeps_is_the_fixtures(
        pytester: pytest.Pytester) -> None:
    """The test made the connection (the client connects lazily), but the session's
    client keeps it, and closes it at its teardown: nobody leaked."""
    pytester.makeconftest(SESSION_CLIENT)
    pytester.makepyfile(test_client="""
        def test_first(client):
            client.send(b"a")

        def test_second(client):
            client.send(b"b")
    """)
    result = run(pytester)
    result.assert_outcomes(passed=2)
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["no TCP socket leaked (2 tests, fail mode, checked per test)"])
