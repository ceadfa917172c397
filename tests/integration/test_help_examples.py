"""Every example of every --help, pasted into a shell: the read-only ones run.

The examples run inside a network namespace this test creates (`ip netns
exec`), where every command's default scope is that namespace (as in ss); a
namespace an example names (`--netns web`, `--netns host`) becomes this one,
a pid (4242) the lab's program, and files go to a temporary directory.
Destructive commands run as their dry run only (--yes and --apply dropped),
daemons take one sample (--once). Each must end in an exit code its help
documents, without a traceback or a usage error.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import Remote, allow_stuck_sockets_in
from helpexamples import all_examples
from sockdoctor.lab.netlab import Lab

pytestmark = [pytest.mark.root, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
BIN = str(Path(sys.executable).parent)
# Commands whose examples are not run, and why (their examples still parse: test_help.py).
NOT_RUN = {
    "demo": "builds and removes namespaces (tests/integration/test_demo.py runs it)",
    "lab run": "builds namespaces and runs for a while (test_lab_scenarios.py)",
    "lab clean": "removes labs of other runs (with --force: every lab)",
    "trace": "runs until --duration or Ctrl-C (test_trace.py)",
}
EXIT_CODES = {"doctor": {0, 1, 2, 3}, "kill": {0, 1, 3}, "keepalive": {0, 1, 3}}
DEFAULT_CODES = {0, 3, 7}  # 3: an example naming a process this lab has not (php-fpm*)


@dataclass
class Scene:
    lab: Lab
    ns: str
    pid: int
    cwd: Path


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scene]:
    with Lab("hex", pair=False) as lab:
        server = Remote(lab, lab.server, "sdt-hex")
        server("""
            lst = socket.socket()
            lst.bind(("127.0.0.1", 8080))
            lst.listen(8)
            peer = socket.create_connection(("127.0.0.1", 8080))
            conn, _ = lst.accept()
            peer.close()  # conn: CLOSE-WAIT on :8080, held by sdt-hex
        """)
        cwd = tmp_path_factory.mktemp("examples")
        shutil.copy(ROOT / "deploy" / "systemd" / "reap-policy.toml", cwd / "reap.toml")
        (cwd / "textfile").mkdir()
        done = subprocess.run([f"{BIN}/sockdoctor", "snapshot", "-N", lab.server.netns, "-o",
                               str(cwd / "snap.json.gz")], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        yield Scene(lab, lab.server.netns, server.pid, cwd)


@pytest.fixture(autouse=True)
def _stuck_sockets_are_the_point(request: pytest.FixtureRequest, scene: Scene) -> None:
    allow_stuck_sockets_in(request, scene.lab)


def runnable(line: str, scene: Scene) -> str:
    """The example as this test runs it: confined to the lab, dry, one sample."""
    line = re.sub(r"(--netns|-N) (web|host)\b", rf"\1 {scene.ns}", line)
    line = line.replace("4242", str(scene.pid)).replace("/etc/sockdoctor/reap.toml",
                                                        "reap.toml")
    line = line.replace("/var/lib/node_exporter/textfile", "textfile")
    line = line.replace("--interval 10s", "--interval 1s")
    line = re.sub(r'>\s*("[^"]*"|\S+)', "> redirected.out", line)  # files stay here
    line = re.sub(r" (--yes|-y|--apply)\b", "", line)
    for daemon in ("exporter", "top", "reap"):
        if f"sockdoctor {daemon}" in line and "--once" not in line and "--check" not in line:
            line = re.sub(rf"(sockdoctor {daemon}\b[^|]*)", r"\1 --once", line, count=1)
    return line


def examples_to_run() -> list[tuple[str, str]]:
    out = []
    for path, line in all_examples():
        name = " ".join(path)
        if name in ("", "lab") or name in NOT_RUN or line.startswith("ssh "):
            continue  # the overviews repeat other commands' examples; ssh needs a host
        out.append((name, line))
    return out


@pytest.mark.parametrize(("command", "line"), examples_to_run(),
                         ids=[line for _, line in examples_to_run()])
def test_example_runs(scene: Scene, command: str, line: str) -> None:
    lexer = shlex.shlex(line, posix=True, punctuation_chars="|;&")
    lexer.whitespace_split = True
    tokens = list(lexer)
    tools = {tokens[i + 1] for i, t in enumerate(tokens[:-1]) if t in ("|", "&&")}
    missing = [t for t in tools - {"sockdoctor"} if shutil.which(t) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed")
    cmd = runnable(line, scene)
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    done = subprocess.run(["ip", "netns", "exec", scene.ns, "bash", "-o", "pipefail", "-c",
                           cmd], cwd=scene.cwd, env=env, capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL)
    assert "Traceback" not in done.stderr + done.stdout, done.stderr
    allowed = EXIT_CODES.get(command.split()[0], DEFAULT_CODES)
    assert done.returncode in allowed, (cmd, done.returncode, done.stderr)
    errors = [ln for ln in done.stderr.splitlines()
              if ln.startswith("sockdoctor: ") and not ln.startswith("sockdoctor: note:")]
    if done.returncode in (0, 1, 2):  # 2 here is doctor's "critical", never a usage error
        assert not errors, (cmd, done.stderr)
    else:
        assert len(errors) == 1, (cmd, done.stderr)  # one sentence


def test_not_run_lists_only_commands_that_exist() -> None:
    names = {" ".join(path) for path, _ in all_examples()}
    assert set(NOT_RUN) <= names
