"""Shared fixtures: private network namespaces and scripts running inside them.

Every test that touches a socket does it inside namespaces made here, so no
test can see or harm a connection of the machine it runs on.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest

from sockdoctor.lab.netlab import Host, Lab

ROOT = os.geteuid() == 0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if ROOT:
        return
    skip = pytest.mark.skip(reason="needs root (network namespaces)")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)


class Script:
    """A Python program running inside a namespace, talking JSON lines on stdio.

    The program gets `emit(obj)` to report to the test and `wait()` to block
    until the test calls `send()`; it is killed when the lab goes down.
    """

    PRELUDE = textwrap.dedent("""
        import json, socket, sys, os, time, errno, select
        def emit(obj):
            sys.stdout.write(json.dumps(obj) + "\\n"); sys.stdout.flush()
        def wait():
            return sys.stdin.readline()
    """)

    def __init__(self, lab: Lab, host: Host, code: str) -> None:
        source = self.PRELUDE + textwrap.dedent(code)
        self.proc = lab.spawn(host, [sys.executable, "-c", source], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, bufsize=1)

    @property
    def pid(self) -> int:
        """PID of the Python program itself (ip netns exec execs into it)."""
        return self.proc.pid

    def read(self, timeout: float = 20.0) -> object:
        import select as sel
        ready, _, _ = sel.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise TimeoutError("script did not report in time")
        line = self.proc.stdout.readline()  # type: ignore[union-attr]
        if not line:
            raise RuntimeError(f"script exited with {self.proc.wait()}")
        return json.loads(line)

    def send(self, text: str = "go") -> None:
        self.proc.stdin.write(text + "\n")  # type: ignore[union-attr]
        self.proc.stdin.flush()  # type: ignore[union-attr]


class Remote(Script):
    """A Script that execs whatever code the test sends, step by step.

    `remote("s = socket.socket(); result = s.fileno()")` runs the code in the
    program's persistent globals and returns `result`. The program renames
    itself `comm` (what ss -p and sockdoctor show); `prefix` wraps the
    interpreter, e.g. with setpriv to run as another user.
    """

    LOOP = textwrap.dedent("""
        g = {"socket": socket, "os": os, "time": time, "errno": errno}
        open("/proc/self/comm", "w").write(sys.argv[1])
        emit({"ready": os.getpid()})
        while True:
            line = wait()
            if not line:
                break
            try:
                exec(json.loads(line), g)
                emit({"ok": g.pop("result", None)})
            except Exception as exc:
                emit({"error": repr(exc)})
    """)

    def __init__(self, lab: Lab, host: Host, comm: str, prefix: list[str] | None = None,
                 python: str = sys.executable) -> None:
        argv = [*(prefix or []), python, "-c", self.PRELUDE + self.LOOP, comm]
        self.proc = lab.spawn(host, argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, bufsize=1)
        self.read()

    def __call__(self, code: str) -> object:
        self.send(json.dumps(textwrap.dedent(code)))
        reply = self.read()
        if "error" in reply:  # type: ignore[operator]
            raise RuntimeError(f"remote code failed: {reply['error']}")  # type: ignore[index]
        return reply["ok"]  # type: ignore[index]


@pytest.fixture
def lab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    """A server and a client namespace joined by a veth pair."""
    with Lab(f"t{os.getpid() % 10000}") as made:
        yield made


@pytest.fixture
def solo(request: pytest.FixtureRequest) -> Iterator[Lab]:
    """One namespace with loopback only."""
    with Lab(f"t{os.getpid() % 10000}", pair=False) as made:
        yield made
