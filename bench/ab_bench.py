"""A/B: the everyday commands of two sockdoctor checkouts on ONE population, alternating.

    python bench/ab_bench.py --new . --old /work/wt/old66 --sockets 50000 --rounds 5
    python bench/ab_bench.py --new . --old ../old --engines default,c --markdown /tmp/ab.md

Each checkout is a directory with its own `.venv` (`pip install -e .`). One
population (population.py's bench mix: half CLOSE-WAIT, in a namespace made
here) is built once; then, for each engine setting (`default` leaves
SOCKDOCTOR_ENGINE unset so each checkout picks its own; `c` sets it for both),
every command runs once per side to warm up and then `--rounds` times per
side, old and new alternating (which one goes first flips each round, so a
drift in the machine's load falls on both). Commands run in the root
namespace with `--netns NS`, stdout to /dev/null; wall time and CPU time
(user + sys of the child and its waited-for owner walkers, from GNU time
when present) are recorded, and medians compared as new/old.

Besides the one-shot commands: the exporter's steady sample (`--no-doctor`,
back to back, CPU and wall per sample over `--samples` samples after the
first, as exporter_bench.py measures it) and top's refresh (top_bench.py's
headless child from each checkout's own bench/, CPU per refresh).

`kill state close-wait` runs without --yes: it shows the plan and acts on
nothing (stdin is not a terminal), and only in the namespace made here.
Each checkout's sources are byte-compiled first (PYTHONDONTWRITEBYTECODE
would otherwise charge every run the compile of every module).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from exporter_bench import Exporter
from population import Population, mixed
from run import run_measured

SLOW_SECONDS = 20.0  # a command slower than this gets `--slow-rounds` rounds
NOISE = 0.05  # a ratio above 1 + NOISE in both wall and CPU is "slower"


@dataclass(frozen=True)
class Side:
    name: str  # "old" or "new"
    root: Path

    @property
    def exe(self) -> str:
        return str(self.root / ".venv" / "bin" / "sockdoctor")

    @property
    def python(self) -> str:
        return str(self.root / ".venv" / "bin" / "python")

    def compile(self) -> None:
        subprocess.run([self.python, "-m", "compileall", "-q", str(self.root / "src")],
                       check=True, stdout=subprocess.DEVNULL)


@dataclass
class Figures:
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    code: int = 0
    out_lines: int = 0  # warm-up stdout lines: both sides must print the same amount


def commands(netns: str, tmp: str) -> list[tuple[str, list[str]]]:
    ns = ["--netns", netns]
    return [
        ("ls", ["ls", *ns]),
        ("ls --json", ["ls", "--json", *ns]),
        ("ls -p --json", ["ls", "-p", "--json", *ns]),
        ("ls -i --json", ["ls", "-i", "--json", *ns]),
        ("ls state close-wait", ["ls", "state", "close-wait", *ns]),
        ("ls -s", ["ls", "-s", *ns]),
        ("doctor --json", ["doctor", "--json", *ns]),
        ("kill state close-wait (plan, no --yes)",
         ["kill", "state", "close-wait", "--json", "--max", "1000000", *ns]),
        ("snapshot -o FILE", ["snapshot", "-o", f"{tmp}/ab_bench-SIDE.json", *ns]),
    ]


def warm_up(side: Side, argv: list[str], env: dict[str, str]) -> tuple[float, int, int]:
    """One run with stdout kept: (seconds, exit code, stdout lines)."""
    start = time.perf_counter()
    proc = subprocess.run([side.exe, *argv], env=env, capture_output=True, stdin=subprocess.DEVNULL)
    elapsed = time.perf_counter() - start
    if b"Traceback (most recent call last)" in proc.stderr or proc.returncode > 3:
        raise RuntimeError(f"{side.name} {' '.join(argv)}: {proc.returncode}: "
                           f"{proc.stderr[-1500:].decode(errors='replace')}")
    return elapsed, proc.returncode, proc.stdout.count(b"\n")


def with_env(env: dict[str, str]) -> None:
    os.environ.clear()
    os.environ.update(env)


def time_command(sides: list[Side], argv: list[str], env: dict[str, str], rounds: int,
                 say) -> dict[str, Figures]:  # type: ignore[no-untyped-def]
    figs = {s.name: Figures() for s in sides}
    for side in sides:
        real = [a.replace("SIDE", side.name) for a in argv]
        elapsed, code, lines = warm_up(side, real, env)
        figs[side.name].code, figs[side.name].out_lines = code, lines
        if elapsed > SLOW_SECONDS:
            rounds = min(rounds, 3)
    saved = dict(os.environ)
    with_env(env)  # run_measured passes this process's environment on
    try:
        for r in range(rounds):
            for side in (sides if r % 2 == 0 else sides[::-1]):
                real = [a.replace("SIDE", side.name) for a in argv]
                wall, _rss, cpu = run_measured([side.exe, *real], (figs[side.name].code,))
                figs[side.name].wall.append(wall)
                figs[side.name].cpu.append(cpu)
    finally:
        with_env(saved)
    return figs


def exporter_sample(side: Side, netns: str, env: dict[str, str],
                    samples: int) -> tuple[float, float]:
    """(wall, CPU) seconds per steady sample: --no-doctor, back to back."""
    proc = subprocess.Popen([side.exe, "exporter", "--netns", netns, "--listen", "127.0.0.1:0",
                             "--interval", "0.1s", "--no-doctor"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    line = proc.stderr.readline()  # type: ignore[union-attr]
    if "http://" not in line:
        proc.kill()
        raise RuntimeError(f"{side.name} exporter did not start: {line}")
    exporter = Exporter(proc, "http://" + line.split("http://", 1)[1].split(",", 1)[0])
    try:
        exporter.wait_samples(1)
        cpu0, t0 = exporter.cpu(), time.perf_counter()
        exporter.wait_samples(1 + samples)
        return (time.perf_counter() - t0) / samples, (exporter.cpu() - cpu0) / samples
    finally:
        exporter.stop()


def top_refresh(side: Side, netns: str, env: dict[str, str], refreshes: int) -> tuple[float, float]:
    """(wall, CPU) per refresh of top's headless app, from the side's own top_bench.py."""
    start = time.perf_counter()
    done = subprocess.run([side.python, str(side.root / "bench" / "top_bench.py"), "--child",
                           netns, "--refreshes", str(refreshes), "--interval", "1"],
                          env=env, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"{side.name} top: {done.stderr[-1500:]}")
    top = json.loads(done.stdout.strip().splitlines()[-1])
    return (time.perf_counter() - start) / top["refreshes"], top["cpu"] / top["refreshes"]


def time_daemon(sides: list[Side], run, rounds: int) -> dict[str, Figures]:  # type: ignore[no-untyped-def]
    figs = {s.name: Figures() for s in sides}
    for r in range(rounds):
        for side in (sides if r % 2 == 0 else sides[::-1]):
            wall, cpu = run(side)
            figs[side.name].wall.append(wall)
            figs[side.name].cpu.append(cpu)
    return figs


def engine_env(engine: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "SOCKDOCTOR_ENGINE"}
    if engine != "default":
        env["SOCKDOCTOR_ENGINE"] = engine
    return env


def measure(args: argparse.Namespace, sides: list[Side], say) -> dict:  # type: ignore[no-untyped-def]
    results: dict = {"load_before": os.getloadavg(), "engines": {}}
    with Population(mixed(args.sockets), tag=f"ab{os.getpid() % 10000}") as pop:
        results["sockets"], results["netns"] = pop.sockets, pop.netns
        say(f"{pop.sockets} sockets in {pop.netns}, built in {pop.build_seconds:.0f} s")
        for engine in args.engines.split(","):
            results["engines"][engine] = measure_engine(args, sides, pop.netns, engine, say)
    for side in sides:  # the snapshots written (tens of MB)
        Path(f"{args.tmp}/ab_bench-{side.name}.json").unlink(missing_ok=True)
    results["load_after"] = os.getloadavg()
    return results


def measure_engine(args: argparse.Namespace, sides: list[Side], netns: str, engine: str,
                   say) -> dict[str, dict[str, Figures]]:  # type: ignore[no-untyped-def]
    env, rows = engine_env(engine), {}
    for label, argv in commands(netns, args.tmp):
        if args.only and label not in args.only:
            continue
        rows[label] = time_command(sides, argv, env, args.rounds, say)
        say(f"  [{engine}] {label}: " + summary(rows[label]))
    if args.only:  # a re-run of some one-shot commands: no daemons
        return rows
    rows["exporter steady sample (--no-doctor)"] = time_daemon(
        sides, lambda s: exporter_sample(s, netns, env, args.samples), args.daemon_rounds)
    rows["top refresh"] = time_daemon(
        sides, lambda s: top_refresh(s, netns, env, args.refreshes), args.daemon_rounds)
    for label in list(rows)[-2:]:
        say(f"  [{engine}] {label}: " + summary(rows[label]))
    return rows


def ratio(figs: dict[str, Figures], attr: str) -> float:
    old = statistics.median(getattr(figs["old"], attr))
    return statistics.median(getattr(figs["new"], attr)) / old if old else float("nan")


def summary(figs: dict[str, Figures]) -> str:
    return (f"wall {statistics.median(figs['old'].wall):.3f} -> "
            f"{statistics.median(figs['new'].wall):.3f} s ({ratio(figs, 'wall'):.2f}x), "
            f"CPU {statistics.median(figs['old'].cpu):.3f} -> "
            f"{statistics.median(figs['new'].cpu):.3f} s ({ratio(figs, 'cpu'):.2f}x)")


def verdict(figs: dict[str, Figures]) -> str:
    wall, cpu = ratio(figs, "wall"), ratio(figs, "cpu")
    if wall > 1 + NOISE and cpu > 1 + NOISE:
        return "**slower**"
    if wall < 1 - NOISE and cpu < 1 - NOISE:
        return "faster"
    return "same"


def markdown(results: dict) -> str:
    lines = []
    for engine, rows in results["engines"].items():
        lines += [f"SOCKDOCTOR_ENGINE={'(unset)' if engine == 'default' else engine}:", "",
                  "| command | old wall s | new wall s | new/old wall | old CPU s | new CPU s "
                  "| new/old CPU | runs | verdict |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for label, figs in rows.items():
            o, n = figs["old"], figs["new"]
            note = ("" if o.out_lines == n.out_lines
                    else f" (output lines {o.out_lines} vs {n.out_lines})")
            lines.append(
                f"| `{label}`{note} | {statistics.median(o.wall):.3f} | "
                f"{statistics.median(n.wall):.3f} | {ratio(figs, 'wall'):.2f} | "
                f"{statistics.median(o.cpu):.3f} | {statistics.median(n.cpu):.3f} | "
                f"{ratio(figs, 'cpu'):.2f} | {len(o.wall)}+{len(n.wall)} | {verdict(figs)} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--new", required=True, type=Path, help="checkout with a .venv")
    ap.add_argument("--old", required=True, type=Path, help="checkout with a .venv")
    ap.add_argument("--sockets", type=int, default=50_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--daemon-rounds", type=int, default=3)
    ap.add_argument("--samples", type=int, default=10, help="exporter samples after the first")
    ap.add_argument("--refreshes", type=int, default=5, help="top refreshes per run")
    ap.add_argument("--engines", default="default,c")
    ap.add_argument("--only", type=lambda v: v.split(","), default=[],
                    help="only these commands (labels as in the table, comma-separated)")
    ap.add_argument("--tmp", default="/tmp")
    ap.add_argument("--markdown", metavar="FILE")
    ap.add_argument("--json", metavar="FILE", help="raw figures")
    args = ap.parse_args()
    sides = [Side("old", args.old.resolve()), Side("new", args.new.resolve())]
    for side in sides:
        side.compile()

    def say(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    results = measure(args, sides, say)
    head = (f"{datetime.date.today()}: {results['sockets']} sockets, load average "
            f"{results['load_before'][0]:.2f} before, {results['load_after'][0]:.2f} after.\n")
    text = head + "\n" + markdown(results)
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text)
    if args.json:
        Path(args.json).write_text(json.dumps(results, default=lambda f: f.__dict__, indent=1))


if __name__ == "__main__":
    main()
