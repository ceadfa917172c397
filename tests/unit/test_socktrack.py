"""socktrack: who made each socket, decided when it is made; holders: who keeps it.

Real sockets on loopback in this process, closed by every test.
"""

from __future__ import annotations

import socket
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from sockdoctor import holders
from sockdoctor.socktrack import Maker, Tracker, creation_site, library_dirs

A, B = Maker("test", "a"), Maker("test", "b")


@pytest.fixture
def tracker() -> Iterator[Tracker]:
    made = Tracker().install()
    made.maker = A
    yield made
    made.uninstall()


@pytest.fixture
def closing() -> Iterator[list[socket.socket]]:
    socks: list[socket.socket] = []
    yield socks
    for sock in socks:
        sock.close()


def record_of(tracker: Tracker, sock: socket.socket):  # type: ignore[no-untyped-def]
    return tracker.records[(Path(f"/proc/self/fd/{sock.fileno()}").stat().st_ino,
                            sock.fileno())]


def test_an_accepted_connection_is_its_listeners_makers(
        tracker: Tracker, closing: list[socket.socket]) -> None:
    srv = socket.create_server(("127.0.0.1", 0))
    closing.append(srv)
    tracker.maker = B  # a later test connects; the listener's maker accepts
    closing.append(socket.create_connection(srv.getsockname()))
    conn, _ = srv.accept()
    closing.append(conn)
    assert record_of(tracker, conn).maker is A
    assert record_of(tracker, closing[1]).maker is B


def test_a_thread_works_for_whoever_started_it(
        tracker: Tracker, closing: list[socket.socket]) -> None:
    go = threading.Event()
    thread = threading.Thread(target=lambda: (go.wait(), closing.append(socket.socket())))
    thread.start()  # started while A runs
    tracker.maker = B
    go.set()
    thread.join()
    assert record_of(tracker, closing[0]).maker is A
    assert record_of(tracker, closing[0]).thread == thread.name


def test_a_shared_pool_thread_works_for_whoever_asks(
        tracker: Tracker, closing: list[socket.socket]) -> None:
    with ThreadPoolExecutor(1) as pool:
        pool.submit(lambda: None).result()  # the worker thread starts while A runs
        tracker.maker = B
        closing.append(pool.submit(socket.socket).result())
    assert record_of(tracker, closing[0]).maker is B


def test_a_socket_handed_to_a_new_object_keeps_its_maker_and_stack(
        tracker: Tracker, closing: list[socket.socket]) -> None:
    first = socket.socket()
    line = sys._getframe().f_lineno - 1
    tracker.maker = B
    again = socket.socket(fileno=first.detach())
    closing.append(again)
    rec = record_of(tracker, again)
    assert rec.maker is A
    assert creation_site(rec.stack(), library_dirs()) == f"{__file__}:{line}"


def test_closed_sockets_are_not_open_records(tracker: Tracker) -> None:
    sock = socket.socket()
    assert [rec.ref() for rec in tracker.made_by(A)] == [sock]
    sock.close()
    assert tracker.made_by(A) == []
    tracker.forget_closed()
    assert tracker.records == {}


def test_udp_and_unix_sockets_are_not_recorded(tracker: Tracker) -> None:
    with socket.socket(type=socket.SOCK_DGRAM), socket.socket(socket.AF_UNIX):
        assert tracker.records == {}


def test_uninstall_puts_everything_back() -> None:
    init, start = socket.socket.__init__, threading.Thread.start
    tracker = Tracker().install()
    assert socket.socket.__init__ is not init
    tracker.uninstall()
    assert socket.socket.__init__ is init and threading.Thread.start is start


KEPT: list[socket.socket] = []


def test_holders_tell_a_global_list_from_a_pool_from_a_fixture(
        tmp_path: Path, closing: list[socket.socket]) -> None:
    (tmp_path / "poolpkg.py").write_text(
        "class Pool:\n    def __init__(self):\n        self.conns = []\n\nDEFAULT = Pool()\n")
    sys.path.insert(0, str(tmp_path))
    try:
        import poolpkg  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(tmp_path))
    installed = (str(tmp_path) + "/",)
    sock = socket.socket()
    closing.append(sock)
    KEPT.append(sock)
    try:
        assert holders.held_by(sock, {}, installed) == holders.Holder()  # a leak
        poolpkg.DEFAULT.conns.append(sock)
        found = holders.held_by(sock, {}, installed)
        assert (found.kind, found.what) == ("pool", "a poolpkg.Pool kept in poolpkg.DEFAULT")
        value = {"client": poolpkg.DEFAULT}
        fixture = holders.held_by(sock, {id(value): B}, installed)
        assert (fixture.kind, fixture.maker) == ("fixture", B)
    finally:
        KEPT.clear()
        poolpkg.DEFAULT.conns.clear()
