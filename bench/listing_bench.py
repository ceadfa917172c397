"""ls against ss at the benchmark population, and against an older sockdoctor, in one run.

    python bench/listing_bench.py                         # 144,000 sockets, 7 rounds
    python bench/listing_bench.py --baseline /tmp/old/src # also an older checkout's src/

Builds population.py's mix in a private namespace and times, round-robin
inside it (stdout to /dev/null, a warm-up round first), whole commands:
ss -tan, ss -tan state close-wait, ss -tani and sockdoctor's ls state
close-wait, ls --json, ls -p --json, ls -i --json, with the automatic
engine choice. With --baseline, the same ls commands run from that source
tree (PYTHONPATH; its own C extension built in place) in the same rounds.
Prints medians (wall and CPU) and issue 20's ratios.
"""

from __future__ import annotations

import argparse
import compileall
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from engine_bench import measure, report
from population import Population, mixed
from run import PY

LS = {"ls state close-wait": ["ls", "state", "close-wait"], "ls --json": ["ls", "--json"],
      "ls -p --json": ["ls", "-p", "--json"], "ls -i --json": ["ls", "-i", "--json"]}
SS = {"ss -tan": ["ss", "-tan"], "ss -tan state close-wait": ["ss", "-tan", "state", "close-wait"],
      "ss -tani": ["ss", "-tani"]}
RATIOS = [("ls state close-wait", "ss -tan state close-wait", 1.0), ("ls --json", "ss -tan", None),
          ("ls -p --json", "ss -tan", 1.5), ("ls -i --json", "ss -tani", 0.8)]


def commands(netns: str, baseline: str | None) -> dict[str, list[str]]:
    ns = ["--netns", netns]
    out = dict(SS)
    trees = {"": None} | ({" [baseline]": baseline} if baseline else {})
    for tag, src in trees.items():
        env = ["env", f"PYTHONPATH={src}"] if src else []
        for label, words in LS.items():
            out[label + tag] = [*env, PY, "-m", "sockdoctor", *words[:1], *ns, *words[1:]]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sockets", type=int, default=144_000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--baseline", help="an older checkout's src/ directory")
    args = parser.parse_args()
    import sockdoctor  # an install has its bytecode; PYTHONDONTWRITEBYTECODE may be set here

    for tree in (os.path.dirname(sockdoctor.__file__), args.baseline):
        if tree:
            compileall.compile_dir(tree, quiet=1)
    with Population(mixed(args.sockets), tag="listing") as pop:
        print(f"{pop.sockets} sockets built in {pop.build_seconds:.1f} s", flush=True)
        wall, cpu = measure(pop.netns, commands(pop.netns, args.baseline), args.repeat)
    tags = ("", " [baseline]") if args.baseline else ("",)
    report(pop.sockets, args.repeat, wall, cpu,
           [(num + tag, den, target) for tag in tags for num, den, target in RATIOS])


if __name__ == "__main__":
    main()
