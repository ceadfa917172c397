"""`sockdoctor trace` under connection churn: does it keep up, and name the right owner?

    python bench/trace_bench.py                 # 2,000 connections/s = 20,000 changes/s, 10 s
    python bench/trace_bench.py --markdown /tmp/trace.md

In a namespace made here, bench/churn.py opens --rate loopback connections a
second for --seconds (ten state changes each: 20,000/s at the default), with
three server processes (two sharing one port with SO_REUSEPORT). The real CLI,
`sockdoctor trace --ndjson --netns NS`, runs alongside. Then:
- lost: what trace reported lost (ring buffer), against what it received;
- attribution: for every connection a server accepted (its own log: time,
  pid, ports), the ESTAB -> CLOSE-WAIT event of that 4-tuple nearest in time
  must name that server's pid. A connection without such an event counts as
  wrong, so this is also a check that no event went missing.
- readers: the binary per-CPU trace_pipe_raw reader against the text per-CPU
  trace_pipe, both only reading and decoding, under the same churn.
Full-size runs go under `flock /tmp/sockdoctor-bench.lock` (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass

from sockdoctor.lab.netlab import Lab

HERE = os.path.dirname(os.path.abspath(__file__))
CHURN = os.path.join(HERE, "churn.py")
SOCKDOCTOR = [sys.executable, "-m", "sockdoctor"]


@dataclass
class TraceRun:
    rate: float
    seconds: float
    connections: int
    changes: int
    lost: int
    cpu_s: float
    max_rss_kb: int
    close_wait_truth: int
    attributed: int
    summary: str

    @property
    def lost_pct(self) -> float:
        return 100 * self.lost / max(1, self.changes + self.lost)

    @property
    def attributed_pct(self) -> float:
        return 100 * self.attributed / max(1, self.close_wait_truth)


def churn(lab: Lab, out: str, rate: float, seconds: float, hold_ms: float) -> subprocess.Popen:
    return lab.spawn(lab.server, [sys.executable, CHURN, "--rate", str(rate), "--seconds",
                                  str(seconds), "--hold-ms", str(hold_ms), "--out", out],
                     stdout=subprocess.DEVNULL)


def tune(lab: Lab) -> None:
    """Ports for 20,000 connections in 10 s on one loopback address (TIME-WAIT reuse)."""
    subprocess.run(["ip", "netns", "exec", lab.server.netns, "sysctl", "-qw",
                    "net.ipv4.ip_local_port_range=1024 65000", "net.ipv4.tcp_tw_reuse=1",
                    "net.core.somaxconn=4096"], check=True)


def run_trace(rate: float, seconds: float, hold_ms: float) -> TraceRun:
    out = tempfile.mkdtemp(prefix="sdbench-trace-")
    with Lab("trace", pair=False) as lab:
        tune(lab)
        events = open(f"{out}/events.ndjson", "w")  # noqa: SIM115 - closed below
        trace = subprocess.Popen([*SOCKDOCTOR, "trace", "--ndjson", "--netns", lab.server.netns],
                                 stdout=events, stderr=subprocess.PIPE, text=True)
        try:
            line = trace.stderr.readline()  # type: ignore[union-attr]
            if "tracing" not in line:
                raise RuntimeError(f"trace did not start: {line}")
            churn(lab, out, rate, seconds, hold_ms).wait(timeout=seconds + 120)
            time.sleep(2.0)  # the last connections' events and the join delay
        finally:
            trace.send_signal(signal.SIGINT)
            _pid, _status, usage = os.wait4(trace.pid, 0)
            events.close()
        summary = trace.stderr.read().strip()  # type: ignore[union-attr]
    return _score(out, rate, seconds, usage, summary)


def _score(out: str, rate: float, seconds: float, usage: resource.struct_rusage,
           summary: str) -> TraceRun:
    truth = _truth(out)
    changes = lost = 0
    seen: dict[tuple[int, int], list[tuple[float, list[int]]]] = defaultdict(list)
    with open(f"{out}/events.ndjson") as f:
        for line in f:
            ev = json.loads(line)
            if ev["event"] == "lost":
                lost += ev["count"] or 0
            elif ev["event"] == "state":
                changes += 1
                if ev["old"] == "ESTAB" and ev["new"] == "CLOSE-WAIT":
                    seen[(ev["local_port"], ev["peer_port"])].append(
                        (ev["time"], [o["pid"] for o in ev.get("owners", [])]))
    attributed = 0
    for ports, accepts in truth.items():
        for when, pid in accepts:
            candidates = seen.get(ports, [])
            if candidates and pid in min(candidates, key=lambda c: abs(c[0] - when))[1]:
                attributed += 1
    connections = 0
    for path in glob.glob(f"{out}/client-*.txt"):
        with open(path) as f:
            connections += int(f.read())
    return TraceRun(rate, seconds, connections, changes, lost,
                    usage.ru_utime + usage.ru_stime, usage.ru_maxrss,
                    sum(len(v) for v in truth.values()), attributed, summary)


def _truth(out: str) -> dict[tuple[int, int], list[tuple[float, int]]]:
    """(server port, client port) -> [(accept time, server pid)] from the servers' logs."""
    truth: dict[tuple[int, int], list[tuple[float, int]]] = defaultdict(list)
    for path in glob.glob(f"{out}/server-*.txt"):
        with open(path) as f:
            for line in f:
                if line.strip():
                    when, pid, lport, pport = line.split()
                    truth[(int(lport), int(pport))].append((float(when), int(pid)))
    return truth


# --- the two ways to read tracefs ---------------------------------------------------

TEXT_LINE = re.compile(r"sport=(\d+) dport=(\d+) saddr=(\S+) daddr=(\S+) saddrv6=(\S+) "
                       r"daddrv6=(\S+) oldstate=(\w+) newstate=(\w+)")


def compare_readers(rate: float, seconds: float) -> dict[str, dict[str, float]]:
    """CPU per event and losses of the binary and the text reader, same churn each."""
    from sockdoctor.linux import tracefs

    results = {}
    for kind in ("raw", "text"):
        with Lab("trace", pair=False) as lab, tracefs.Session() as session:
            tune(lab)
            out = tempfile.mkdtemp(prefix="sdbench-readers-")
            gen = churn(lab, out, rate, seconds, 300)
            read = _read_raw if kind == "raw" else _text_reader(session)
            start = time.process_time()
            events = 0
            while gen.poll() is None:
                session.reader.wait(0.05)
                events += read(session)
            time.sleep(0.5)
            events += read(session)
            cpu = time.process_time() - start
            results[kind] = {"events": events, "lost": session.lost(), "cpu_s": cpu,
                             "us_per_event": 1e6 * cpu / max(1, events)}
    return results


def _read_raw(session) -> int:
    return len(session.reader.read())


def _text_reader(session):
    """Per-CPU trace_pipe (the kernel formats each event as text), parsed with a regex."""
    fds = [os.open(f"{session.instance.path}/per_cpu/cpu{cpu}/trace_pipe",
                   os.O_RDONLY | os.O_NONBLOCK) for cpu in session.instance.cpus()]
    session.reader.close()  # the raw pipes must not consume the events first

    def read(_session) -> int:
        count = 0
        for fd in fds:
            while True:
                try:
                    chunk = os.read(fd, 1 << 16)
                except BlockingIOError:
                    break
                if not chunk:
                    break
                count += len(TEXT_LINE.findall(chunk.decode("ascii", "replace")))
        return count
    return read


# --- report ---------------------------------------------------------------------------

def markdown(run: TraceRun, readers: dict[str, dict[str, float]] | None) -> str:
    lines = [
        "| what | measured | target | verdict |", "|---|---|---|---|",
        f"| state changes traced (10 s at {run.rate:.0f} connections/s, "
        f"{run.connections} connections) | {run.changes} ({run.changes / run.seconds:,.0f}/s) "
        f"| 20,000/s | {'met' if run.changes / run.seconds >= 19_000 else 'missed'} |",
        f"| lost (reported by trace) | {run.lost} ({run.lost_pct:.2f} %) | <= 1 % | "
        f"{'met' if run.lost_pct <= 1 else 'missed'} |",
        f"| ESTAB -> CLOSE-WAIT with the right owner pid | {run.attributed} of "
        f"{run.close_wait_truth} ({run.attributed_pct:.2f} %) | >= 99 % | "
        f"{'met' if run.attributed_pct >= 99 else 'missed'} |",
        f"| trace's CPU time | {run.cpu_s:.1f} s ({1e6 * run.cpu_s / max(1, run.changes):.0f} "
        f"µs per change) | | |",
        f"| trace's peak RSS | {run.max_rss_kb / 1024:.0f} MiB | | |",
    ]
    if readers:
        lines += ["", "| reader | events | lost | CPU | per event |", "|---|---|---|---|---|"]
        for kind, r in readers.items():
            name = "per-CPU trace_pipe_raw (binary)" if kind == "raw" else \
                "per-CPU trace_pipe (text)"
            lines.append(f"| {name} | {r['events']:.0f} | {r['lost']:.0f} | "
                         f"{r['cpu_s']:.2f} s | {r['us_per_event']:.1f} µs |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rate", type=float, default=2000.0, help="connections per second")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--hold-ms", type=float, default=300.0,
                    help="how long each server keeps a CLOSE-WAIT before closing it")
    ap.add_argument("--no-readers", action="store_true", help="skip the reader comparison")
    ap.add_argument("--markdown", metavar="FILE")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("trace_bench.py needs root (namespaces, tracefs)")
    run = run_trace(args.rate, args.seconds, args.hold_ms)
    print(run.summary)
    readers = None if args.no_readers else compare_readers(args.rate, 5.0)
    text = markdown(run, readers)
    print(text)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
