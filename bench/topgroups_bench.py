"""Issue 20: top's steady refresh grouped in the kernel against the usual paths, one run.

    python bench/topgroups_bench.py --sockets 144000 --refreshes 8

Builds population.py's realistic mix (~95% ESTABLISHED, ~4% TIME-WAIT, ~1%
CLOSE-WAIT with data) in a private namespace. Each configuration runs in its
own process: a Sampler as `top` makes it (doctor off: a steady refresh is one
the doctor does not run on) feeding a TopModel; the first sample (a full
scan) is left out, and the CPU of each later refresh (the sample's cpu_s +
TopModel.update's thread CPU) is averaged:
  grouped [bpf]   Sampler.group_in_kernel: placed ESTABLISHED sockets counted
                  in the kernel per owner x service (linux/bpf/groups.py)
  listed [bpf]    the kernel engine without grouping (every socket listed)
  listed [c]      SOCKDOCTOR_ENGINE=c: sock_diag and the owner cache
`ss -tan` runs in the namespace in the same run (`ip netns exec` overhead,
timed on `true`, subtracted), for scale.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from counted_bench import ss_runs
from population import MIXES, Population

CONFIGS = (("grouped [bpf]", "bpf", True), ("listed [bpf]", "bpf", False),
           ("listed [c]", "c", False))


def child(netns: str, refreshes: int, grouped: bool, profile: str = "") -> dict:
    from sockdoctor.watch import Sampler, tune_gc
    from sockdoctor.watch.top import TopModel

    sampler = Sampler(query=None, netns=netns, interval=1.0, doctor=False)
    model = TopModel()
    if grouped:
        sampler.group_in_kernel(lambda: not model.query.narrows)
    tune_gc()
    first = time.process_time()
    model.update(sampler.sample())
    first = time.process_time() - first
    cpu, model_s, counted, listed = [], [], 0, 0
    prof = None
    if profile:
        import cProfile
        prof = cProfile.Profile()
    for _ in range(refreshes):
        if prof is not None:
            prof.enable()
        sample = sampler.sample()
        start = time.thread_time()
        model.update(sample)
        spent = time.thread_time() - start
        cpu.append(sample.cpu_s + spent)
        model_s.append(spent)
        if prof is not None:
            prof.disable()
        counted += sample.tallies is not None
        listed = len(sample.snapshot.sockets)
    if prof is not None:
        import pstats
        with open(profile, "w") as out:
            pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(25)
    sockets = sum(g.count for g in model.groups)
    sampler.close()
    return {"first": first, "cpu": statistics.mean(cpu), "model": statistics.mean(model_s),
            "grouped_samples": counted, "listed": listed, "sockets": sockets,
            "groups": len(model.groups)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sockets", type=int, default=144_000)
    ap.add_argument("--refreshes", type=int, default=8)
    ap.add_argument("--profile", metavar="FILE", default="",
                    help="cProfile of the grouped refreshes, into FILE")
    ap.add_argument("--child", nargs=2, metavar=("NETNS", "GROUPED"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], args.refreshes, args.child[1] == "1",
                               args.profile)))
        return
    with Population(MIXES["realistic"](args.sockets), tag=f"tg{os.getpid() % 10000}") as pop:
        print(f"{pop.sockets} sockets ({dict(pop.count_states())}), built in "
              f"{pop.build_seconds:.1f} s", flush=True)
        walls = ss_runs(pop.netns, 5)
        for name, engine, grouped in CONFIGS:
            env = dict(os.environ, SOCKDOCTOR_ENGINE=engine)
            env.pop("SOCKDOCTOR_PURE", None)
            done = subprocess.run([sys.executable, __file__, "--refreshes", str(args.refreshes),
                                   "--profile", args.profile if grouped else "",
                                   "--child", pop.netns, "1" if grouped else "0"],
                                  env=env, capture_output=True, text=True, timeout=1800)
            if done.returncode:
                raise RuntimeError(done.stderr[-2000:])
            r = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"| {name} | {r['first']:.2f} | {r['cpu']:.3f} | {r['model']:.3f} | "
                  f"{r['listed']:,} | {r['sockets']:,} | {r['groups']} | "
                  f"{r['grouped_samples']} |", flush=True)
        walls += ss_runs(pop.netns, 5)
        print(f"ss -tan: wall {statistics.median(w for w, _ in walls):.3f} s, "
              f"CPU {statistics.median(c for _, c in walls):.3f} s (medians of 10)")


if __name__ == "__main__":
    main()
