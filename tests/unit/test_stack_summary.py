"""Parsing and summarising threads' stacks (doctor --stacks), from recorded tool output."""

from __future__ import annotations

from dataclasses import dataclass

from sockdoctor.doctor import diagnose
from sockdoctor.doctor.finding import Finding, ProcessRef
from sockdoctor.doctor.stacks import add_stacks, parse, summary
from sockdoctor.doctor.synth import SnapshotBuilder
from sockdoctor.model import Runtime

PY_SPY = """\
Process 32318: /venv/bin/python3 /venv/bin/gunicorn -w 2 app:app
Python v3.11.7 (/usr/bin/python3.11)

Thread 32318 (idle): "MainThread"
    app (app.py:5)
    SyncWorker.handle_request (gunicorn/workers/sync.py:184)
    SyncWorker.run (gunicorn/workers/sync.py:132)
Thread 32320 (idle): "Thread-1 (_run_loop)"
    EpollSelector.select (selectors.py:468)
    BaseEventLoop._run_once (asyncio/base_events.py:1884)
    ControlSocketServer._run_loop (gunicorn/ctl/server.py:197)
    Thread.run (threading.py:982)
"""
JCMD = """\
30683:
Full thread dump OpenJDK 64-Bit Server VM (17.0.15+6-Debian-1deb12u1 mixed mode, sharing):

"main" #1 prio=5 os_prio=0 cpu=35.79ms elapsed=2.31s tid=0x1 nid=0x77dd waiting on condition
   java.lang.Thread.State: TIMED_WAITING (sleeping)
\tat java.lang.Thread.sleep(java.base@17.0.15/Native Method)
\tat Slow.handle(Slow.java:7)
\tat Slow.main(Slow.java:13)

"Reference Handler" #2 daemon prio=10 os_prio=0 cpu=0.18ms elapsed=2.27s tid=0x2 nid=0x77e5
   java.lang.Thread.State: RUNNABLE
\tat java.lang.ref.Reference.waitForReferencePendingList(java.base@17.0.15/Native Method)

"Signal Dispatcher" #4 daemon prio=9 os_prio=0 cpu=0.35ms elapsed=2.25s tid=0x3 nid=0x77e7
   java.lang.Thread.State: RUNNABLE
"""
KERNEL = """\
Thread 700 (S, epoll_wait)
    ep_poll
    do_epoll_wait
Thread 701 (S, futex)
    futex_wait_queue
"""


def test_py_spy_innermost_own_frame() -> None:
    threads = parse("py-spy", PY_SPY)
    assert [t.name for t in threads] == ["MainThread", "Thread-1 (_run_loop)"]
    assert threads[0].own == "app (app.py:5)"
    # the stdlib's selector and asyncio frames are skipped for the program's own
    assert threads[1].own == "ControlSocketServer._run_loop (gunicorn/ctl/server.py:197)"


def test_jcmd_application_threads_only() -> None:
    threads = parse("jcmd", JCMD)
    assert [t.name for t in threads] == ["main"]
    assert threads[0].frames[0].startswith("java.lang.Thread.sleep(")
    assert threads[0].own == "Slow.handle(Slow.java:7)"


def test_kernel_stacks() -> None:
    threads = parse("kernel", KERNEL)
    assert [t.own for t in threads] == ["ep_poll", "futex_wait_queue"]
    assert threads[0].name == "700 in epoll_wait"


def test_summary_counts_places() -> None:
    threads = parse("py-spy", PY_SPY) * 2
    assert summary(threads, 2) == ("2 of 4 threads in app (app.py:5); 2 in "
                                   "ControlSocketServer._run_loop (gunicorn/ctl/server.py:197)"
                                   " of 2 processes")
    assert summary([], 1) == ""


@dataclass
class Raw:
    source: str
    text: str = ""
    error: str = ""


def test_add_stacks_asks_each_process_once_by_runtime() -> None:
    b = SnapshotBuilder()
    b.process(10, "gunicorn").runtime = Runtime(kind="python")
    b.process(11, "java").runtime = Runtime(kind="java")
    asked: list[tuple[int, str]] = []

    def fetch(pid: int, kind: str) -> Raw:
        asked.append((pid, kind))
        return Raw("py-spy", PY_SPY) if kind == "python" else Raw("jcmd", error="no jcmd")

    both = [ProcessRef(pid=10), ProcessRef(pid=11)]
    findings = [Finding(rule="r", severity="info", title="t", processes=both),
                Finding(rule="s", severity="info", title="u", processes=both[:1])]
    snap = b.build()
    report = diagnose(snap)
    report.findings = findings
    add_stacks(report, snap, fetch)
    assert asked == [(10, "python"), (11, "java")]
    assert findings[0].evidence_lines[-1].startswith("threads: 1 of 2 threads in app (app.py:5)")
    assert findings[1].evidence["stacks"]["10"][0][:2] == ["MainThread", "app (app.py:5)"]
