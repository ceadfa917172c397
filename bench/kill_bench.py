"""Time killing 16,000 CLOSE_WAIT sockets: `ss -K` against sockdoctor, in one run.

    python bench/kill_bench.py                 # 3 rounds of 16,000 sockets per method
    python bench/kill_bench.py --size 4000 --rounds 1

Each round builds one namespace with identical sets of CLOSE_WAIT sockets,
one set per method, each on its own listening port and held by its own
process (population.py, kind `orphan`: the peer is gone, as in a leak where
the client gave up long ago). Then, inside the namespace:
  ss       `ss -K state close-wait '( sport = :P )'`
  destroy  `sockdoctor kill --method destroy --yes ...` when the CLI has
           `kill`; until then the library: scan + sockdiag.destroy()
  destroy-c  the same with SOCKDOCTOR_ENGINE=c: SOCK_DESTROY over sock_diag
           (`destroy` itself uses the BPF engine's bpf_sock_destroy when it loads)
  fin      `sockdoctor kill --method fin --yes ...`, else the library:
           scan with owners + pidfd.PidFd.shutdown() per socket
Every command is timed as a whole process (start-up, dump, kill), like ss.
The order of the methods rotates from round to round. After each kill the set
is counted again: a method that leaves sockets behind fails the run (ss -K
prints nothing and exits 0 on a kernel without SOCK_DESTROY).
"""

from __future__ import annotations

import argparse
import datetime
import os
import signal
import statistics
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from population import HolderSpec, Population
from run import PY, has_command, in_netns, machine, run_measured, sockdoctor_argv

SET_SIZE = 16_000
PORTS = {"ss": 6000, "destroy": 6001, "fin": 6002, "destroy-c": 6003}
DESTROY_TARGET = 1.2  # x the wall time of ss -K
BPF_DESTROY_TARGET = 0.5  # x ss -K, with the kernel engine (issue 20)
FIN_TARGET_S = 1.0

LIB_SCAN = """
import collections, sys
import sockdoctor.inventory as inv
from sockdoctor.query import Query
snap = inv.scan(Query.build(states=["close-wait"], ports=[{port}]), netns={netns!r},
                owners={owners})
"""
LIB_DESTROY = LIB_SCAN + """
from sockdoctor.linux import sockdiag
codes = sockdiag.destroy(sockdiag.open_socket(), snap.sockets)
sys.exit(0 if len(codes) == {size} and not any(codes) else 1)
"""
LIB_FIN = LIB_SCAN + """
from sockdoctor.linux.pidfd import PidFd
by_pid = collections.defaultdict(list)
for sk in snap.sockets:
    by_pid[sk.owners[0].pid].append((sk.owners[0].fd, sk.inode))
done = 0
for pid, fds in by_pid.items():
    with PidFd(pid) as pidfd:
        for fd, inode in fds:
            pidfd.shutdown(fd, inode)
            done += 1
sys.exit(0 if done == {size} else 1)
"""


def fin_library_available() -> bool:
    try:
        from sockdoctor.linux.pidfd import PidFd
    except ImportError:
        return False
    return hasattr(PidFd, "shutdown")


def cli_kill_argv(method: str, port: int, netns: str, size: int, audit: str) -> list[str]:
    help_text = subprocess.run([*sockdoctor_argv(), "kill", "--help"], capture_output=True,
                               text=True).stdout
    argv = [*sockdoctor_argv(), "kill", "--method", method, "--yes",
            "--state", "close-wait", "--port", str(port)]
    for option, value in (("--netns", netns), ("--max", str(size + 100)),
                          ("--audit-log", audit)):
        if option in help_text:
            argv += [option, value]
    return argv


def method_argv(method: str, netns: str, size: int, audit: str) -> tuple[list[str], str]:
    """The command for one method and how it is run: ss, cli or library."""
    port = PORTS[method]
    if method == "destroy-c":
        argv, via = method_argv("destroy", netns, size, audit)
        argv = [*argv[:argv.index("--port") + 1], str(port), *argv[argv.index("--port") + 2:]]
        return ["env", "SOCKDOCTOR_ENGINE=c", *argv], f"{via}, SOCKDOCTOR_ENGINE=c"
    if method == "ss":
        return ["ss", "-K", "state", "close-wait", "(", "sport", "=", f":{port}", ")"], "ss"
    kill_help = subprocess.run([*sockdoctor_argv(), "kill", "--help"], capture_output=True,
                               text=True)
    if kill_help.returncode == 0 and method in kill_help.stdout:
        return cli_kill_argv(method, port, netns, size, audit), "cli"
    code = LIB_DESTROY if method == "destroy" else LIB_FIN
    return [PY, "-c", code.format(port=port, netns=netns, size=size,
                                  owners=method == "fin")], "library"


def count_port(pop: Population, port: int) -> Counter[str]:
    out = pop.netns_exec(["ss", "-Htan", "(", "sport", "=", f":{port}", ")"]).stdout
    return Counter(line.split(None, 1)[0] for line in out.splitlines() if line)


def one_round(methods: list[str], size: int, say: Callable[[str], None],
              ) -> dict[str, tuple[float, float]]:
    """(wall, CPU) seconds of each method's whole command on its own set."""
    specs = [HolderSpec(i, (PORTS[m],), orphan=size) for i, m in enumerate(methods)]
    times: dict[str, tuple[float, float]] = {}
    with Population(specs, tag="perfkill") as pop, tempfile.TemporaryDirectory() as tmp:
        say(f"  {len(methods)} x {size} CLOSE_WAIT built in {pop.build_seconds:.1f} s")
        for method in methods:
            before = count_port(pop, PORTS[method])
            if before["CLOSE-WAIT"] != size:
                raise RuntimeError(f"{method}: set has {dict(before)} before the kill")
            argv, via = method_argv(method, pop.netns, size, f"{tmp}/audit.jsonl")
            elapsed, _rss, cpu = run_measured(in_netns(pop.netns, argv))
            after = count_port(pop, PORTS[method])
            say(f"  {method:8} ({via}): {elapsed:.3f} s, CPU {cpu:.3f} s; on its port after: "
                f"{dict(after)}")
            if after["CLOSE-WAIT"]:
                raise RuntimeError(f"{method} left {after['CLOSE-WAIT']} sockets in CLOSE_WAIT")
            times[method] = (elapsed, cpu)
    return times


def report(results: dict[str, list[tuple[float, float]]], vias: dict[str, str],
           size: int) -> list[str]:
    lines = [f"Killing {size} CLOSE_WAIT sockets (median of {len(results['ss'])} rounds, "
             "the whole command inside `ip netns exec`; CPU = user + system):", "",
             "| method | median wall s | median CPU s | runs wall (s) | how |",
             "|---|---|---|---|---|"]
    wall = {m: statistics.median(t[0] for t in times) for m, times in results.items()}
    cpu = {m: statistics.median(t[1] for t in times) for m, times in results.items()}
    for method, times in results.items():
        runs = ", ".join(f"{t[0]:.3f}" for t in times)
        lines.append(f"| {method} | {wall[method]:.3f} | {cpu[method]:.3f} | {runs} | "
                     f"{vias[method]} |")
    lines.append("")
    if "destroy" in results:
        ratio = wall["destroy"] / wall["ss"]
        verdict = "OK" if ratio <= BPF_DESTROY_TARGET else \
            f"MISS ({ratio / BPF_DESTROY_TARGET:.2f}x)"
        lines.append(f"destroy / ss -K = {ratio:.2f} wall, {cpu['destroy'] / cpu['ss']:.2f} "
                     f"CPU (target with the BPF engine <= {BPF_DESTROY_TARGET}; issue 9's "
                     f"<= {DESTROY_TARGET}) {verdict}")
    if "destroy-c" in results:
        lines.append(f"destroy with SOCKDOCTOR_ENGINE=c / ss -K = "
                     f"{wall['destroy-c'] / wall['ss']:.2f} wall, "
                     f"{cpu['destroy-c'] / cpu['ss']:.2f} CPU")
    if "fin" in results:
        fin = wall["fin"]
        verdict = "OK" if fin <= FIN_TARGET_S else f"MISS ({fin / FIN_TARGET_S:.2f}x)"
        lines.append(f"fin = {fin:.3f} s (target <= {FIN_TARGET_S:.0f} s) {verdict}")
    else:
        lines.append("fin: TODO - neither `sockdoctor kill --method fin` nor "
                     "sockdoctor.linux.pidfd.PidFd.shutdown is available yet")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=SET_SIZE, help="sockets per set")
    parser.add_argument("--rounds", type=int, default=3, help="fresh populations to time")
    parser.add_argument("--markdown", metavar="FILE", help="also write the table here")
    parser.add_argument("--no-fin", action="store_true", help="time ss and destroy only")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    methods = ["ss", "destroy", "destroy-c"]
    fin_ok = not args.no_fin and (fin_library_available() or (
        has_command("kill") and "fin" in subprocess.run(
            [*sockdoctor_argv(), "kill", "--help"], capture_output=True, text=True).stdout))
    if fin_ok:
        methods.append("fin")
    results: dict[str, list[tuple[float, float]]] = {m: [] for m in methods}
    try:
        for r in range(args.rounds):
            order = methods[r % len(methods):] + methods[:r % len(methods)]
            print(f"round {r + 1}/{args.rounds}, order: {', '.join(order)}", flush=True)
            for method, elapsed in one_round(order, args.size, print).items():
                results[method].append(elapsed)
    except KeyboardInterrupt:
        sys.exit("interrupted: namespace and holders removed")
    vias = {m: method_argv(m, "NS", args.size, "AUDIT")[1] for m in methods}
    lines = report(results, vias, args.size)
    print("\n" + "\n".join(lines))
    if args.markdown:
        head = [f"Run: {datetime.date.today().isoformat()}, `python bench/kill_bench.py "
                f"{' '.join(sys.argv[1:])}`", f"Machine: {machine()}", ""]
        Path(args.markdown).write_text("\n".join(head + lines) + "\n")
        print(f"\nmarkdown written to {args.markdown}")


if __name__ == "__main__":
    main()
