"""`sockdoctor trace` on real leaks in namespaces made here: every state change, its owner.

The trace runs as a real subprocess (`python -m sockdoctor trace`), started
after the lab's namespaces exist and before its programs start, so it sees
every connection from the first SYN. Only sockets of the lab's server
namespace are traced (`--netns`), and other tests' identical labs (same
addresses, same ports) run in other namespaces at the same time: an event
from one of those would carry another netns and fail the checks.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator

import pytest

from conftest import Unprivileged
from sockdoctor.lab import REGISTRY, RunInfo
from sockdoctor.lab.netlab import Lab

SOCKDOCTOR = [sys.executable, "-m", "sockdoctor"]


class Trace:
    """A running `sockdoctor trace`; its output lines are collected on a thread."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen([*SOCKDOCTOR, "trace", *args], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        ready, _, _ = select.select([self.proc.stderr], [], [], 60)
        first = self.proc.stderr.readline() if ready else ""  # type: ignore[union-attr]
        assert "tracing TCP state changes" in first, (first, self.proc.poll())
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:  # type: ignore[union-attr]
            self.lines.append(line)

    def events(self) -> list[dict]:
        return [json.loads(line) for line in list(self.lines)]

    def wait_for(self, check, timeout: float = 20.0) -> list[dict]:
        """Poll the events until check(events) is true; returns them."""
        deadline = time.monotonic() + timeout
        while True:
            events = self.events()
            if check(events):
                return events
            assert time.monotonic() < deadline, f"timed out; {len(events)} events so far"
            time.sleep(0.2)

    def stop(self, sig: int = signal.SIGINT) -> tuple[int, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        rc = self.proc.wait(timeout=30)
        self._reader.join(timeout=10)
        return rc, self.proc.stderr.read()  # type: ignore[union-attr]


@pytest.fixture
def leak() -> Iterator[tuple[Lab, Trace, RunInfo]]:
    """forgot-close, traced from before its server starts."""
    sc = REGISTRY["forgot-close"]
    lab = sc.new_lab()
    lab.up()
    trace = None
    try:
        trace = Trace("--ndjson", "--netns", lab.server.netns, "--refresh", "1s")
        info = sc.start(lab)
        yield lab, trace, info
    finally:
        if trace is not None:
            trace.stop()
        lab.down()


def _leaked(events: list[dict], netns: str) -> list[dict]:
    return [e for e in events if e["event"] == "state" and e["old"] == "ESTAB"
            and e["new"] == "CLOSE-WAIT" and e["local_port"] == 8000 and e["netns"] == netns]


def _owned_fds(netns: str, pid: int) -> dict[int, int]:
    """peer port -> fd of the server's CLOSE-WAIT sockets, as `ls -p --json` sees them."""
    done = subprocess.run([*SOCKDOCTOR, "ls", "-p", "--json", "--netns", netns, "state",
                           "close-wait"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return {s["peer_port"]: o["fd"] for s in json.loads(done.stdout)["sockets"]
            for o in s["owners"] if o["pid"] == pid}


@pytest.mark.root
def trace_while_leaking(solo: Lab, *args: str) -> tuple[subprocess.Popen, str]:
    """`trace --netns NS ARGS`, and the LEAKER started once trace says it is tracing."""
    trace = subprocess.Popen([*SOCKDOCTOR, "trace", "--netns", solo.server.netns, *args],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([trace.stderr], [], [], 60)
        assert ready and "tracing" in trace.stderr.readline()  # type: ignore[union-attr]
        leaker = solo.spawn(solo.server, [sys.executable, "-c", LEAKER])
        out, err = trace.communicate(timeout=60)
    finally:
        if trace.poll() is None:
            trace.kill()
    assert trace.returncode == 0, err
    return leaker, out


def test_trace_names_the_server_for_every_leak_and_reports_each_destroy(leak) -> None:
    lab, trace, info = leak
    ns, server = lab.server.netns, info.pids["echo-server"]
    stuck = {sk.peer_port for sk in info.stuck}
    assert len(stuck) >= 5
    events = trace.wait_for(lambda ev: {e["peer_port"] for e in _leaked(ev, ns)} >= stuck)
    fds = _owned_fds(ns, server)
    for e in _leaked(events, ns):
        assert e["family"] == "ipv4" and e["local_addr"] == "10.77.0.1"
        assert [(o["pid"], o["fd"], o["comm"]) for o in e["owners"]] == [
            (server, fds[e["peer_port"]], "echo-server")], e
        assert e["cookie"] and e["inode"] and e["netns_inode"] == lab.server.inode()
        assert e["prev_state_ms"] is not None and e["prev_state_ms"] >= 0
    # the first state of each connection and its time are there too
    assert any(e["old"] == "SYN-RECV" and e["new"] == "ESTAB" and e["peer_port"] in stuck
               for e in events)

    killed = subprocess.run([*SOCKDOCTOR, "kill", "--netns", ns, "--port", "8000", "--state",
                             "close-wait", "--method", "destroy", "--yes"],
                            capture_output=True, text=True, timeout=60)
    assert killed.returncode == 0, killed.stdout + killed.stderr
    cookies = {e["peer_port"]: e["cookie"] for e in _leaked(events, ns)}
    events = trace.wait_for(lambda ev: {e["peer_port"] for e in ev if e["event"] == "state"
                                        and e["old"] == "CLOSE-WAIT" and e["new"] == "CLOSE"
                                        } >= stuck)
    for e in events:
        if e["event"] == "state" and e["old"] == "CLOSE-WAIT" and e["peer_port"] in stuck:
            assert e["cookie"] == cookies[e["peer_port"]]
            assert e["task_pid"] not in (None, server)  # kill's own process did it
            assert e["owners"][0]["pid"] == server
    # SOCK_DESTROY closed them, but echo-server still holds the descriptors: the
    # kernel frees (and announces) a socket after its last close(), here the exit
    info.programs["echo-server"].proc.kill()
    events = trace.wait_for(lambda ev: {e["cookie"] for e in ev if e["event"] == "destroy"}
                            >= set(cookies.values()))
    for e in events:
        if e["event"] == "destroy" and e["cookie"] in cookies.values():
            assert e["netns"] == ns and e["new"] == "CLOSE"
            assert e["owners"][0]["pid"] == server, e
            assert e["info"]["bytes_received"] >= 1  # its last tcp_info came along
    rc, err = trace.stop()
    assert rc == 0 and "0 lost" in err, err
    assert not [e for e in trace.events() if e["netns"] not in (ns, None)]


@pytest.mark.root
def test_trace_table_filter_and_count(solo: Lab) -> None:
    """The table, a state filter and --count: stops by itself after N events."""
    ns = solo.server.netns
    leaker, out = trace_while_leaking(solo, "state", "close-wait", "--count", "3")
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["TIME", "CHANGE", "LOCAL"]
    assert len(lines) == 4, out
    for row in lines[1:]:
        assert "ESTAB -> CLOSE-WAIT" in row and f"leaker({leaker.pid}) fd" in row, row
        assert ns in row


LEAKER = """
import socket, time
open("/proc/self/comm", "w").write("leaker")
srv = socket.create_server(("127.0.0.1", 7100))
keep = []
for _ in range(5):
    c = socket.create_connection(("127.0.0.1", 7100))
    keep.append(srv.accept()[0])
    c.close()
    time.sleep(0.2)
time.sleep(60)
"""


def _instances(root: str, pid: int) -> list[str]:
    return [n for n in os.listdir(f"{root}/instances") if n.startswith(f"sockdoctor-{pid}-")]


@pytest.mark.root
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_trace_removes_its_instance_and_mount_on_a_signal(solo: Lab, sig: int) -> None:
    trace = Trace("--netns", solo.server.netns)
    pid = trace.proc.pid
    look = tempfile.mkdtemp(prefix="sdt-tracefs-")
    subprocess.run(["mount", "-t", "tracefs", "nodev", look], check=True)
    try:
        assert _instances(look, pid), "no instance while tracing"
        rc, err = trace.stop(sig)
        assert rc == 0, err
        assert "state changes" in err  # the closing summary
        assert _instances(look, pid) == []
        with open("/proc/self/mounts") as f:  # a tracefs trace mounted itself is gone too
            assert f"sockdoctor-tracefs-{pid}-" not in f.read()
    finally:
        subprocess.run(["umount", look], check=False)
        os.rmdir(look)


@pytest.mark.root
def test_trace_without_root_is_one_sentence_and_exit_4(unprivileged: Unprivileged) -> None:
    done = unprivileged.sockdoctor("trace", "--duration", "1s")
    assert done.returncode == 4, done.stderr
    assert done.stderr.count("\n") == 1 and "root" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.root
def test_trace_rejects_an_unknown_namespace() -> None:
    done = subprocess.run([*SOCKDOCTOR, "trace", "--netns", f"no-such-ns-{os.getpid()}"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 3 and "no network namespace" in done.stderr


@pytest.mark.root
def test_trace_removes_what_a_killed_trace_left_behind(solo: Lab) -> None:
    """A trace killed with SIGKILL cannot clean up: the next one does."""
    dead = 2 ** 22 + os.getpid() % 1000  # above the default pid_max: no such process
    where = tempfile.mkdtemp(prefix=f"sockdoctor-tracefs-{dead}-")
    subprocess.run(["mount", "-t", "tracefs", "nodev", where], check=True)
    os.mkdir(f"{where}/instances/sockdoctor-{dead}-1")
    try:
        done = subprocess.run([*SOCKDOCTOR, "trace", "--netns", solo.server.netns,
                               "--duration", "1s"], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        with open("/proc/self/mounts") as f:
            assert where not in f.read()
        assert not os.path.exists(where)
    finally:
        subprocess.run(["umount", where], capture_output=True)
        if os.path.isdir(where):
            os.rmdir(where)


CHURN = """
import socket, time
open("/proc/self/comm", "w").write("churn")
srv = socket.create_server(("127.0.0.1", 0))
port = srv.getsockname()[1]
print(port, flush=True)
keep = []
for _ in range(6):
    c = socket.create_connection(("127.0.0.1", port))
    keep.append(srv.accept()[0])
    c.close()  # the accepted side falls into CLOSE-WAIT and stays there
    time.sleep(0.1)
time.sleep(60)
"""


def _port_of(proc: subprocess.Popen) -> int:
    ready, _, _ = select.select([proc.stdout], [], [], 30)
    assert ready, "the program did not start"
    return int(proc.stdout.readline())  # type: ignore[union-attr]


@pytest.mark.root
def test_trace_names_a_namespace_created_after_it_started() -> None:
    """Events of a namespace born after trace started carry its name from the first one,
    long before the next sample (--refresh 60s); and every line comes in time order."""
    trace = Trace("--ndjson", "--netns", "all", "--refresh", "60s")
    try:
        with Lab(f"late{os.getpid() % 10000}", pair=False) as lab:
            ns = lab.server.netns
            proc = lab.spawn(lab.server, [sys.executable, "-c", CHURN], stdout=subprocess.PIPE,
                             text=True)
            port = _port_of(proc)

            def ours(events: list[dict]) -> list[dict]:
                return [e for e in events if e["event"] == "state" and port in
                        (e["local_port"], e["peer_port"]) and e["local_addr"] == "127.0.0.1"]

            events = trace.wait_for(lambda ev: sum(e["new"] == "CLOSE-WAIT"
                                                   for e in ours(ev)) >= 6, timeout=45)
            mine = ours(events)
            assert mine[0]["old"] == "CLOSE" and mine[0]["new"] == "LISTEN"
            assert {e["netns"] for e in mine} == {ns}, [e["netns"] for e in mine]
            assert all(e["netns_inode"] == lab.server.inode() for e in mine)
            cw = [e for e in mine if e["new"] == "CLOSE-WAIT"]
            assert all(o["comm"] == "churn" for e in cw for o in e["owners"]), cw
            times = [e["time"] for e in events]
            assert times == sorted(times)
    finally:
        trace.stop()


@pytest.mark.root
def test_trace_summary_counts_transitions_with_rates(solo: Lab) -> None:
    leaker, out = trace_while_leaking(solo, "--summary", "--duration", "4s")
    lines = out.splitlines()
    assert lines[0].startswith("--- ") and " state changes (" in lines[0], out
    assert lines[1].split() == ["COUNT", "PER-S", "CHANGE", "PROCESS", "SERVICE", "NETNS"]
    rows = {(r.split()[2], r.split()[4], r.split()[5], r.split()[6]): r.split()[:2]
            for r in lines[2:] if len(r.split()) == 8}
    count, rate = rows[("ESTAB", "CLOSE-WAIT", f"leaker({leaker.pid})", ":7100")]
    assert count == "5" and 0.5 < float(rate) < 2.5, out  # 5 in about 4 s
    assert not any("->" in line and "LAST-ACK" in line and "leaker" in line for line in lines)
