"""A large, stable population of TCP sockets inside a private network namespace.

Used by run.py and kill_bench.py; run on its own to check that a size can be
built:  python bench/population.py --sockets 143000

Layout. Every connection runs over loopback from its own source address
(127.H.x.y, a thousand source ports each) to one of a holder's listening
ports on 127.0.0.1, so ports never run out and nothing collides. Three kinds:
  orphan  the client calls shutdown(SHUT_WR), waits for FIN_WAIT2, then
          closes: its orphaned FIN_WAIT2 expires after net.ipv4.tcp_fin_timeout
          (set to 1 s in the namespace), leaving one owned CLOSE_WAIT on the
          server side: 1 socket. (Closing in ESTABLISHED instead races: an
          orphan that reaches FIN_WAIT2 through the keepalive timer is reset
          when tcp_fin_timeout < 60 s, killing its server side too.)
  half    the client calls shutdown(SHUT_WR) and keeps its socket: owned
          CLOSE_WAIT on the server, owned FIN_WAIT2 on the client (FIN_WAIT2
          only times out when orphaned): 2 sockets;
  est     both ends stay ESTABLISHED: 2 sockets.
The default mix (2 orphan : 2 half : 1 est) gives 50% CLOSE_WAIT, 25%
FIN_WAIT2 and 25% ESTABLISHED, every socket owned by exactly one fd, plus a
few LISTEN sockets. Nothing sends data and no keepalive is set, so once the
orphans have expired no socket changes state until the holders exit.

The per-process open-file hard limit here is 20,000, so the sockets are spread
over several holder processes (at most PER_HOLDER fds each).

The realistic mix (`--mix realistic`, realistic()): about 95% ESTABLISHED
(`est` pairs), 4% TIME-WAIT and 1% CLOSE-WAIT with data in flight (orphans
whose client sent DATA_BYTES before closing: the bytes wait unread in the
server's receive queue). TIME-WAIT lasts 60 s, so each holder keeps its
share up by churning: a thread makes time_wait/60 short connections a second
to a listener of its own (the server side closes first and keeps the
TIME-WAIT), and the population is ready once the count has built up (about a
minute); it then stays within a few per cent of the target.
"""

from __future__ import annotations

import argparse
import array
import ctypes
import json
import math
import os
import random
import resource
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field

from sockdoctor.lab.netlab import Lab

PER_HOLDER = 18_000  # fds per holder: the hard limit is 20,000
BATCH = 2_000  # connections in flight at once, per holder
PORTS_PER_ADDR = 1_000
FIRST_SRC_PORT = 20_000
BACKLOG = 65_535
NETNS_SYSCTLS = {
    "net.core.somaxconn": BACKLOG,  # per netns; caps listen()'s backlog
    "net.ipv4.tcp_max_syn_backlog": BACKLOG,
    "net.ipv4.tcp_fin_timeout": 1,  # orphaned FIN_WAIT2 expire quickly
}
FIN_WAIT1 = 4  # tcpi_state
READY_TIMEOUT = 600.0
STABLE_TIMEOUT = 60.0
TIME_WAIT_S = 60.0  # TCP_TIMEWAIT_LEN: fixed in the kernel
TIME_WAIT_SLACK = 0.10  # the churned TIME-WAIT count may be this far off its target
DATA_BYTES = 300  # what a realistic orphan sends before closing
CHURN_PORTS = 40_000  # source ports per churn address (from FIRST_SRC_PORT)


@dataclass(frozen=True)
class HolderSpec:
    """What one holder process builds."""

    index: int  # selects the source addresses 127.(10+index).x.y
    ports: tuple[int, ...]  # listening ports on 127.0.0.1
    orphan: int = 0
    half: int = 0
    est: int = 0
    data: int = 0  # bytes each orphan sends before it closes (left unread)
    time_wait: int = 0  # TIME-WAIT sockets kept up by churning (realistic mix)
    churn_port: int = 0  # the listener the churn connects to

    @property
    def sockets(self) -> int:
        return self.orphan + 2 * self.half + 2 * self.est + self.time_wait

    def expected(self) -> Counter[str]:
        """Socket count per `ss` state name once the population is stable."""
        return Counter({"LISTEN": len(self.ports) + bool(self.time_wait),
                        "CLOSE-WAIT": self.orphan + self.half, "FIN-WAIT-2": self.half,
                        "ESTAB": 2 * self.est, "TIME-WAIT": self.time_wait})


def mixed(total: int, per_holder: int = PER_HOLDER, first_port: int = 5000,
          ports_per_holder: int = 2) -> list[HolderSpec]:
    """Holders for about `total` sockets (exact for multiples of 8), half CLOSE_WAIT."""
    holders = max(1, math.ceil(total / per_holder))
    units, rest = divmod(total, 8)  # one unit = 2 orphan + 2 half + 1 est = 8 sockets
    specs = []
    for h in range(holders):
        share = units // holders + (h < units % holders)
        extra = rest if h == 0 else 0
        ports = tuple(first_port + h * ports_per_holder + k for k in range(ports_per_holder))
        specs.append(HolderSpec(h, ports, orphan=2 * share + extra % 2, half=2 * share,
                                est=share + extra // 2))
    return specs


def realistic(total: int, per_holder: int = PER_HOLDER, first_port: int = 5000,
              ports_per_holder: int = 2) -> list[HolderSpec]:
    """Holders for about `total` sockets: ~95% ESTABLISHED, ~4% TIME-WAIT, ~1% CLOSE-WAIT
    with DATA_BYTES unread each (see the module doc)."""
    close_wait, time_wait = round(total * 0.01), round(total * 0.04)
    pairs = (total - close_wait - time_wait) // 2
    holders = max(1, math.ceil((2 * pairs + close_wait) / per_holder))
    specs = []
    for h in range(holders):
        def share(n: int, h: int = h) -> int:
            return n // holders + (h < n % holders)
        ports = tuple(first_port + h * (ports_per_holder + 1) + k
                      for k in range(ports_per_holder))
        specs.append(HolderSpec(h, ports, orphan=share(close_wait), est=share(pairs),
                                data=DATA_BYTES, time_wait=share(time_wait),
                                churn_port=first_port + h * (ports_per_holder + 1)
                                + ports_per_holder))
    return specs


MIXES = {"bench": mixed, "realistic": realistic}


def expected(specs: list[HolderSpec]) -> Counter[str]:
    total: Counter[str] = Counter()
    for spec in specs:
        total.update(spec.expected())
    return total


@dataclass
class Population:
    """Holders and their sockets in a fresh namespace; a context manager."""

    specs: list[HolderSpec]
    tag: str = "perf"
    lab: Lab = field(init=False)
    holders: list[subprocess.Popen] = field(default_factory=list, init=False)
    build_seconds: float = field(default=0.0, init=False)
    holder_rss_kb: int = field(default=0, init=False)
    slab_kb: int = field(default=0, init=False)  # kernel slab growth (machine-wide figure)

    def __post_init__(self) -> None:
        self.lab = Lab(self.tag, pair=False)

    @property
    def netns(self) -> str:
        return self.lab.server.netns

    @property
    def sockets(self) -> int:
        return sum(expected(self.specs).values())

    def __enter__(self) -> Population:
        self.up()
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    def up(self) -> None:
        slab_before = _meminfo_kb("Slab")
        start = time.perf_counter()
        self.lab.up()
        try:
            self.netns_exec(["sysctl", "-qw", *(f"{k}={v}" for k, v in NETNS_SYSCTLS.items())])
            for spec in self.specs:
                self.holders.append(self.lab.spawn(
                    self.lab.server, [sys.executable, os.path.abspath(__file__), "--holder",
                                      json.dumps(asdict(spec))],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
            reports = [_read_ready(proc) for proc in self.holders]
            self.wait_stable()
        except BaseException:
            self.down()
            raise
        self.build_seconds = time.perf_counter() - start
        self.holder_rss_kb = sum(_rss_kb(r["pid"]) for r in reports)
        self.slab_kb = _meminfo_kb("Slab") - slab_before

    def down(self) -> None:
        self.lab.down()  # kills every holder's process group, deletes the namespace
        self.holders.clear()

    def netns_exec(self, argv: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", self.netns, *argv], check=True,
                              capture_output=True, text=True, **kw)  # type: ignore[call-overload]

    def count_states(self) -> Counter[str]:
        """Sockets per state, counted by `ss -Htan` inside the namespace."""
        out = self.netns_exec(["ss", "-Htan"]).stdout
        return Counter(line.split(None, 1)[0] for line in out.splitlines() if line)

    def wait_stable(self, timeout: float = STABLE_TIMEOUT) -> Counter[str]:
        """Wait until the orphans have expired and the counts are what the specs say
        (the churned TIME-WAIT within TIME_WAIT_SLACK: it takes a minute to build up)."""
        want = expected(self.specs)
        if want["TIME-WAIT"]:
            timeout += TIME_WAIT_S
        deadline = time.monotonic() + timeout
        while True:
            have = self.count_states()
            if settled(have, want):
                return have
            if time.monotonic() > deadline:
                raise RuntimeError(f"population did not settle: have {dict(have)}, "
                                   f"want {dict(want)}")
            time.sleep(0.5)


def settled(have: Counter[str], want: Counter[str]) -> bool:
    """Every count as wanted; TIME-WAIT, which churns, within TIME_WAIT_SLACK."""
    tw, have_tw = want["TIME-WAIT"], have["TIME-WAIT"]
    rest = Counter({k: v for k, v in have.items() if k != "TIME-WAIT"})
    return rest == Counter({k: v for k, v in want.items() if k != "TIME-WAIT"}) and \
        abs(have_tw - tw) <= TIME_WAIT_SLACK * tw


def _read_ready(proc: subprocess.Popen) -> dict:
    ready, _, _ = select.select([proc.stdout], [], [], READY_TIMEOUT)
    line = proc.stdout.readline() if ready else b""  # type: ignore[union-attr]
    if not line:
        proc.kill()
        err = proc.stderr.read().decode(errors="replace")  # type: ignore[union-attr]
        raise RuntimeError(f"holder failed (exit {proc.wait()}): {err.strip()[-2000:]}")
    return json.loads(line)


def _meminfo_kb(key: str) -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def _rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


# --- holder process ---------------------------------------------------------

def _set_comm(name: str) -> None:
    """Name the process so `ss -p` and `sockdoctor ls -p` show what it is."""
    libc = ctypes.CDLL(None)
    libc.prctl(15, name.encode()[:15], 0, 0, 0)  # PR_SET_NAME


def _source(spec: HolderSpec, i: int) -> tuple[str, int]:
    block, port = divmod(i, PORTS_PER_ADDR)
    return f"127.{10 + spec.index}.{block // 250}.{block % 250 + 1}", FIRST_SRC_PORT + port


def _listen(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(BACKLOG)
    sock.setblocking(False)
    return sock


def _accept(listeners: list[socket.socket], need: int, keep: array.array) -> None:
    poller = select.poll()
    by_fd = {ls.fileno(): ls for ls in listeners}
    for fd in by_fd:
        poller.register(fd, select.POLLIN)
    got = 0
    while got < need:
        events = poller.poll(10_000)
        if not events:
            raise RuntimeError(f"handshakes stalled: {got} of {need} accepted")
        for fd, _ in events:
            while True:
                try:
                    conn, _addr = by_fd[fd].accept()
                except BlockingIOError:
                    break
                keep.append(conn.detach())
                got += 1


def _connect(spec: HolderSpec, i: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    sock.bind(_source(spec, i))
    code = sock.connect_ex(("127.0.0.1", spec.ports[i % len(spec.ports)]))
    if code not in (0, 115):  # EINPROGRESS
        raise OSError(code, os.strerror(code))
    return sock


def _close_in_fin_wait2(socks: list[socket.socket], timeout: float = 30.0) -> None:
    """Close each socket once the peer has ACKed its FIN (delayed ACK: ~40 ms)."""
    deadline = time.monotonic() + timeout
    for sock in socks:
        while (sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] == FIN_WAIT1
               and time.monotonic() < deadline):
            time.sleep(0.01)
        sock.close()


def _churn(spec: HolderSpec) -> None:
    """Keep spec.time_wait TIME-WAIT sockets: time_wait/60 short connections a second,
    the server side closing first. Each from its own source port (cycled over four
    addresses), so a 4-tuple comes back only long after its TIME-WAIT ended."""
    listener = _listen(spec.churn_port)
    listener.setblocking(True)
    rate = spec.time_wait / TIME_WAIT_S
    start, made = time.monotonic(), 0
    while True:
        due = int((time.monotonic() - start) * rate) - made
        for _ in range(due):
            block, port = divmod(made % (4 * CHURN_PORTS), CHURN_PORTS)
            client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            client.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            client.bind((f"127.{100 + spec.index}.{block}.1", FIRST_SRC_PORT + port))
            client.connect(("127.0.0.1", spec.churn_port))
            server, _addr = listener.accept()
            server.close()  # first: the server side keeps the TIME-WAIT
            client.recv(1)  # its FIN has arrived
            client.close()
            made += 1
        time.sleep(0.1)


def holder_main(spec: HolderSpec) -> None:
    _set_comm(f"sdbench-h{spec.index}")
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if spec.time_wait:
        threading.Thread(target=_churn, args=(spec,), daemon=True).start()
    listeners = [_listen(port) for port in spec.ports]
    kinds = bytearray(b"o" * spec.orphan + b"h" * spec.half + b"e" * spec.est)
    random.Random(spec.index).shuffle(kinds)  # kinds not correlated with addresses
    keep: array.array = array.array("i")
    closing: list[socket.socket] = []
    for start in range(0, len(kinds), BATCH):
        _close_in_fin_wait2(closing)  # the previous batch's, before new fds are opened
        closing = []
        batch = kinds[start:start + BATCH]
        clients = [_connect(spec, start + k) for k in range(len(batch))]
        _accept(listeners, len(batch), keep)  # all accepted: every client is ESTABLISHED
        for sock, kind in zip(clients, batch, strict=True):
            if kind == ord("o") and spec.data:
                sock.send(b"x" * spec.data)  # never read: in flight in the receive queue
            if kind != ord("e"):
                sock.shutdown(socket.SHUT_WR)
            if kind == ord("o"):
                closing.append(sock)
            else:
                keep.append(sock.detach())
    _close_in_fin_wait2(closing)
    print(json.dumps({"pid": os.getpid(), "fds": len(keep) + len(listeners)}), flush=True)
    sys.stdin.readline()  # hold everything until the parent goes away


# --- command line -----------------------------------------------------------

def _hold() -> None:
    """Until Enter (or, without a terminal, until a signal)."""
    if sys.stdin.isatty():
        input("press Enter to tear it down ")
    else:
        print("holding until SIGTERM or SIGINT", flush=True)
        signal.pause()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sockets", type=int, default=36_000)
    parser.add_argument("--per-holder", type=int, default=PER_HOLDER)
    parser.add_argument("--mix", choices=sorted(MIXES), default="bench",
                        help="bench: half CLOSE-WAIT (the default); realistic: ~95%% "
                             "ESTABLISHED, ~4%% TIME-WAIT, ~1%% CLOSE-WAIT with data")
    parser.add_argument("--hold", action="store_true", help="keep it until Enter is pressed")
    parser.add_argument("--holder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.holder:
        return holder_main(HolderSpec(**{**json.loads(args.holder),
                                         "ports": tuple(json.loads(args.holder)["ports"])}))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    specs = MIXES[args.mix](args.sockets, args.per_holder)
    with Population(specs) as pop:
        lines = pop.netns_exec(["sh", "-c", "ss -Htan | wc -l"]).stdout.strip()
        print(f"namespace {pop.netns}: {pop.sockets} sockets in {len(specs)} holders, "
              f"built in {pop.build_seconds:.1f} s")
        print(f"`ss -Htan | wc -l` inside the namespace: {lines}")
        print(f"states: {dict(pop.count_states())}")
        print(f"memory: holders' RSS {pop.holder_rss_kb / 1024:.0f} MiB, kernel slab "
              f"+{pop.slab_kb / 1024:.0f} MiB")
        if args.hold:
            _hold()
        start = time.perf_counter()
    print(f"torn down in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
