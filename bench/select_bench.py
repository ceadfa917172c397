"""The selection paths of issue 19 at 143k synthetic sockets (no kernel, no root).

    PYTHONPATH=/path/to/other/checkout/src python bench/select_bench.py   # compare two trees

Best of 9 per path (the machine may be shared): the kill planner's selector
with a filter and with the CLOSE-WAIT default, the doctor's scope, and
Query.apply (`ls --from`). All go through Query.select / Query.selector.
"""

from __future__ import annotations

import socket
import time

from sockdoctor.doctor import scope
from sockdoctor.model import Netns, Owner, Process, Snapshot, Socket, TcpState
from sockdoctor.query import Query
from sockdoctor.remedy.policy import KillPolicy

N = 143_000


def population() -> Snapshot:
    """Half CLOSE-WAIT, two namespaces, 50 owning programs, ages spread."""
    spaces = [Netns(inode=4026531840, name="host", kind="host"),
              Netns(inode=4026531841, name="web", kind="named")]
    sockets = []
    for i in range(N):
        state = TcpState.CLOSE_WAIT if i % 2 else TcpState.ESTABLISHED
        sk = Socket(spaces[i % 2].inode, socket.AF_INET, state, "10.0.0.1",
                    8080 if i % 3 else 9000, "10.0.0.2", 20000 + i % 40000, 100000 + i, i + 1,
                    0, 0, 0)
        sk.owners = [Owner(1000 + i % 50, 3 + i)]
        sk.age_ms = i * 10
        sockets.append(sk)
    procs = {1000 + p: Process(pid=1000 + p, comm=f"app{p}", cmdline=[f"app{p}"])
             for p in range(50)}
    return Snapshot(created=0.0, hostname="h", kernel="k", sockets=sockets, namespaces=spaces,
                    processes=procs)


def best_ms(run, times: int = 9) -> float:  # type: ignore[no-untyped-def]
    spent = []
    for _ in range(times):
        start = time.perf_counter()
        run()
        spent.append(time.perf_counter() - start)
    return min(spent) * 1000


def main() -> None:
    snap = population()

    def kill(policy: KillPolicy) -> int:
        selects = policy.selector(snap)
        return sum(1 for sk in snap.sockets if selects(sk))

    filtered = KillPolicy(where=Query.build("sport = :8080", process="app1*"))
    paths = {
        "kill selector (sport = :8080, --process 'app1*')": lambda: kill(filtered),
        "kill selector (CLOSE-WAIT default)": lambda: kill(KillPolicy()),
        "doctor scope (state close-wait --netns web)":
            lambda: scope.select(snap, Query.build("state close-wait", netns="web")),
        "ls --from (--older-than 10m)": lambda: Query.build(older_than="10m").apply(snap),
    }
    for name, run in paths.items():
        print(f"{name}: {best_ms(run):.1f} ms")


if __name__ == "__main__":
    main()
