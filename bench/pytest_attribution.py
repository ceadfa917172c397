"""Does any verdict of the pytest guard depend on thread scheduling? 50 runs say.

Writes the ten-line fixture project of the test suite (a `server` fixture
accepting in a thread and closing its connections at teardown; `test_clean`
uses a client in a `with` block) with two real leaks beside it (a client kept
in a global; a test that leaves the server side of its own connection open),
and runs pytest on it N times in separate processes in fail mode, optionally
with pytest-xdist. Prints how often each test passed and how often each leak
was caught: the target is N of N for both.

    python bench/pytest_attribution.py [--runs 50] [--workers 2]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "integration"))

from test_pytest_plugin import TEN_LINE_FIXTURE, TEN_LINE_TESTS  # noqa: E402

LINE = re.compile(r"^(PASSED|ERROR|FAILED) test_ten\.py::(\w+)\[0\]")


def one_run(project: Path, workers: int) -> Counter[tuple[str, str]]:
    xdist = ["-n", str(workers)] if workers else []
    out = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rA", "-q",
                          "--sockdoctor=fail", *xdist], cwd=project, capture_output=True,
                         text=True).stdout
    return Counter((m[2], m[1]) for line in out.splitlines() if (m := LINE.match(line)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--workers", type=int, default=0, help="pytest-xdist workers (0: none)")
    args = parser.parse_args()
    project = Path(tempfile.mkdtemp(prefix="sockdoctor-ten-"))
    (project / "conftest.py").write_text(textwrap.dedent(TEN_LINE_FIXTURE))
    (project / "test_ten.py").write_text(TEN_LINE_TESTS.format(n=1))
    total: Counter[tuple[str, str]] = Counter()
    start = time.monotonic()
    for _ in range(args.runs):
        total.update(one_run(project, args.workers))
    elapsed = time.monotonic() - start
    xdist = f" with {args.workers} xdist workers" if args.workers else ""
    print(f"{args.runs} runs in fail mode{xdist} ({elapsed:.0f} s):")
    print(f"  test_clean passed {total['test_clean', 'PASSED']}/{args.runs}, "
          f"flagged {total['test_clean', 'ERROR']}")
    for leak in ("test_client_kept_in_a_global", "test_leaves_its_server_side_open"):
        print(f"  {leak} caught {total[leak, 'ERROR']}/{args.runs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
