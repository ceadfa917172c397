"""Sockets from the kernel engine's iter/tcp program against sock_diag and ss, in one run.

    python bench/itertcp_bench.py                     # 144,000 sockets, 5 runs each
    python bench/itertcp_bench.py --sockets 36000 --repeat 3

Builds population.py's mix in a private namespace, then times round-robin,
inside it, whole commands (start-up included, stdout to /dev/null), each
sockdoctor command with SOCKDOCTOR_ENGINE=bpf (iter/tcp sockets, iter/task_file
owners) and =c (sock_diag and the /proc walk, the C extension):
  ss -tan, ss -tan state close-wait, ss -tani
  sockdoctor ls state close-wait, ls --json, ls -p --json, ls -i --json
  the socket dump alone (a Python process that imports, dumps the namespace
      and decodes every socket): iter/tcp vs sock_diag
and prints medians, CPU time and the ratios issue 20 names.
"""

from __future__ import annotations

import argparse
import compileall
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from engine_bench import measure, report
from population import Population, mixed
from run import PY, sockdoctor_argv

DUMP = ("import os; from sockdoctor.linux import sockdiag; "
        "from sockdoctor.linux.bpf import sockets; from sockdoctor.model import ALL_STATES_MASK; "
        "o = sockdiag.DumpOptions(ALL_STATES_MASK, age=True)\n"
        "with sockets.source(o, (2, 10)) as d:\n"
        "    n = len(d(0)) if d else len(sockdiag.dump(sockdiag.open_socket(), o))\n"
        "assert n > 1000 and (d is not None) == (os.environ['SOCKDOCTOR_ENGINE'] == 'bpf')")
RATIOS = [("ls state close-wait [bpf]", "ss -tan state close-wait", 1.0),
          ("ls state close-wait [c]", "ss -tan state close-wait", None),
          ("ls --json [bpf]", "ss -tan", None),
          ("ls --json [c]", "ss -tan", None),
          ("ls -p --json [bpf]", "ss -tan", 1.5),
          ("ls -p --json [c]", "ss -tan", None),
          ("ls -i --json [bpf]", "ss -tani", 0.8),
          ("socket dump [iter/tcp]", "socket dump [sock_diag]", None)]


def commands(netns: str) -> dict[str, list[str]]:
    sd = sockdoctor_argv()
    ns = ["--netns", netns]

    def engine(name: str, *words: str) -> list[str]:
        return ["env", f"SOCKDOCTOR_ENGINE={name}", *words]
    out = {"ss -tan": ["ss", "-tan"],
           "ss -tan state close-wait": ["ss", "-tan", "state", "close-wait"],
           "ss -tani": ["ss", "-tani"]}
    for name in ("bpf", "c"):
        out |= {f"ls state close-wait [{name}]": engine(name, *sd, "ls", *ns, "state",
                                                        "close-wait"),
                f"ls --json [{name}]": engine(name, *sd, "ls", "--json", *ns),
                f"ls -p --json [{name}]": engine(name, *sd, "ls", "-p", "--json", *ns)}
    out["ls -i --json [bpf]"] = engine("bpf", *sd, "ls", "-i", "--json", *ns)
    out["socket dump [iter/tcp]"] = engine("bpf", PY, "-c", DUMP)
    out["socket dump [sock_diag]"] = engine("c", PY, "-c", DUMP)
    out["python start-up + import"] = [PY, "-c", "import sockdoctor.inventory"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sockets", type=int, default=144_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    import sockdoctor  # an install has its bytecode compiled; PYTHONDONTWRITEBYTECODE may be set
    compileall.compile_dir(os.path.dirname(sockdoctor.__file__), quiet=1)
    with Population(mixed(args.sockets), tag="itertcp") as pop:
        print(f"{pop.sockets} sockets built in {pop.build_seconds:.1f} s", flush=True)
        wall, cpu = measure(pop.netns, commands(pop.netns), args.repeat)
    report(pop.sockets, args.repeat, wall, cpu, RATIOS)


if __name__ == "__main__":
    main()
