"""Time sockdoctor against ss and psutil on the same socket population, in one run.

    python bench/run.py                       # 36k, 72k and 143k sockets, 5 runs each
    python bench/run.py --sizes 10000 --repeat 3 --markdown /tmp/bench.md

For each size it builds a population (population.py) in a private network
namespace, checks that every tool sees the same sockets, then runs every
command inside that namespace (`ip netns exec NS ...`, stdout to /dev/null):
one warm-up, then `--repeat` timed runs, round-robin so that background noise
spreads evenly over the commands. A command whose warm-up takes longer than
SLOW_SECONDS (ss -tanp at 143k) gets only `--slow-repeat` runs; the table says
how many. Peak RSS comes from GNU time (%M) when /usr/bin/time exists, else
from wait4(2)'s ru_maxrss (an upper bound: see run_once). It prints
medians and the ratios the issues ask for, next to their targets (stated for
143k sockets; smaller sizes are shown for the trend).

sockdoctor is run as the CLI when `sockdoctor ls --help` works, else as the
equivalent library call; the output says which.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from population import Population, mixed

SLOW_SECONDS = 5.0
COUNT_TOLERANCE = 5  # sockets: the population is stable, so this is slack, not noise
HELP_RUNS = 20
GNU_TIME = "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else None
PY = sys.executable
SD_SCRIPT = Path(PY).parent / "sockdoctor"  # not a pyenv shim: a bash script, ~100 ms more
RSS_TARGET_MB = 300
Say = Callable[[str], None]
HELP_TARGET_S = 0.150


def sockdoctor_argv() -> list[str]:
    return [str(SD_SCRIPT)] if SD_SCRIPT.exists() else [PY, "-m", "sockdoctor"]


def has_command(*words: str) -> bool:
    try:
        proc = subprocess.run([*sockdoctor_argv(), *words, "--help"], capture_output=True,
                              timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


def library(code: str) -> list[str]:
    prelude = "import sys, msgspec, sockdoctor.inventory as i; "
    return [PY, "-c", prelude + f"sys.stdout.buffer.write(msgspec.json.encode({code}))"]


@dataclass
class Command:
    key: str
    label: str
    argv: list[str]
    sockdoctor: bool = False
    via: str = ""  # "cli" or "library" for sockdoctor commands
    ok_codes: tuple[int, ...] = (0,)


def commands(netns: str) -> list[Command]:
    sd = sockdoctor_argv()
    ns = ["--netns", netns]
    cli = has_command("ls")
    out: list[Command] = []
    if cli:
        out += [
            Command("sd_lsp_json", "sockdoctor ls -p --json", [*sd, "ls", "-p", "--json", *ns]),
            Command("sd_lsp", "sockdoctor ls -p", [*sd, "ls", "-p", *ns]),
            Command("sd_lsi_json", "sockdoctor ls -i --json", [*sd, "ls", "-i", "--json", *ns]),
            Command("sd_cw", "sockdoctor ls state close-wait",
                    [*sd, "ls", *ns, "state", "close-wait"]),
        ]
    else:
        out += [
            Command("sd_lsp_json", "sockdoctor ls -p --json",
                    library(f"i.scan(netns={netns!r}, owners=True)")),
            Command("sd_lsi_json", "sockdoctor ls -i --json",
                    library(f"i.scan(None, i.ScanOptions(info=True), netns={netns!r}, "
                            "owners=False)")),
            Command("sd_cw", "sockdoctor ls state close-wait",
                    library(f"i.scan('state close-wait', netns={netns!r}, owners=False)")),
        ]
    if has_command("doctor"):
        # exit 1 = findings (errors.EXIT_FINDINGS): the population is one big leak
        out.append(Command("sd_doctor", "sockdoctor doctor", [*sd, "doctor", *ns],
                           ok_codes=(0, 1, 2)))  # 1 warnings, 2 critical: both are answers
    for cmd in out:
        cmd.sockdoctor = True
        cmd.via = "cli" if cmd.argv[:len(sd)] == sd else "library"
    if "C extension" in fast_path():  # the pure Python path too, side by side (issue 12)
        out += [Command(f"{c.key}_pure", f"{c.label} [pure]", ["env", "SOCKDOCTOR_PURE=1", *c.argv],
                        True, c.via, c.ok_codes) for c in list(out)]
    out += [
        Command("ss_tanp", "ss -tanp", ["ss", "-tanp"]),
        Command("ss_tani", "ss -tani", ["ss", "-tani"]),
        Command("ss_cw", "ss -tan state close-wait", ["ss", "-tan", "state", "close-wait"]),
        Command("psutil", "psutil.net_connections('tcp')",
                [PY, "-c", "import psutil; psutil.net_connections('tcp')"]),
    ]
    return out


# (numerator, denominator, target): the ratios the issues name
RATIOS = [
    ("sd_lsp_json", "ss_tanp", 0.1),
    ("sd_lsp_json", "psutil", 0.3),
    ("sd_lsi_json", "ss_tani", 1.0),
    ("sd_cw", "ss_cw", 1.5),
    ("sd_doctor", "sd_lsp", 2.0),
]


# The same ratios for the pure Python path (SOCKDOCTOR_PURE=1), when the C one is in use.
RATIOS += [(num + "_pure", den if not den.startswith("sd_") else den + "_pure", target)
           for num, den, target in RATIOS]


def fast_path() -> str:
    """`sockdoctor --version`'s note on the implementation in use ("" if it has none)."""
    try:
        proc = subprocess.run([*sockdoctor_argv(), "--version"], capture_output=True,
                              text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    lines = proc.stdout.splitlines()
    return lines[1] if proc.returncode == 0 and len(lines) > 1 else ""


@dataclass
class Result:
    command: Command
    seconds: list[float] = field(default_factory=list)
    max_rss_kb: int = 0
    cpu: list[float] = field(default_factory=list)  # user + sys seconds of each timed run

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def cpu_median(self) -> float:
        return statistics.median(self.cpu) if self.cpu else 0.0


@dataclass
class SizeResult:
    sockets: int
    holders: int
    build_seconds: float
    holder_rss_kb: int
    slab_kb: int
    netns_exec_overhead: float
    results: dict[str, Result]


def run_once(argv: list[str], ok_codes: tuple[int, ...] = (0,)) -> tuple[float, int]:
    """Wall time and peak RSS (KiB) of one run (see run_measured)."""
    elapsed, max_rss, _cpu = run_measured(argv, ok_codes)
    return elapsed, max_rss


def run_measured(argv: list[str], ok_codes: tuple[int, ...] = (0,)) -> tuple[float, int, float]:
    """Wall time, peak RSS (KiB) and CPU time (user + sys) of one run; stdout to /dev/null.

    A child forked from this Python process starts with its resident set, and
    exec keeps the high-water mark, so wait4's ru_maxrss would never show less
    than the runner's own RSS (~25 MiB). GNU time, a small C program, avoids
    that; without it the figure is an upper bound.
    """
    with tempfile.NamedTemporaryFile() as err, tempfile.NamedTemporaryFile("r") as rss:
        if GNU_TIME:
            argv = [GNU_TIME, "-f", "%U %S %M", "-o", rss.name, *argv]
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=err)
        try:
            _pid, status, usage = os.wait4(proc.pid, 0)
        except BaseException:  # Ctrl-C: do not leave it running in the namespace
            proc.kill()
            proc.wait()
            raise
        elapsed = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        stderr = err.read().decode(errors="replace")
        if proc.returncode not in ok_codes or "Traceback (most recent call last)" in stderr:
            raise RuntimeError(f"{' '.join(argv)} exited with {proc.returncode}: "
                               f"{stderr[-1500:]}")
        if GNU_TIME:
            user, system, max_rss = rss.read().split()[-3:]
            return elapsed, int(max_rss), float(user) + float(system)
    return elapsed, usage.ru_maxrss, usage.ru_utime + usage.ru_stime


def in_netns(netns: str, argv: list[str]) -> list[str]:
    return ["ip", "netns", "exec", netns, *argv]


def time_commands(netns: str, cmds: list[Command], repeat: int, slow_repeat: int,
                  say: Say) -> dict[str, Result]:
    results = {c.key: Result(c) for c in cmds}
    runs: dict[str, int] = {}
    for cmd in list(cmds):  # warm-up: page cache, dentries, and how slow it is
        try:
            elapsed, rss = run_once(in_netns(netns, cmd.argv), cmd.ok_codes)
        except RuntimeError as exc:  # one broken command must not void the others
            say(f"  SKIPPED {cmd.label}: {exc}")
            cmds.remove(cmd)
            del results[cmd.key]
            continue
        results[cmd.key].max_rss_kb = rss
        runs[cmd.key] = min(repeat, slow_repeat) if elapsed > SLOW_SECONDS else repeat
        say(f"  warm-up {cmd.label}: {elapsed:.3f} s")
    for r in range(repeat):
        for cmd in cmds:
            if r < runs[cmd.key]:
                elapsed, rss, cpu = run_measured(in_netns(netns, cmd.argv), cmd.ok_codes)
                res = results[cmd.key]
                res.seconds.append(elapsed)
                res.cpu.append(cpu)
                res.max_rss_kb = max(res.max_rss_kb, rss)
        say(f"  round {r + 1}/{repeat} done")
    return results


# --- making sure every tool measures the same sockets ------------------------

def count_with_sockdoctor(netns: str) -> tuple[int, int]:
    """(sockets, sockets with an owner) as sockdoctor sees them inside the namespace."""
    if has_command("ls"):
        argv = [*sockdoctor_argv(), "ls", "-p", "--ndjson", "--netns", netns]
        proc = subprocess.Popen(in_netns(netns, argv), stdout=subprocess.PIPE)
        total = owned = 0
        for line in proc.stdout:  # type: ignore[union-attr]
            total += 1
            owned += bool(json.loads(line).get("owners"))
        if proc.wait() != 0:
            raise RuntimeError(f"{' '.join(argv)} failed")
        return total, owned
    code = (f"import sockdoctor.inventory as i; s = i.scan(netns={netns!r}).sockets; "
            "print(len(s), sum(bool(k.owners) for k in s))")
    out = subprocess.run(in_netns(netns, [PY, "-c", code]), check=True, capture_output=True,
                         text=True).stdout.split()
    return int(out[0]), int(out[1])


def check_counts(pop: Population, say: Say) -> None:
    want = pop.sockets
    counts = {"population": want, "ss -Htan": sum(pop.count_states().values())}
    code = "import psutil; print(len(psutil.net_connections('tcp')))"
    counts["psutil"] = int(pop.netns_exec([PY, "-c", code]).stdout)
    counts["sockdoctor"], owned = count_with_sockdoctor(pop.netns)
    say("  socket counts: " + ", ".join(f"{k} {v}" for k, v in counts.items())
        + f"; sockdoctor found an owner for {owned}")
    off = {k: v for k, v in counts.items() if abs(v - want) > COUNT_TOLERANCE}
    if off:
        raise RuntimeError(f"the tools do not see the same sockets: {counts}")
    if abs(owned - want) > COUNT_TOLERANCE:
        raise RuntimeError(f"sockdoctor found owners for {owned} of {want} sockets")


def netns_exec_overhead(netns: str, runs: int) -> float:
    return statistics.median(run_once(in_netns(netns, ["true"]))[0] for _ in range(runs))


def help_startup(runs: int = HELP_RUNS) -> list[float]:
    argv = [*sockdoctor_argv(), "--help"]
    run_once(argv)
    return [run_once(argv)[0] for _ in range(runs)]


def measure_size(size: int, repeat: int, slow_repeat: int, say: Say) -> SizeResult:
    specs = mixed(size)
    with Population(specs) as pop:
        say(f"{pop.sockets} sockets in {len(specs)} holders, namespace {pop.netns}: built "
            f"in {pop.build_seconds:.1f} s; holders' RSS {pop.holder_rss_kb / 1024:.0f} MiB, "
            f"kernel slab +{pop.slab_kb / 1024:.0f} MiB")
        check_counts(pop, say)
        cmds = commands(pop.netns)
        overhead = netns_exec_overhead(pop.netns, max(repeat, 5))
        results = time_commands(pop.netns, cmds, repeat, slow_repeat, say)
        return SizeResult(pop.sockets, len(specs), pop.build_seconds, pop.holder_rss_kb,
                          pop.slab_kb, overhead, results)


# --- reporting ----------------------------------------------------------------

def verdict(value: float, target: float) -> str:
    return "OK" if value <= target else f"MISS ({value / target:.2f}x the target)"


def ratio_lines(sr: SizeResult, cpu: bool = False) -> Iterator[tuple[str, float, float]]:
    """The ratios of medians of wall time (or, with cpu, of user + sys time)."""
    for num, den, target in RATIOS:
        if num in sr.results and den in sr.results:
            a, b = sr.results[num], sr.results[den]
            if cpu and not b.cpu_median:
                continue
            value = a.cpu_median / b.cpu_median if cpu else a.median / b.median
            yield f"{a.command.label} / {b.command.label}", value, target


def print_report(sizes: list[SizeResult], help_s: list[float] | None) -> None:
    for sr in sizes:
        print(f"\n== {sr.sockets} sockets ({sr.holders} holders; `ip netns exec` itself: "
              f"{sr.netns_exec_overhead * 1000:.1f} ms, included in every time) ==")
        print(f"{'command':34} {'runs':>4} {'median s':>9} {'min s':>8} {'max s':>8} "
              f"{'CPU s':>6} {'peak RSS MiB':>12}  via")
        for res in sr.results.values():
            print(f"{res.command.label:34} {len(res.seconds):4d} {res.median:9.3f} "
                  f"{min(res.seconds):8.3f} {max(res.seconds):8.3f} {res.cpu_median:6.3f} "
                  f"{res.max_rss_kb / 1024:12.1f}  {res.command.via}")
        for label, value, target in ratio_lines(sr):
            print(f"{label} = {value:.3f} (target <= {target}) {verdict(value, target)}")
        for label, value, target in ratio_lines(sr, cpu=True):
            print(f"CPU time: {label} = {value:.3f} (target <= {target})")
        for res in sr.results.values():
            if res.command.sockdoctor:
                mb = res.max_rss_kb / 1024
                print(f"peak RSS {res.command.label} = {mb:.0f} MiB (target <= "
                      f"{RSS_TARGET_MB}) {verdict(mb, RSS_TARGET_MB)}")
        if "sd_doctor" not in sr.results:
            print("sockdoctor doctor: not timed (no `doctor` command yet, or it failed: see above)")
    if help_s:
        med = statistics.median(help_s)
        print(f"\nsockdoctor --help start-up: median {med * 1000:.0f} ms of {len(help_s)} "
              f"(target <= {HELP_TARGET_S * 1000:.0f} ms) {verdict(med, HELP_TARGET_S)}")


def machine() -> str:
    cpu = "unknown CPU"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kb = int(f.readline().split()[1])
    ss = subprocess.run(["ss", "-V"], capture_output=True, text=True).stdout.strip()
    return (f"{cpu}, {os.cpu_count()} CPUs, {mem_kb / 1024 / 1024:.0f} GiB RAM, Linux "
            f"{platform.release()}, Python {platform.python_version()}, {ss}")


def markdown(sizes: list[SizeResult], help_s: list[float] | None, args: str) -> str:
    head = [f"Run: {datetime.date.today().isoformat()}, `python bench/run.py {args}`",
            f"Machine: {machine()}", f"sockdoctor: {fast_path() or 'pure Python'}; "
            "[pure] rows: the same command with SOCKDOCTOR_PURE=1", ""]
    cols = " | ".join(f"{sr.sockets} sockets" for sr in sizes)
    rule = "|---" * (len(sizes) + 1) + "|"
    lines = [*head, "Median wall time in seconds (runs), inside `ip netns exec`:", "",
             f"| command | {cols} |", rule]
    keys = list(dict.fromkeys(k for sr in sizes for k in sr.results))
    for key in keys:
        cells = []
        for sr in sizes:
            res = sr.results.get(key)
            cells.append(f"{res.median:.3f} ({len(res.seconds)})" if res else "-")
        label = next(sr.results[key].command for sr in sizes if key in sr.results)
        via = f" [{label.via}]" if label.via == "library" else ""
        lines.append(f"| `{label.label}`{via} | " + " | ".join(cells) + " |")
    lines.append("| `ip netns exec NS true` | "
                 + " | ".join(f"{sr.netns_exec_overhead:.3f}" for sr in sizes) + " |")
    lines += ["", "Ratios of medians (targets are stated for 143k sockets):", "",
              f"| ratio | {cols} | target | verdict at {sizes[-1].sockets} |", rule + "---|---|"]
    per_size = [{label: value for label, value, _t in ratio_lines(sr)} for sr in sizes]
    for label, value, target in ratio_lines(sizes[-1]):
        cells = " | ".join(f"{p[label]:.3f}" if label in p else "-" for p in per_size)
        lines.append(f"| {label} | {cells} | <= {target} | {verdict(value, target)} |")
    lines += cpu_markdown(sizes, cols, rule, keys)
    lines += ["", f"Peak RSS (MiB, target <= {RSS_TARGET_MB} for sockdoctor):", "",
              f"| command | {cols} |", rule]
    for key in keys:
        label = next(sr.results[key].command.label for sr in sizes if key in sr.results)
        cells = " | ".join(f"{sr.results[key].max_rss_kb / 1024:.0f}" if key in sr.results
                           else "-" for sr in sizes)
        lines.append(f"| `{label}` | {cells} |")
    if help_s:
        med = statistics.median(help_s)
        lines += ["", f"`sockdoctor --help` start-up: median {med * 1000:.0f} ms of "
                      f"{len(help_s)} runs (target <= 150 ms): {verdict(med, HELP_TARGET_S)}."]
    lines += ["", "Population: " + "; ".join(
        f"{sr.sockets} sockets, {sr.holders} holders, built in {sr.build_seconds:.1f} s, "
        f"holders' RSS {sr.holder_rss_kb / 1024:.0f} MiB, kernel slab "
        f"+{sr.slab_kb / 1024:.0f} MiB" for sr in sizes) + "."]
    return "\n".join(lines) + "\n"


def cpu_markdown(sizes: list[SizeResult], cols: str, rule: str, keys: list[str]) -> list[str]:
    """CPU time (user + sys) per command, and the ratios on CPU time.

    On a shared machine other processes stretch wall times unevenly; CPU time
    is far steadier. It does not show what two CPUs overlap (the owner walk
    and the dump), which only wall time does.
    """
    lines = ["", "Median CPU time (user + sys) in seconds:", "", f"| command | {cols} |", rule]
    for key in keys:
        label = next(sr.results[key].command.label for sr in sizes if key in sr.results)
        cells = " | ".join(f"{sr.results[key].cpu_median:.3f}" if key in sr.results else "-"
                           for sr in sizes)
        lines.append(f"| `{label}` | {cells} |")
    lines += ["", "Ratios of CPU-time medians:", "", f"| ratio | {cols} | target |",
              rule + "---|"]
    per_size = [{label: value for label, value, _t in ratio_lines(sr, cpu=True)}
                for sr in sizes]
    for label, _value, target in ratio_lines(sizes[-1], cpu=True):
        cells = " | ".join(f"{p[label]:.3f}" if label in p else "-" for p in per_size)
        lines.append(f"| {label} | {cells} | <= {target} |")
    return lines


def compile_bytecode() -> None:
    """Write sockdoctor's .pyc files, as `pip install` does.

    An editable install under PYTHONDONTWRITEBYTECODE=1 (this machine's
    default) would otherwise compile every module from source on every run,
    which is not what an installed sockdoctor costs.
    """
    import compileall

    import sockdoctor

    compileall.compile_dir(str(Path(sockdoctor.__file__).parent), quiet=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="36000,72000,143000",
                        help="socket counts, comma-separated (default: %(default)s)")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per command")
    parser.add_argument("--slow-repeat", type=int, default=3,
                        help=f"timed runs for commands slower than {SLOW_SECONDS:.0f} s")
    parser.add_argument("--markdown", metavar="FILE", help="also write the tables here")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the namespaces get removed
    sizes = [int(s) for s in args.sizes.split(",") if s]

    def say(msg: str) -> None:
        print(msg, flush=True)

    compile_bytecode()
    help_s = help_startup() if has_command() else None
    results = []
    try:
        for size in sizes:
            say(f"building {size} sockets ...")
            results.append(measure_size(size, args.repeat, args.slow_repeat, say))
    except KeyboardInterrupt:
        sys.exit("interrupted: namespace and holders removed")
    print_report(results, help_s)
    if args.markdown:
        Path(args.markdown).write_text(markdown(results, help_s, " ".join(sys.argv[1:])))
        print(f"\nmarkdown written to {args.markdown}")


if __name__ == "__main__":
    main()
