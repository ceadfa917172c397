"""The pytest guard on real test suites nobody here wrote: false flags, leaks, overhead.

    python bench/pytest_real.py [--suite urllib3|requests] [--runs 2] [--work DIR]

For each suite: downloads its source distribution (pip, which carries the
tests), makes a virtualenv with the suite's test requirements and this
sockdoctor, and runs the selection in a fresh network namespace that has
only loopback (`ip netns add`, root needed): once without the guard
(`-p no:sockdoctor`), `--runs` times with `--sockdoctor=fail`, and once with
`--sockdoctor=warn` (under the suite's own filterwarnings). It prints, per
suite: tests passing without the guard, flags on those tests in fail mode
(each run), tests warn mode changed, what the guard reported besides (fixture
leaks, pools), the wall time ratio, and the median per-test setup+teardown
time added (from pytest's --durations). Tests that fail without the guard
(they need the Internet, or versions this machine does not have) are left
out of the comparison, and their number is printed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from xml.etree import ElementTree

ROOT = Path(__file__).resolve().parent.parent

SUITES = {
    "urllib3": {
        "sdist": "urllib3==2.2.3",
        "install": ["urllib3[socks,brotli,zstd]==2.2.3", "pytest", "pytest-timeout", "trustme",
                    "hypercorn", "quart", "quart-trio", "trio", "h2", "PySocks", "pyOpenSSL",
                    "cryptography", "idna", "httpx"],
        "select": ["test/with_dummyserver",
                   # hangs at times, then blocks the interpreter's exit (a pool thread waits
                   # forever on urllib3's HTTP/2 probe lock), with or without the guard
                   "--deselect", "test/with_dummyserver/test_https.py::BaseTestHTTPS::"
                                 "test_http2_probe_blocked_per_thread"],
    },
    "requests": {
        "sdist": "requests==2.32.3",
        "install": ["requests==2.32.3", "pytest", "pytest-httpbin", "httpbin", "pytest-mock",
                    "trustme", "PySocks", "pytest-timeout"],
        "select": ["tests"],
    },
}
OUTCOME = re.compile(r"^(PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS) (\S+)(?: - (.*))?$")


@dataclass
class Run:
    mode: str
    wall: float
    outcomes: dict[str, set[str]] = field(default_factory=dict)  # nodeid -> PASSED/ERROR..
    messages: dict[str, str] = field(default_factory=dict)  # nodeid -> ERROR's message
    times: dict[str, float] = field(default_factory=dict)  # test -> setup+call+teardown s
    summary: list[str] = field(default_factory=list)  # the sockdoctor section

    def passed(self) -> set[str]:
        return {n for n, o in self.outcomes.items() if o == {"PASSED"}}

    def flagged(self) -> set[str]:
        return {n for n, m in self.messages.items() if "sockdoctor" in m}


def sh(*args: str, cwd: Path | None = None) -> None:
    subprocess.run(args, cwd=cwd, check=True, stdout=subprocess.DEVNULL)


def prepare(name: str, work: Path) -> tuple[Path, Path]:
    """The unpacked source distribution and a virtualenv with what its tests need."""
    suite = SUITES[name]
    src = work / name
    venv = work / f"venv-{name}"
    if not src.exists():
        sh(sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
           suite["sdist"], "-d", str(work))
        archive = next(work.glob(f"{suite['sdist'].split('==')[0]}-*.tar.gz"))
        with tarfile.open(archive) as tar:
            tar.extractall(work, filter="data")
        archive.with_suffix("").with_suffix("").rename(src)
    if not venv.exists():
        sh(sys.executable, "-m", "venv", str(venv))
        sh(str(venv / "bin/pip"), "install", "-q", *suite["install"], str(ROOT))
    return src, venv


@contextlib.contextmanager
def loopback_only() -> Iterator[str]:
    name = f"sdbench{os.getpid()}"
    sh("ip", "netns", "add", name)
    try:
        sh("ip", "netns", "exec", name, "ip", "link", "set", "lo", "up")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def run(src: Path, venv: Path, netns: str, select: list[str], mode: str) -> Run:
    guard = ["-p", "no:sockdoctor"] if mode == "off" else [f"--sockdoctor={mode}"]
    xml = src / f"junit-{mode}.xml"
    cmd = ["ip", "netns", "exec", netns, str(venv / "bin/python"), "-m", "pytest", *select,
           "-p", "no:cacheprovider", "-rA", "-q", "--timeout=60", f"--junitxml={xml}", *guard]
    start = time.monotonic()
    out = subprocess.run(cmd, cwd=src, capture_output=True, text=True, timeout=1800).stdout
    result = Run(mode, time.monotonic() - start)
    (src / f"pytest-{mode}-{int(start)}.log").write_text(out)  # kept, to read what went wrong
    result.times = {f"{case.get('classname')}::{case.get('name')}": float(case.get("time", 0))
                    for case in ElementTree.parse(xml).iter("testcase")}
    section = False
    for line in out.splitlines():
        if (m := OUTCOME.match(line)):
            result.outcomes.setdefault(m[2], set()).add(m[1])
            if m[1] in ("ERROR", "FAILED") and m[3]:
                result.messages[m[2]] = m[3]
        if "= sockdoctor =" in line:
            section = True
        elif line.startswith("="):
            section = False
        elif section:
            result.summary.append(line)
    return result


def report(name: str, runs: list[Run]) -> None:
    off, guarded = runs[0], runs[1:]
    base = off.passed()
    print(f"\n== {name}: {len(base)} tests pass without the guard "
          f"({len(off.outcomes) - len(base)} others fail, error or skip without it)")
    for r in guarded:
        flags = sorted(r.flagged() & base)
        changed = sorted(n for n in base if r.outcomes.get(n) != {"PASSED"})
        extra = [line for line in r.summary if not line.startswith(("no TCP", "    "))]
        both = set(off.times) & set(r.times) & {k for k, t in off.times.items() if t < 30}
        tests_off, tests_on = sum(off.times[k] for k in both), sum(r.times[k] for k in both)
        added = statistics.median(r.times[k] - off.times[k] for k in both) * 1000
        print(f"{r.mode}: {len(flags)} flags on passing tests, {len(changed)} passing tests "
              f"changed outcome; wall {r.wall:.1f} s vs {off.wall:.1f} s "
              f"(x{r.wall / off.wall:.2f}); time in tests {tests_on:.1f} s vs {tests_off:.1f} s "
              f"(x{tests_on / tests_off:.2f}); median per test {added:+.2f} ms")
        for nodeid in flags or changed:
            print(f"    flagged: {nodeid}: {r.messages.get(nodeid, r.outcomes.get(nodeid))}")
        for line in extra:
            print(f"    reported: {line[:200]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--suite", choices=sorted(SUITES), action="append")
    parser.add_argument("--runs", type=int, default=2, help="fail-mode runs per suite")
    parser.add_argument("--work", type=Path, help="keep downloads and venvs here")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("pytest_real: needs root (it makes a network namespace)", file=sys.stderr)
        return 2
    work = args.work or Path(tempfile.mkdtemp(prefix="sockdoctor-real-"))
    work.mkdir(parents=True, exist_ok=True)
    for name in args.suite or sorted(SUITES):
        src, venv = prepare(name, work)
        with loopback_only() as netns:
            modes = ["off", *["fail"] * args.runs, "warn"]
            runs = [run(src, venv, netns, SUITES[name]["select"], mode) for mode in modes]
        report(name, runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
