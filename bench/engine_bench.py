"""The kernel engine (BPF iterators) beside the C and pure paths, against ss, in one run.

    python bench/engine_bench.py                      # 144,000 sockets, 5 runs each
    python bench/engine_bench.py --sockets 36000 --repeat 3

Builds population.py's mix in a private namespace, then times round-robin,
inside it, whole commands (start-up included, stdout to /dev/null):
  ss -tan, ss -tan state close-wait
  sockdoctor ls -p --json   with SOCKDOCTOR_ENGINE=bpf, =c and =pure
  sockdoctor ls --json      (no owners: the floor of the Python listing)
  sockdoctor ls state close-wait
  the owner walk alone: the iter/task_file program vs the C /proc walk
      (a Python process that only imports and walks)
and prints medians, CPU time and the ratios issue 20 names.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from population import Population, mixed
from run import PY, in_netns, machine, run_measured, sockdoctor_argv

WALK_BPF = "from sockdoctor.linux.bpf import owners; owners.walk()"
WALK_PROC = "from sockdoctor.linux import procfs; procfs._walk(procfs.list_pids(), procfs._cpus())"
RATIOS = [("ls -p --json [bpf]", "ss -tan", 1.5),
          ("ls -p --json [c]", "ss -tan", None),
          ("ls state close-wait [bpf]", "ss -tan state close-wait", 1.0),
          ("owner walk [bpf]", "owner walk [/proc, C]", None)]


def commands(netns: str) -> dict[str, list[str]]:
    sd = sockdoctor_argv()
    ns = ["--netns", netns]

    def engine(name: str, *words: str) -> list[str]:
        return ["env", f"SOCKDOCTOR_ENGINE={name}", *sd, *words]
    return {
        "ss -tan": ["ss", "-tan"],
        "ss -tan state close-wait": ["ss", "-tan", "state", "close-wait"],
        "ls -p --json [bpf]": engine("bpf", "ls", "-p", "--json", *ns),
        "ls -p --json [c]": engine("c", "ls", "-p", "--json", *ns),
        "ls -p --json [pure]": engine("pure", "ls", "-p", "--json", *ns),
        "ls --json (no owners)": engine("c", "ls", "--json", *ns),
        "ls state close-wait [bpf]": engine("bpf", "ls", *ns, "state", "close-wait"),
        "owner walk [bpf]": ["env", "SOCKDOCTOR_ENGINE=bpf", PY, "-c", WALK_BPF],
        "owner walk [/proc, C]": [PY, "-c", WALK_PROC],
        "python start-up + import": [PY, "-c", "import sockdoctor.inventory"],
    }


Runs = dict[str, list[float]]


def measure(netns: str, cmds: dict[str, list[str]], repeat: int) -> tuple[Runs, Runs]:
    """Wall and CPU seconds of each command, run inside `netns`: one warm-up, then
    `repeat` rounds with the commands alternating."""
    wall: Runs = {}
    cpu: Runs = {}
    for argv in cmds.values():  # warm-up
        run_measured(in_netns(netns, argv), (0, 1))
    for _ in range(repeat):
        for label, argv in cmds.items():
            elapsed, _rss, used = run_measured(in_netns(netns, argv), (0, 1))
            wall.setdefault(label, []).append(elapsed)
            cpu.setdefault(label, []).append(used)
    return wall, cpu


def report(sockets: int, repeat: int, wall: Runs, cpu: Runs,
           ratios: list[tuple[str, str, float | None]]) -> None:
    """The table of medians, then each ratio (wall and CPU) against its target."""
    med = {k: statistics.median(v) for k, v in wall.items()}
    print(f"\nMachine: {machine()}\n{sockets} sockets, median of {repeat} runs\n")
    print("| command | wall s (median) | CPU s (median) | runs (s) |\n|---|---|---|---|")
    for label, times in wall.items():
        runs = ", ".join(f"{t:.3f}" for t in times)
        print(f"| {label} | {med[label]:.3f} | {statistics.median(cpu[label]):.3f} | {runs} |")
    print()
    for num, den, target in ratios:
        ratio = med[num] / med[den]
        cpu_den = statistics.median(cpu[den])  # 0 when too small for the 10 ms ticks
        cpu_ratio = statistics.median(cpu[num]) / cpu_den if cpu_den else float("nan")
        goal = "" if target is None else f" (target <= {target}: " + (
            "OK)" if ratio <= target else f"MISS {ratio / target:.2f}x)")
        print(f"{num} / {den} = {ratio:.2f} wall, {cpu_ratio:.2f} CPU{goal}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sockets", type=int, default=144_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with Population(mixed(args.sockets), tag="perfeng") as pop:
        print(f"{pop.sockets} sockets built in {pop.build_seconds:.1f} s", flush=True)
        wall, cpu = measure(pop.netns, commands(pop.netns), args.repeat)
    report(pop.sockets, args.repeat, wall, cpu, RATIOS)


if __name__ == "__main__":
    main()
