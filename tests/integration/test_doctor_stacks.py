"""doctor --stacks: where a busy owner's threads are, on real gunicorn and Java servers.

A server whose handlers sleep 30 s, with more clients than workers: the
doctor reports the backlog, and --stacks names the handler's file and line
(py-spy for gunicorn's Python workers, jcmd's Thread.print for the JVM).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sockdoctor.inventory import scan
from sockdoctor.lab.netlab import SERVER_V4, Lab

pytestmark = pytest.mark.root

HERE = Path(__file__).parent / "runtimes"
BIN = Path(sys.executable).parent


def doctor_stacks(lab: Lab) -> dict:
    done = subprocess.run([sys.executable, "-m", "sockdoctor", "doctor", "--netns",
                           lab.server.netns, "--stuck-after", "1s", "--stacks", "--json"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode in (0, 1, 2), done.stderr
    return json.loads(done.stdout)


def wait_listening(lab: Lab, port: int) -> None:
    deadline = time.monotonic() + 30
    while not scan(f"state listening sport = :{port}", owners=False, netns=lab.server.netns
                   ).sockets:
        assert time.monotonic() < deadline, f"nothing listens on :{port}"
        time.sleep(0.2)


def backlog_finding(lab: Lab, port: int) -> dict:
    wait_listening(lab, port)
    client = (f"import socket, time; s = socket.create_connection(('{SERVER_V4}', {port})); "
              "s.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n'); time.sleep(60)")
    for _ in range(6):  # more clients than workers: the queue builds up
        lab.spawn(lab.client, [sys.executable, "-c", client])
    deadline = time.monotonic() + 30
    while True:
        time.sleep(1.5)
        report = doctor_stacks(lab)
        found = [f for f in report["findings"] if f["rule"] == "backlog-or-slow-handler"]
        if found or time.monotonic() > deadline:
            assert found, [f["title"] for f in report["findings"]]
            return found[0]


def test_gunicorn_workers_point_at_the_handler(lab: Lab) -> None:
    if not (BIN / "gunicorn").exists() or not (BIN / "py-spy").exists():
        pytest.skip("gunicorn and py-spy come with the test extra")
    lab.spawn(lab.server, [str(BIN / "gunicorn"), "-w", "2", "-b", f"{SERVER_V4}:8000",
                           "--chdir", str(HERE), "slow_wsgi:app"],
              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    f = backlog_finding(lab, 8000)
    line = next(x for x in f["evidence_lines"] if x.startswith("threads: "))
    assert line.startswith("threads: 2 of "), line
    assert "in app (slow_wsgi.py:7)" in line
    stacks = f["evidence"]["stacks"]
    assert sum(1 for threads in stacks.values() for t in threads
               if t[1] == "app (slow_wsgi.py:7)") == 2  # both workers, innermost frame


def test_java_thread_points_at_the_blocked_frame(lab: Lab, tmp_path: Path) -> None:
    if not (shutil.which("javac") and shutil.which("jcmd")):
        pytest.skip("a JDK (javac, jcmd) is needed")
    subprocess.run(["javac", "-d", str(tmp_path), str(HERE / "Slow.java")], check=True,
                   capture_output=True, timeout=120)
    server = lab.spawn(lab.server, ["java", "-cp", str(tmp_path), "Slow", "8001"],
                       stdout=subprocess.PIPE, text=True)
    assert server.stdout is not None and server.stdout.readline().strip() == "listening"
    f = backlog_finding(lab, 8001)
    line = next(x for x in f["evidence_lines"] if x.startswith("threads: "))
    assert line.startswith("threads: 1 of 1 threads in Slow.handle(Slow.java:7)"), line
    (threads,) = f["evidence"]["stacks"].values()
    assert threads[0][0] == "main"
    assert threads[0][1].startswith("java.lang.Thread.sleep(")


def test_stacks_refuse_a_saved_snapshot(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "sockdoctor", "doctor", "--from",
                           str(tmp_path / "none.json"), "--stacks"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--stacks" in done.stderr and "Traceback" not in done.stderr
