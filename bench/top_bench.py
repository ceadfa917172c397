"""`sockdoctor top` at 143k sockets: CPU per refresh against a cold `ls -p --json`, memory.

    python bench/top_bench.py                       # 143,000 sockets, 30 refreshes
    python bench/top_bench.py --sockets 36000 --refreshes 10 --markdown /tmp/top.md

The population is bench/population.py's (half CLOSE-WAIT, in a namespace made
here). Measured in the same run:
- cold `sockdoctor ls -p --json --netns NS > /dev/null`, a new process each
  time: CPU time (user + system, its owner walkers included) and wall time;
- top itself, as its full-screen app (Textual, headless, the real TopApp with
  the real sampler at --interval 1s, --doctor-every 10), in its own process:
  CPU time per refresh (total CPU after the first sample / refreshes; the
  first sample is a full scan, like the cold ls) and peak RSS.
Full-size runs go under `flock /tmp/sockdoctor-bench.lock` (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from population import Population, mixed  # noqa: E402


def cold_ls(netns: str, runs: int) -> tuple[list[float], list[float]]:
    """CPU and wall seconds of `ls -p --json`, each a fresh process."""
    cpu, wall = [], []
    for _ in range(runs):
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "sockdoctor", "ls", "-p", "--json",
                                 "--netns", netns], stdout=subprocess.DEVNULL)
        _pid, status, usage = os.wait4(proc.pid, 0)
        wall.append(time.perf_counter() - start)
        if os.waitstatus_to_exitcode(status) != 0:
            raise RuntimeError("ls -p --json failed")
        cpu.append(usage.ru_utime + usage.ru_stime)
    return cpu, wall


def top_child(netns: str, refreshes: int, interval: float) -> dict:
    """Run the real app headless in this (child) process; report CPU per refresh."""
    import asyncio

    from sockdoctor.render.topapp import TopApp
    from sockdoctor.watch import Sampler, tune_gc
    from sockdoctor.watch.top import TopModel

    def cpu() -> float:
        me = resource.getrusage(resource.RUSAGE_SELF)
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)  # forked owner walkers
        return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime

    sampler = Sampler(query=None, netns=netns, interval=interval, doctor=True, doctor_every=10)
    tune_gc()  # as cli/top.py does
    model = TopModel()
    first_cpu = cpu()
    model.update(sampler.sample())
    first_cpu = cpu() - first_cpu
    rss_first = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    seen: list[float] = []
    parts = {"sampler_cpu": 0.0, "doctor_runs": 0, "model_s": 0.0}
    update = model.update

    def timed_update(sample) -> None:  # where a refresh's time goes
        parts["sampler_cpu"] += sample.cpu_s
        parts["doctor_runs"] += sample.doctor_ran
        start = time.thread_time()  # this thread's CPU: the sampler's waits meanwhile
        update(sample)
        parts["model_s"] += time.thread_time() - start

    model.update = timed_update  # type: ignore[method-assign]

    async def drive() -> None:
        app = TopApp(model, sampler, interval)
        async with app.run_test(size=(180, 50)) as pilot:
            start, start_seq = cpu(), model.sample.seq
            while model.sample.seq < start_seq + refreshes:
                await pilot.pause(0.2)
            seen.append(cpu() - start)
            seen.append(model.sample.seq - start_seq)
            seen.append(len(model.sample.snapshot.sockets))
            await pilot.press("q")

    asyncio.run(drive())
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"first_sample_cpu": first_cpu, "cpu": seen[0], "refreshes": seen[1],
            "sockets": seen[2], "max_rss_kb": rss_kb, "rss_after_first_kb": rss_first, **parts}


def measure(sockets: int, refreshes: int, runs: int, interval: float) -> dict:
    with Population(mixed(sockets), tag="top") as pop:
        ls_cpu, ls_wall = cold_ls(pop.netns, runs)
        done = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", pop.netns,
                               "--refreshes", str(refreshes), "--interval", str(interval)],
                              capture_output=True, text=True, timeout=3600)
        if done.returncode != 0:
            raise RuntimeError(done.stderr[-2000:])
        top = json.loads(done.stdout.strip().splitlines()[-1])
        return {"sockets": pop.sockets, "ls_cpu": statistics.median(ls_cpu),
                "ls_wall": statistics.median(ls_wall), **top}


def markdown(r: dict) -> str:
    per = r["cpu"] / r["refreshes"]
    ratio = per / r["ls_cpu"]
    rss = r["max_rss_kb"] / 1024
    return "\n".join([
        "| what | measured | target | verdict |", "|---|---|---|---|",
        f"| cold `ls -p --json` ({r['sockets']:,} sockets) | CPU {r['ls_cpu']:.2f} s, "
        f"wall {r['ls_wall']:.2f} s (median) | | |",
        f"| top: first sample (full scan + doctor) | CPU {r['first_sample_cpu']:.2f} s | | |",
        f"| top: one refresh (mean of {r['refreshes']}, doctor every 10th included) | "
        f"CPU {per:.3f} s = {ratio:.2f}x cold ls | <= 0.5x | "
        f"{'met' if ratio <= 0.5 else 'missed'} |",
        f"| of which the sampler (its own cpu_s; {r['doctor_runs']} doctor runs) | "
        f"CPU {r['sampler_cpu'] / r['refreshes']:.3f} s per refresh | | |",
        f"| of which grouping the sockets (TopModel.update, its thread's CPU) | "
        f"{r['model_s'] / r['refreshes']:.3f} s per refresh | | |",
        f"| top: peak RSS (after the first sample: "
        f"{r['rss_after_first_kb'] / 1024:.0f} MiB) | {rss:.0f} MiB | <= 300 MB | "
        f"{'met' if rss * 1.048576 <= 300 else 'missed'} |",
    ]) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sockets", type=int, default=143_000)
    ap.add_argument("--refreshes", type=int, default=30)
    ap.add_argument("--interval", type=float, default=1.0)
    ap.add_argument("--runs", type=int, default=3, help="cold ls runs")
    ap.add_argument("--markdown", metavar="FILE")
    ap.add_argument("--child", metavar="NETNS", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(top_child(args.child, args.refreshes, args.interval)))
        return
    if os.geteuid() != 0:
        sys.exit("top_bench.py needs root (namespaces)")
    result = measure(args.sockets, args.refreshes, args.runs, args.interval)
    text = markdown(result)
    print(json.dumps(result))
    print(text)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
