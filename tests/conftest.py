"""Shared fixtures: private network namespaces and scripts running inside them.

Every test that touches a socket does it inside namespaces made here, so no
test can see or harm a connection of the machine it runs on.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import click
import msgspec
import pytest

import sockdoctor
from sockdoctor.lab.netlab import Host, Lab

pytest_plugins = ("pytester",)  # the pytest plugin is tested in subprocess runs

ROOT = os.geteuid() == 0
# tests/image builds the container image with podman: its own CI stage,
# .ci/image-checks, which sets SOCKDOCTOR_IMAGE_TESTS=1.
collect_ignore = [] if os.environ.get("SOCKDOCTOR_IMAGE_TESTS") else ["image"]


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
        allow_stuck_sockets_in(request, made)
        yield made


@pytest.fixture
def solo(request: pytest.FixtureRequest) -> Iterator[Lab]:
    """One namespace with loopback only."""
    with Lab(f"t{os.getpid() % 10000}", pair=False) as made:
        allow_stuck_sockets_in(request, made)
        yield made


def allow_stuck_sockets_in(request: pytest.FixtureRequest, made: Lab) -> None:
    """The suite runs with its own leak check (--sockdoctor): CLOSE-WAIT, FIN-WAIT-2 and
    dead descriptors inside a lab's namespaces are what these tests make on purpose, so
    they are allowed there; a socket still open after the test's teardown never is."""
    inodes = {made.server.inode(), made.client.inode()}
    request.node.add_marker(pytest.mark.sockdoctor(
        allow=lambda leak: leak.kind != "open" and leak.socket.netns in inodes))


# --- running sockdoctor as an unprivileged user ------------------------------------

NOBODY = 65534
SETPRIV = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]


def _interpreter(python: str, env: dict[str, str]) -> str | None:
    """The interpreter `nobody` really gets for `python` if it can import sockdoctor there."""
    probe = subprocess.run(
        [*SETPRIV, python, "-c", "import sys, sockdoctor.cli; print(sys.executable)"],
        env=env, cwd="/", capture_output=True, text=True, timeout=30)
    return probe.stdout.strip() or None if probe.returncode == 0 else None


@dataclass
class Unprivileged:
    """How to run Python as user nobody: the interpreter and its environment."""

    python: str
    env: dict[str, str]

    def sockdoctor(self, *args: str, netns: str | None = None
                   ) -> subprocess.CompletedProcess[str]:
        """`python -m sockdoctor ARGS` as nobody, inside `netns` if given."""
        inside = ["ip", "netns", "exec", netns] if netns else []
        return subprocess.run([*inside, *SETPRIV, self.python, "-m", "sockdoctor", *args],
                              env=self.env, cwd="/", capture_output=True, text=True,
                              timeout=60)


@pytest.fixture(scope="session")
def unprivileged() -> Iterator[Unprivileged]:
    """An interpreter `nobody` may run, with msgspec and click copied where it can read them.

    The test interpreter may live under /root (mode 0700); then the system
    interpreter of the same version runs the same code (msgspec's compiled
    module needs the same minor version).
    """
    deps = Path(tempfile.mkdtemp(prefix="sdt-nobody-"))
    try:
        # sockdoctor itself too: installed under /root it is not readable by nobody
        import prometheus_client  # the exporter's

        for module in (sockdoctor, msgspec, click, prometheus_client):
            shutil.copytree(Path(module.__file__).parent, deps / module.__name__,
                            ignore=shutil.ignore_patterns("__pycache__"))
        for path in (deps, *deps.rglob("*")):
            path.chmod(0o755)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8",
               "PYTHONPATH": str(deps), "PYTHONDONTWRITEBYTECODE": "1"}
        version = f"python{sys.version_info.major}.{sys.version_info.minor}"
        for candidate in (sys.executable, f"/usr/bin/{version}", f"/usr/local/bin/{version}"):
            python = os.path.exists(candidate) and _interpreter(candidate, env)
            if python:
                yield Unprivileged(python, env)
                return
        pytest.skip(f"no {version} interpreter that user nobody may run")
    finally:
        shutil.rmtree(deps, ignore_errors=True)


