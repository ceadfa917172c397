"""Issue 20: the exporter's CPU per steady sample against `ss -tan`'s wall time, one run.

    python bench/counted_bench.py --sockets 144000 --mix bench
    python bench/counted_bench.py --sockets 144000 --mix realistic

Builds population.py's mix (`bench`: half CLOSE-WAIT; `realistic`: ~95%
ESTABLISHED, ~4% TIME-WAIT, ~1% CLOSE-WAIT with data) in a private namespace.
Each exporter configuration samples back to back (`--interval 0.1s`) and its
CPU time (utime + stime of the process and its /proc walkers, from
/proc/PID/stat, as exporter_bench.py reads it) over the samples after the
first is divided by their number:
  counted [bpf]     --no-doctor, the kernel engine: every one of samples
                    2-11 is counted in the kernel (Sampler.count_in_kernel)
  sock_diag [c]     --no-doctor, SOCKDOCTOR_ENGINE=c: the same samples
                    through sock_diag and the owner cache
  doctor 1 in 6 [bpf]  --doctor-every 6 over samples 2-13: what the default
                    (--doctor-every auto) does at this size, amortised
`ss -tan` runs inside the namespace (`ip netns exec` overhead, timed on
`true`, subtracted) before and after the exporters; the target is a steady
sample's CPU <= 0.5x its median wall time. Its CPU time is shown too: on a
loaded machine the wall time grows with the wait for a CPU, the CPU time not.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from exporter_bench import Figures, steady_cpu
from population import MIXES, Population
from run import in_netns, machine, run_measured

TARGET = 0.5
CONFIGS = (("counted [bpf]", "bpf", 10, ("--no-doctor",)),
           ("sock_diag [c]", "c", 10, ("--no-doctor",)),
           ("doctor 1 in 6 [bpf]", "bpf", 12, ("--doctor-every", "6")))


def ss_runs(netns: str, runs: int) -> list[tuple[float, float]]:
    """(wall, CPU) of `ss -tan` runs, less those of `ip netns exec NS true`."""
    true = [run_measured(in_netns(netns, ["true"])) for _ in range(5)]
    wall0, cpu0 = (statistics.median(r[i] for r in true) for i in (0, 2))
    out = []
    for _ in range(runs):
        wall, _rss, cpu = run_measured(in_netns(netns, ["ss", "-tan"]))
        out.append((wall - wall0, max(0.0, cpu - cpu0)))
    return out


def measure(mix: str, sockets: int, say  # type: ignore[no-untyped-def]
            ) -> tuple[Figures, list[tuple[float, float]]]:
    with Population(MIXES[mix](sockets), tag=f"cb{os.getpid() % 10000}") as pop:
        counts = dict(pop.count_states())
        say(f"{pop.sockets} sockets ({mix} mix: {counts}) in {pop.netns}, built in "
            f"{pop.build_seconds:.1f} s")
        run_measured(in_netns(pop.netns, ["ss", "-tan"]))  # warm-up
        walls = ss_runs(pop.netns, 5)
        figures = Figures(pop.sockets)
        for label, engine, samples, args in CONFIGS:
            os.environ["SOCKDOCTOR_ENGINE"] = engine
            try:
                steady_cpu(pop.netns, label, samples, figures, *args)
            finally:
                del os.environ["SOCKDOCTOR_ENGINE"]
            say(f"  {label}: {figures.cpu[label]:.3f} s CPU per sample "
                f"(wall {figures.sample_wall[label]:.3f} s)")
        walls += ss_runs(pop.netns, 5)
        say(f"  ss -tan (wall, CPU): {[(round(w, 3), round(c, 3)) for w, c in walls]}")
    return figures, walls


def table(mix: str, figures: Figures, runs: list[tuple[float, float]]) -> list[str]:
    ss = statistics.median(w for w, _c in runs)
    ss_cpu = statistics.median(c for _w, c in runs)
    lines = [f"{mix} mix, {figures.sockets} sockets; `ss -tan` median {ss:.3f} s wall, "
             f"{ss_cpu:.3f} s CPU, of {len(runs)} runs (budget {TARGET}x wall = "
             f"{TARGET * ss:.3f} s CPU per sample).", "",
             "| exporter configuration | CPU s per sample | wall s per sample | x ss -tan wall "
             "| x ss -tan CPU | target met |", "|---|---|---|---|---|---|"]
    for label, cpu in figures.cpu.items():
        lines.append(f"| {label} | {cpu:.3f} | {figures.sample_wall[label]:.3f} | "
                     f"{cpu / ss:.2f}x | {cpu / ss_cpu if ss_cpu else 0:.2f}x | "
                     f"{'yes' if cpu <= TARGET * ss else 'no'} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sockets", type=int, default=144_000)
    parser.add_argument("--mix", choices=sorted(MIXES), default="bench")
    args = parser.parse_args()
    figures, walls = measure(args.mix, args.sockets, lambda line: print(line, flush=True))
    print("\n".join(["", *table(args.mix, figures, walls), "", f"Machine: {machine()}"]))


if __name__ == "__main__":
    main()
