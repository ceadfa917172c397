"""One selection on real sockets, in a namespace this test creates.

- --dead-fds means one thing, in `sockdoctor kill` and in `sockdoctor.kill()`:
  alone (with --pid), only the descriptors of sockets in no TCP table, not
  the CLOSE-WAIT sockets the kill would otherwise default to; with states
  named, those sockets as well. Both are dry runs; the CLI's plan and the
  library's must hold the same targets.
- A live scan that filters as it collects (ls) and the sampler (exporter,
  top, reap) choose what Query.select chooses from the whole namespace.
(tests/unit/test_one_selection.py does the same for every consumer on
synthetic snapshots.)
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import Script
from sockdoctor import inventory
from sockdoctor.lab.netlab import Lab
from sockdoctor.query import Query
from sockdoctor.remedy import kill
from sockdoctor.watch import Sampler

pytestmark = pytest.mark.root

# One CLOSE-WAIT (its peer closed) and one dead descriptor (shut down, never closed,
# its peer gone too: the socket left every table), both held by this program.
PROGRAM = """
ls = socket.create_server(("127.0.0.1", 0))
port = ls.getsockname()[1]
c1 = socket.create_connection(("127.0.0.1", port)); s1, _ = ls.accept()
c2 = socket.create_connection(("127.0.0.1", port)); s2, _ = ls.accept()
c1.close()
s2.shutdown(socket.SHUT_RDWR)
c2.close()
time.sleep(0.3)
emit({"close_wait": os.fstat(s1.fileno()).st_ino, "dead": os.fstat(s2.fileno()).st_ino})
wait()
"""


def targets(report: dict) -> set[tuple[str, int]]:
    """What a plan (as JSON) would act on: sockets and dead descriptors, by inode."""
    out = set()
    for item in report["plan"]["items"]:
        if item.get("socket"):
            out.add(("socket", item["socket"]["inode"]))
        elif item.get("dead_inode"):
            out.add(("dead fd", item["dead_inode"]))
    return out


def cli(lab: Lab, pid: int, tmp_path: Path, *extra: str) -> set[tuple[str, int]]:
    run = subprocess.run([sys.executable, "-m", "sockdoctor", "kill", "--netns",
                          lab.server.netns, "--pid", str(pid), "--dead-fds", "--json",
                          "--audit-log", str(tmp_path / "audit.jsonl"), *extra],
                         capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert run.stdout, run.stderr
    return targets(json.loads(run.stdout))


def library(lab: Lab, pid: int, **options: object) -> set[tuple[str, int]]:
    snap = inventory.scan(Query.build(pids=[pid]), netns=lab.server.netns, owners=True,
                          evidence=True)
    report = kill(snap, dead_fds=True, **options)  # type: ignore[arg-type]
    assert not report.applied  # a dry run: nothing changes
    from sockdoctor.jsontext import encode

    return targets(json.loads(encode(report)))


def test_dead_fds_alone_is_only_them_and_with_a_state_is_both(solo: Lab,
                                                             tmp_path: Path) -> None:
    program = Script(solo, solo.server, PROGRAM)
    held = program.read()
    pid = program.pid
    dead, close_wait = ("dead fd", held["dead"]), ("socket", held["close_wait"])  # type: ignore[index]

    alone = cli(solo, pid, tmp_path)
    assert alone == {dead}  # not the CLOSE-WAIT the kill defaults to
    assert library(solo, pid) == alone

    both = cli(solo, pid, tmp_path, "--state", "close-wait")
    assert both == {dead, close_wait}
    assert library(solo, pid, states=["close-wait"]) == both
    assert not (tmp_path / "audit.jsonl").exists()  # dry runs: no action, no audit line


def test_a_live_scan_and_the_sampler_choose_what_select_chooses(solo: Lab) -> None:
    program = Script(solo, solo.server, PROGRAM)
    held = program.read()
    ns = solo.server.netns
    queries = [Query.build("state close-wait"), Query.build(pids=[program.pid]),
               Query.build("exclude listening", pids=[program.pid]),
               Query.build(process="python*", states=["established", "close-wait"])]
    whole = inventory.scan(netns=ns, owners=True)
    assert held["close_wait"] in {sk.inode for sk in whole.sockets}  # type: ignore[index]
    for query in queries:
        chosen = sorted(sk.cookie for sk in query.select(whole))
        assert chosen, query.text  # each query selects something here
        ls = inventory.scan(query, netns=ns, owners=True)
        assert sorted(sk.cookie for sk in ls.sockets) == chosen, query
        sample = Sampler(query, netns=ns, doctor=False).sample()
        assert sample.snapshot is not None
        assert sorted(sk.cookie for sk in sample.snapshot.sockets) == chosen, query
