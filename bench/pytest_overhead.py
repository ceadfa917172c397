"""What the pytest plugin costs per test when nothing leaks (target: <= 1 ms, issue 11).

Writes a throw-away project with N trivial tests, runs pytest on it with the
plugin off, unloaded (-p no:sockdoctor) and on (--sockdoctor=fail), and
compares the median wall time of one test's whole protocol (setup, call,
teardown and the reports), taken by a timing plugin that wraps everything
else. Runs alternate between the variants so load on the machine hits all
of them alike.

    python bench/pytest_overhead.py                 # 500 tests, 5 rounds
    python bench/pytest_overhead.py --tests 500 --rounds 5 --markdown /tmp/pytest.md

A second project adds a session-scoped server fixture holding TCP sockets
(a listener and two connections), so each check also inspects sockets:
that is the cost per test of a suite whose process keeps sockets open.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

TIMER = textwrap.dedent("""
    import json, os, time
    import pytest

    TIMES = []

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_protocol(item, nextitem):
        start = time.perf_counter()
        try:
            return (yield)
        finally:
            TIMES.append(time.perf_counter() - start)

    def pytest_sessionfinish(session):
        with open(os.environ["SDBENCH_OUT"], "w") as f:
            json.dump(TIMES, f)
""")

SERVER = textwrap.dedent("""
    import socket
    import pytest

    @pytest.fixture(scope="session", autouse=True)
    def held_sockets():
        srv = socket.create_server(("127.0.0.1", 0))
        client = socket.create_connection(srv.getsockname())
        conn, _ = srv.accept()
        yield
        for sock in (client, conn, srv):
            sock.close()
""")

VARIANTS = {
    "off": ["--sockdoctor=off"],
    "unloaded": ["-p", "no:sockdoctor"],
    "on": ["--sockdoctor=fail"],
}


def make_project(root: Path, tests: int, with_sockets: bool) -> None:
    root.mkdir(parents=True)
    (root / "conftest.py").write_text(TIMER + (SERVER if with_sockets else ""))
    per_file = 50
    for start in range(0, tests, per_file):
        body = "".join(f"def test_{i}():\n    pass\n\n" for i in range(start, min(tests,
                                                                              start + per_file)))
        (root / f"test_trivial_{start // per_file}.py").write_text(body)


def run_once(root: Path, args: list[str]) -> list[float]:
    out = root / "times.json"
    env = dict(os.environ, SDBENCH_OUT=str(out))
    env.pop("PYTEST_ADDOPTS", None)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "-p", "no:hypothesispytest", *args], cwd=root, env=env,
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise SystemExit(f"pytest failed ({proc.returncode}):\n{proc.stdout[-2000:]}")
    return json.loads(out.read_text())


def measure(root: Path, rounds: int) -> dict[str, list[float]]:
    """Median per-test time of each round, per variant (seconds)."""
    medians: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _ in range(rounds):
        for name, args in VARIANTS.items():
            medians[name].append(statistics.median(run_once(root, args)))
    return medians


def report(title: str, tests: int, medians: dict[str, list[float]]) -> list[str]:
    def us(name: str) -> float:
        return statistics.median(medians[name]) * 1e6

    overhead = us("on") - us("off")
    lines = [f"### {title} ({tests} tests, median of {len(medians['on'])} rounds)", "",
             "| variant | median per test | vs off |", "|---|---|---|"]
    for name in VARIANTS:
        lines.append(f"| {name} | {us(name):.0f} µs | {us(name) - us('off'):+.0f} µs |")
    verdict = "met" if overhead <= 1000 else "missed"
    lines += ["", f"Plugin overhead: {overhead:.0f} µs per test (target <= 1000 µs: {verdict})",
              ""]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tests", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--markdown", help="also write the tables to this file")
    args = parser.parse_args()
    out: list[str] = []
    with tempfile.TemporaryDirectory(prefix=f"sdbench-pytest-{os.getpid()}-") as tmp:
        for title, with_sockets in (("trivial tests, no sockets", False),
                                    ("trivial tests, a session fixture holding 3 TCP "
                                     "sockets", True)):
            root = Path(tmp) / ("sockets" if with_sockets else "plain")
            make_project(root, args.tests, with_sockets)
            out += report(title, args.tests, measure(root, args.rounds))
    text = "\n".join(out)
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")


if __name__ == "__main__":
    main()
