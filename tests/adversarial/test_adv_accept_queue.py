"""Only the plan is touched: the accept-queue case of issue 15 (docs/reliability.md,
"Only the plan is touched").

A server listens and never accepts; two clients connect and stay, one
connects and closes (a CLOSE-WAIT in the accept queue), one more stays.
accept() hands out the oldest connection first, so draining the queue would
end a live client (before the fix: auto chose drain, the first live client
read EOF, and the report said it "arrived meanwhile").
"""

from __future__ import annotations

import json
import select
import socket
import time
from pathlib import Path

import pytest
from hostile import audit_lines, kill_argv, run

from conftest import Script
from sockdoctor import inventory
from sockdoctor.lab.netlab import Lab
from sockdoctor.model import TcpState

pytestmark = pytest.mark.root
NEVER_ACCEPTS = """
ls = socket.create_server(("127.0.0.1", 0), backlog=64)
emit({"port": ls.getsockname()[1]})
wait()
"""


class Queue:
    """A listener nobody accepts on, in the lab's namespace, and the clients in its queue."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.server = Script(lab, lab.server, NEVER_ACCEPTS)
        self.port: int = self.server.read()["port"]  # type: ignore[index]
        self.live: list[socket.socket] = []

    def connect(self, live: bool) -> None:
        c = self.lab.server.run(lambda: socket.create_connection(("127.0.0.1", self.port)))
        if live:
            self.live.append(c)
        else:
            c.close()

    def queued_close_waits(self) -> set[int]:
        snap = inventory.scan(netns=self.lab.server.netns, owners=False)
        return {sk.cookie for sk in snap.sockets if sk.state == TcpState.CLOSE_WAIT
                and sk.local_port == self.port and sk.inode == 0}

    def wait_close_waits(self, n: int) -> set[int]:
        deadline = time.monotonic() + 10
        while len(found := self.queued_close_waits()) < n and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(found) == n
        return found

    def live_untouched(self) -> bool:
        """No live client sees anything (EOF or reset) within a second."""
        ready, _, _ = select.select(self.live, [], [], 1.0)
        return not ready

    def close(self) -> None:
        for c in self.live:
            c.close()


@pytest.fixture
def queue(solo: Lab) -> Queue:
    made = Queue(solo)
    yield made  # type: ignore[misc]
    made.close()


def kill(queue: Queue, tmp_path: Path, *extra: str) -> tuple[int, dict, Path]:
    log = tmp_path / "audit.jsonl"
    done = run([*kill_argv(queue.lab, queue.port, log, *extra), "--json"])
    assert done.stdout.strip(), done.stderr
    return done.returncode, json.loads(done.stdout), log


def test_live_connections_ahead_in_the_queue_never_see_eof(queue: Queue,
                                                           tmp_path: Path) -> None:
    queue.connect(live=True)
    queue.connect(live=True)
    queue.connect(live=False)
    queue.connect(live=True)
    (target,) = queue.wait_close_waits(1)
    rc, report, log = kill(queue, tmp_path)
    (item,) = report["plan"]["items"]
    assert item["method"] == "destroy"
    assert "3 connections not in the plan" in item["why"]
    assert "accept() hands out the oldest first" in item["why"]
    assert rc == 0 and [o["outcome"] for o in report["outcomes"]] == ["closed"]
    assert queue.live_untouched()
    assert "arrived meanwhile" not in json.dumps(report)
    assert [a["cookie"] for a in audit_lines(log, "act")] == [target]
    assert target not in queue.queued_close_waits()


def test_drain_asked_for_refuses_rather_than_take_a_live_one(queue: Queue,
                                                             tmp_path: Path) -> None:
    queue.connect(live=True)
    queue.connect(live=False)
    (target,) = queue.wait_close_waits(1)
    rc, report, log = kill(queue, tmp_path, "--method", "drain")
    (item,) = report["plan"]["items"]
    assert item["method"] == "" and item["unable"] == "unsafe"
    assert rc == 1 and queue.live_untouched()
    assert queue.queued_close_waits() == {target} and not audit_lines(log, "act")


def test_a_queue_of_planned_connections_only_is_drained(queue: Queue,
                                                        tmp_path: Path) -> None:
    queue.connect(live=False)
    queue.connect(live=False)
    targets = queue.wait_close_waits(2)
    rc, report, log = kill(queue, tmp_path)
    assert [i["method"] for i in report["plan"]["items"]] == ["drain", "drain"]
    assert rc == 0 and {o["outcome"] for o in report["outcomes"]} <= {"closed", "closing"}
    assert {a["cookie"] for a in audit_lines(log, "act")} == targets
    assert not queue.queued_close_waits()
    queue.connect(live=True)  # the slots are free and the listener still takes clients
    time.sleep(0.2)
    assert queue.live_untouched()
