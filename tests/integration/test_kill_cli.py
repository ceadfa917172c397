"""`sockdoctor kill` as an operator runs it: in a real terminal, in a pipe, interrupted.

- On a terminal the plan is shown once and asked about; the plan that was
  confirmed is the one applied, even if the world changed while the
  question was open (a socket that appeared meanwhile is left alone).
- Ctrl-C during a rate-limited `--yes`: the action in flight finishes, no
  new one is taken, what was done is printed and in the audit log, exit 130.
- `kill | head`: a reader that went away costs no traceback and no wrong
  exit status; an applied kill still runs to its end.
"""

from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_kill import PORT, Scene, build, make_scene

from sockdoctor.lab.netlab import Lab
from sockdoctor.model import TcpState

pytestmark = pytest.mark.root


@pytest.fixture
def scene(lab: Lab, tmp_path: Path) -> Scene:
    return make_scene(lab, tmp_path)


def argv(sc: Scene, *extra: str) -> list[str]:
    return [sys.executable, "-m", "sockdoctor", "kill", "--netns", sc.netns, "--port",
            str(PORT), "--audit-log", str(sc.audit), *extra]


class Terminal:
    """sockdoctor on a pseudo-terminal: read what it shows, type an answer."""

    def __init__(self, args: list[str]) -> None:
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: becomes sockdoctor
            os.execv(args[0], args)
        self.seen = b""

    def expect(self, text: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while text.encode() not in self.seen:
            assert time.monotonic() < deadline, self.seen.decode(errors="replace")
            self.seen += os.read(self.fd, 4096)

    def type(self, line: str) -> None:
        os.write(self.fd, line.encode() + b"\r")

    def finish(self) -> int:
        while True:
            try:
                chunk = os.read(self.fd, 4096)
            except OSError:  # EIO: the other side is closed
                break
            if not chunk:
                break
            self.seen += chunk
        os.close(self.fd)
        return os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])

    @property
    def text(self) -> str:
        return self.seen.decode(errors="replace").replace("\r\n", "\n")


def close_waits(sc: Scene) -> dict[int, int]:
    return {sk.cookie: sk.state for sk in sc.ours() if sk.state == TcpState.CLOSE_WAIT}


def test_on_a_terminal_the_plan_is_shown_once_and_no_changes_nothing(scene: Scene) -> None:
    targets = build(scene, "close-wait")
    term = Terminal(argv(scene))
    term.expect("Apply this plan? [y/N]")
    term.type("n")
    assert term.finish() == 0
    assert term.text.count("Plan: 3 of 3 selected sockets would be ended") == 1
    assert term.text.rstrip().endswith("Nothing was changed.")
    assert set(close_waits(scene)) == {sk.cookie for sk in targets}
    assert not scene.audit.exists()


def test_the_confirmed_plan_is_the_one_applied(scene: Scene) -> None:
    targets = build(scene, "close-wait")
    term = Terminal(argv(scene))
    term.expect("Apply this plan? [y/N]")
    # meanwhile another connection leaks: it was not in the plan the operator read
    scene.tell(scene.client, "connect 1")
    scene.tell(scene.server, "accept 1")
    scene.tell(scene.client, "shutwr")
    for _ in range(300):
        if len(close_waits(scene)) == 4:
            break
        time.sleep(0.01)
    (late,) = set(close_waits(scene)) - {sk.cookie for sk in targets}
    term.type("y")
    assert term.finish() == 0, term.text
    assert term.text.count("Plan: ") == 1
    assert "Result: 3 of 3 gone" in term.text
    assert close_waits(scene) == {late: TcpState.CLOSE_WAIT}
    acted = {line["cookie"] for line in scene.audit_lines("act")}
    assert acted == {sk.cookie for sk in targets}


def test_ctrl_c_during_a_rate_limited_kill_finishes_logs_and_exits_130(scene: Scene) -> None:
    targets = build(scene, "close-wait", n=5)
    proc = subprocess.Popen(argv(scene, "--yes", "--rate", "2/s"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while len(scene.audit_lines("act")) < 2:  # two actions taken, half a second apart
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, (out, err)
    assert out.startswith("Plan: 5 of 5 selected sockets will be ended (5 by fin)")
    acts = scene.audit_lines("act")
    ended = len(acts)
    assert 2 <= ended < 5
    assert f"Interrupted: {ended} ended, 0 left, {5 - ended} not tried" in out
    assert "Traceback" not in err

    # one audit line per ended socket, each verified, then what was left
    gone = {sk.cookie for sk in targets} - set(close_waits(scene))
    assert {line["cookie"] for line in acts} == gone and len(gone) == ended
    assert [line["outcome"] for line in scene.audit_lines("verify")] == ["closed"] * ended
    (summary,) = scene.audit_lines("interrupted")
    assert summary | {"time": 0, "user": 0} == {"time": 0, "user": 0, "event": "interrupted",
                                                "ended": ended, "left": 0,
                                                "not_tried": 5 - ended}
    assert len(close_waits(scene)) == 5 - ended


def closed_pipe() -> int:
    """The write end of a pipe nobody reads any more (`| head` after head exited)."""
    read, write = os.pipe()
    os.close(read)
    return write


@pytest.mark.parametrize(("extra", "code"), [
    ((), 0),  # the plan: every socket would be ended
    (("--state", "listening"), 1),  # a plan that ends none of its sockets
    (("--yes",), 0),  # applied: it still runs to its end
])
def test_a_reader_that_went_away_costs_no_traceback_and_no_wrong_status(
        scene: Scene, extra: tuple[str, ...], code: int) -> None:
    targets = build(scene, "close-wait")
    pipe = closed_pipe()
    try:
        done = subprocess.run(argv(scene, *extra), stdout=pipe, stderr=subprocess.PIPE,
                              text=True, timeout=60, stdin=subprocess.DEVNULL)
    finally:
        os.close(pipe)
    assert done.returncode == code, done.stderr
    assert done.stderr == ""
    if "--yes" in extra:
        assert close_waits(scene) == {}
        assert len(scene.audit_lines("verify")) == len(targets)
    else:
        assert len(close_waits(scene)) == len(targets)


def test_json_plan_of_a_method_that_cannot_end_anything_is_exit_1(scene: Scene) -> None:
    build(scene, "close-wait")
    done = subprocess.run(argv(scene, "--method", "drain", "--json"), capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode == 1
    report = json.loads(done.stdout)
    assert report["applied"] is False and all(i["method"] == "" for i in report["plan"]["items"])
