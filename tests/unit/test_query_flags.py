"""The flags people type next to the ss filter: --state, --port, --pid, --process,
--older-than, -4/-6, --netns; and Query.apply on a saved snapshot (`ls --from`)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from sockdoctor.errors import NotFoundError, UsageError
from sockdoctor.inventory import scan
from sockdoctor.linux import procfs
from sockdoctor.model import (
    ALL_STATES_MASK,
    Netns,
    Owner,
    Process,
    Snapshot,
    Socket,
    TcpState,
    state_mask,
)
from sockdoctor.query import Query, parse_duration

HOST, BLUE = 4026531840, 4026532000


def sock(state: TcpState, lport: int, pport: int, *, family: int = socket.AF_INET,
         netns: int = HOST, owners: tuple[int, ...] = (), age_ms: int | None = None,
         cookie: int = 0) -> Socket:
    local, peer = ("10.0.0.1", "10.0.0.2") if family == socket.AF_INET else ("fd::1", "fd::2")
    sk = Socket(netns, family, int(state), local, lport, peer, pport, 100 + cookie, cookie, 0,
                0, 0)
    sk.owners = [Owner(pid, 3) for pid in owners]
    sk.age_ms = age_ms
    return sk


@pytest.mark.parametrize("text, ms", [
    ("500ms", 500), ("90s", 90_000), ("10m", 600_000), ("2h", 7_200_000),
    ("1d", 86_400_000), ("1.5s", 1_500), ("30", 30_000), (" 2h ", 7_200_000), ("0s", 0),
    ("0.25m", 15_000),
])
def test_durations(text: str, ms: int) -> None:
    assert parse_duration(text) == ms


@pytest.mark.parametrize("text", ["", "abc", "10x", "-5s", "1e3", "5 m s", "s", "10 minutes",
                                  "1h30m", "..5s"])
def test_bad_durations_are_usage_errors(text: str) -> None:
    with pytest.raises(UsageError, match="is not a duration") as err:
        parse_duration(text)
    assert err.value.exit_code == 2
    with pytest.raises(UsageError):
        Query.build(older_than=text or " ")


def test_older_than_needs_age_and_skips_sockets_without_one() -> None:
    q = Query.build(older_than="1s")
    assert q.needs_age and not Query.build().needs_age
    assert q.match_socket(sock(TcpState.CLOSE_WAIT, 80, 5000, age_ms=1000))  # boundary
    assert q.match_socket(sock(TcpState.CLOSE_WAIT, 80, 5000, age_ms=86_400_000))
    assert not q.match_socket(sock(TcpState.CLOSE_WAIT, 80, 5000, age_ms=999))
    assert not q.match_socket(sock(TcpState.LISTEN, 80, 0))  # no age: never "older"
    assert not q.match_socket(sock(TcpState.TIME_WAIT, 80, 5000))


def test_ports_match_either_end() -> None:
    q = Query.build(ports=[80, 443])
    assert q.match_socket(sock(TcpState.ESTABLISHED, 80, 5000))
    assert q.match_socket(sock(TcpState.ESTABLISHED, 5000, 443))
    assert not q.match_socket(sock(TcpState.ESTABLISHED, 8080, 5000))
    assert not q.needs_owners


def test_states_flag_and_filter_words_combine() -> None:
    q = Query.build(states=["close-wait"])
    assert q.states == state_mask(TcpState.CLOSE_WAIT)
    both = Query.build("state connected", states=["close-wait", "listening"])
    assert both.states == state_mask(TcpState.CLOSE_WAIT)  # every part must hold
    assert Query.build().states == ALL_STATES_MASK
    group = Query.build(states=["bucket"])
    assert group.states & state_mask(TcpState.TIME_WAIT)
    assert not group.states & state_mask(TcpState.ESTABLISHED)
    assert not q.match_socket(sock(TcpState.ESTABLISHED, 80, 5000))
    assert q.match_socket(sock(TcpState.CLOSE_WAIT, 80, 5000))


def test_family_flags() -> None:
    v4, v6 = sock(TcpState.ESTABLISHED, 1, 2), sock(TcpState.ESTABLISHED, 1, 2,
                                                    family=socket.AF_INET6)
    only4, only6 = Query.build(family=socket.AF_INET), Query.build(family=socket.AF_INET6)
    assert only4.match_socket(v4) and not only4.match_socket(v6)
    assert only6.match_socket(v6) and not only6.match_socket(v4)
    assert Query.build().match_socket(v4) and Query.build().match_socket(v6)


def test_pid_and_process_need_owners() -> None:
    procs = {10: Process(pid=10, comm="nginx"), 11: Process(pid=11, comm="redis")}
    shared = sock(TcpState.LISTEN, 80, 0, owners=(10, 11))
    lonely = sock(TcpState.CLOSE_WAIT, 80, 5000)
    by_pid = Query.build(pids=[11])
    assert by_pid.needs_owners
    assert by_pid.match_owner(shared, procs) and not by_pid.match_owner(lonely, procs)
    by_name = Query.build(process="nginx")
    assert by_name.needs_owners
    assert by_name.match_owner(shared, procs)
    assert not by_name.match_owner(shared, {11: procs[11]})  # pid 10 vanished
    assert not Query.build(process="ngin").match_owner(shared, procs)  # the whole comm


def _saved() -> Snapshot:
    return Snapshot(
        created=1.0, hostname="h", kernel="k",
        namespaces=[Netns(inode=HOST, name="host", kind="host"),
                    Netns(inode=BLUE, name="blue", kind="named")],
        processes={10: Process(pid=10, comm="app"), 20: Process(pid=20, comm="db", netns=BLUE)},
        owners_scanned=True,
        sockets=[
            sock(TcpState.LISTEN, 8080, 0, owners=(10,), cookie=1),
            sock(TcpState.CLOSE_WAIT, 8080, 40000, owners=(10,), age_ms=900_000, cookie=2),
            sock(TcpState.CLOSE_WAIT, 8080, 40001, age_ms=5_000, cookie=3),
            sock(TcpState.ESTABLISHED, 5432, 41000, netns=BLUE, owners=(20,), age_ms=10,
                 cookie=4),
            sock(TcpState.ESTABLISHED, 5432, 41001, netns=BLUE, family=socket.AF_INET6,
                 owners=(20,), age_ms=10, cookie=5),
        ])


@pytest.mark.parametrize("query, cookies", [
    (Query.build(), {1, 2, 3, 4, 5}),
    (Query.build("state close-wait"), {2, 3}),
    (Query.build(states=["close-wait"], older_than="10m"), {2}),
    (Query.build(older_than="1s"), {2, 3}),
    (Query.build(ports=[5432]), {4, 5}),
    (Query.build(pids=[10]), {1, 2}),
    (Query.build(process="db"), {4, 5}),
    (Query.build(process="d*"), {4, 5}),
    (Query.build(netns="blue"), {4, 5}),
    (Query.build(netns=str(BLUE)), {4, 5}),
    (Query.build(netns="host"), {1, 2, 3}),
    (Query.build(netns="net:[4026532000]"), {4, 5}),
    (Query.build(netns="20"), {4, 5}),  # a pid, whose process lives in blue
    (Query.build(family=socket.AF_INET6), {5}),
    (Query.build("sport = :8080", pids=[10], states=["listening"]), {1}),
])
def test_apply_on_a_snapshot(query: Query, cookies: set[int]) -> None:
    saved = _saved()
    selected = query.apply(saved)
    assert {sk.cookie for sk in selected.sockets} == cookies
    assert len(saved.sockets) == 5  # the snapshot itself is untouched
    assert selected.namespaces == saved.namespaces and selected.processes == saved.processes


@pytest.mark.parametrize("query, words", [
    (Query.build(process="nobody-has-this"), "--process: no process named 'nobody-has-this' "
                                             "in the snapshot"),
    (Query.build(process="ap"), "did you mean app?"),
    (Query.build(pids=[30]), "--pid: no process 30 in the snapshot"),
    (Query.build(netns="green"), "--netns: no network namespace 'green' in the snapshot "
                                 "(known: host, blue)"),
    (Query.build(netns="bleu"), "did you mean blue?"),
])
def test_apply_names_what_the_snapshot_does_not_have(query: Query, words: str) -> None:
    with pytest.raises(NotFoundError) as err:
        query.apply(_saved())
    assert words in str(err.value) and err.value.exit_code == 3


def test_netns_self_cannot_name_a_namespace_of_a_snapshot() -> None:
    with pytest.raises(UsageError, match="--netns self"):
        Query.build(netns="self").apply(_saved())


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sockdoctor", "ls", *args],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("args, words", [
    (["--older-than", "10 minutes"], "is not a duration"),
    (["--port", "0"], "--port"),
    (["--port", "70000"], "--port"),
    (["--pid", "abc"], "--pid"),
    (["--state", "close-wiat"], "close-wiat"),
])
def test_bad_flags_exit_2_before_any_scan(args: list[str], words: str) -> None:
    proc = _cli("--netns", "no-such-namespace", *args)  # a scan would say exit 3
    assert proc.returncode == 2, proc.stderr
    assert words in proc.stderr and "Traceback" not in proc.stderr and proc.stdout == ""


def test_a_pid_that_does_not_exist_is_named() -> None:
    pid = 999_999
    while procfs.pid_exists(pid):
        pid += 1
    assert procfs.pid_exists(os.getpid()) and not procfs.pid_exists(0)
    with pytest.raises(NotFoundError, match=f"^--pid: no process {pid} is running") as err:
        scan(Query.build(pids=[os.getpid(), pid]), netns="no-such-namespace")
    assert err.value.exit_code == 3  # checked before any namespace is looked at
