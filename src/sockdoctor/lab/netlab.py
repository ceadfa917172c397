"""Private test networks: network namespaces joined by a veth pair.

Every lab scenario and every integration test that touches a socket builds
its hosts here, so nothing it does can reach the machine's own connections.
Each pair of namespaces is its own little world, so the same addresses are
used every time: the server is 10.77.0.1 / fd77::1, the client 10.77.0.2 /
fd77::2, both on eth0.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from ..linux import netns, procfs

T = TypeVar("T")
PREFIX = "sdlab-"
SERVER_V4, CLIENT_V4 = "10.77.0.1", "10.77.0.2"
SERVER_V6, CLIENT_V6 = "fd77::1", "fd77::2"


class LabError(RuntimeError):
    """The network could not be built (no root, no `ip`, kernel without netns)."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    except FileNotFoundError as exc:
        raise LabError("the `ip` command (iproute2) is not installed") from exc
    if check and proc.returncode != 0:
        raise LabError(f"ip {' '.join(args)}: {proc.stderr.strip()}")
    return proc


@dataclass(frozen=True)
class Host:
    """One end of the lab network."""

    netns: str
    addr4: str
    addr6: str

    @property
    def path(self) -> str:
        return f"/run/netns/{self.netns}"

    def inode(self) -> int:
        return os.stat(self.path).st_ino

    def ref(self) -> netns.NsRef:
        """How sockdoctor.linux.netns enters this host."""
        return netns.NsRef(self.inode(), self.netns, "named", self.path)

    def run(self, fn: Callable[[], T]) -> T:
        """Call fn() on a thread inside this host's namespace; sockets it opens live there."""
        return netns.run_in(self.ref(), fn)


@dataclass
class Lab:
    """A server host and (optionally) a client host; a context manager.

    `Lab("forgot-close")` makes namespaces sdlab-forgot-close-XXXX-srv and
    -cli joined by a veth pair. With `pair=False` there is only the server
    namespace, with loopback.
    """

    tag: str
    pair: bool = True
    server: Host = field(init=False)
    client: Host = field(init=False)
    procs: list[subprocess.Popen] = field(default_factory=list, init=False)
    _made: list[str] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        # The creator's pid is part of the name: `lab clean` spares labs whose
        # creator still runs (another user's run, a test suite).
        stem = f"{PREFIX}{self.tag}-{os.getpid()}-{secrets.token_hex(2)}"
        self.server = Host(f"{stem}-srv", SERVER_V4, SERVER_V6)
        self.client = Host(f"{stem}-cli", CLIENT_V4, CLIENT_V6) if self.pair else self.server

    def __enter__(self) -> Lab:
        self.up()
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    def up(self) -> None:
        if os.geteuid() != 0:
            raise LabError("building a lab network needs root (network namespaces, veth)")
        try:
            for host in {self.server, self.client}:
                _ip("netns", "add", host.netns)
                self._made.append(host.netns)
                _ip("-n", host.netns, "link", "set", "lo", "up")
            if self.pair:
                self._wire()
        except BaseException:
            self.down()
            raise

    def _wire(self) -> None:
        a, b = f"sdv{secrets.token_hex(3)}", f"sdv{secrets.token_hex(3)}"
        _ip("link", "add", a, "type", "veth", "peer", "name", b)
        for host, ifname in ((self.server, a), (self.client, b)):
            _ip("link", "set", ifname, "netns", host.netns)
            _ip("-n", host.netns, "link", "set", ifname, "name", "eth0")
            _ip("-n", host.netns, "addr", "add", f"{host.addr4}/24", "dev", "eth0")
            _ip("-n", host.netns, "addr", "add", f"{host.addr6}/64", "dev", "eth0", "nodad")
            _ip("-n", host.netns, "link", "set", "eth0", "up")

    def cut_link(self) -> None:
        """Take the client's interface away: the peer vanishes without a FIN."""
        _ip("-n", self.client.netns, "link", "del", "eth0", check=False)

    def spawn(self, host: Host, argv: Sequence[str], **popen: object) -> subprocess.Popen:
        """Start a program inside a host's namespace; it is killed by down()."""
        popen.setdefault("start_new_session", True)
        proc = subprocess.Popen(["ip", "netns", "exec", host.netns, *argv], **popen)  # type: ignore[call-overload]
        self.procs.append(proc)
        return proc

    def python(self, host: Host, module: str, *args: str, **popen: object) -> subprocess.Popen:
        """Run `python -m module args...` inside a host's namespace."""
        return self.spawn(host, [sys.executable, "-m", module, *args], **popen)

    def down(self) -> None:
        for proc in self.procs:
            _stop(proc)
        self.procs.clear()
        for name in reversed(self._made):
            _ip("netns", "del", name, check=False)
        self._made.clear()


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


def leftovers() -> list[str]:
    """Lab namespaces present now (of any run, live or not)."""
    try:
        return sorted(n for n in os.listdir("/run/netns") if n.startswith(PREFIX))
    except FileNotFoundError:
        return []


_NAME = re.compile(rf"^(?P<stem>{PREFIX}.+-(?P<pid>\d+)-[0-9a-f]{{4}})-(?:srv|cli)$")


@dataclass(frozen=True)
class LabNetns:
    """One lab namespace and the run that made it."""

    name: str
    stem: str  # the lab's name without -srv / -cli: both ends share it
    creator: int  # pid of the process that built it; 0: unknown (an older name)

    @property
    def creator_alive(self) -> bool:
        return procfs.pid_exists(self.creator)


def labs() -> list[LabNetns]:
    """Every lab namespace, with its creator as recorded in its name."""
    out = []
    for name in leftovers():
        m = _NAME.match(name)
        out.append(LabNetns(name, m.group("stem"), int(m.group("pid"))) if m
                   else LabNetns(name, name.removesuffix("-srv").removesuffix("-cli"), 0))
    return out


def clean(names: Sequence[str] = (), force: bool = False
          ) -> tuple[list[str], list[LabNetns]]:
    """Remove lab namespaces and the processes still inside them.

    Without `names`, those whose creating process is gone (or every one, with
    `force`); with `names` (a namespace or a lab stem), exactly those labs.
    Returns (removed names, labs left alone because their creator still runs).
    """
    every = labs()
    if names:
        chosen = [lab for lab in every if lab.name in names or lab.stem in names]
        spared: list[LabNetns] = []
    else:
        chosen = [lab for lab in every if force or not (lab.creator == 0 or lab.creator_alive)]
        spared = [lab for lab in every if lab not in chosen]
    for lab in chosen:
        _remove(lab.name)
    return [lab.name for lab in chosen], spared


def _remove(name: str) -> None:
    pids = _ip("netns", "pids", name, check=False).stdout.split()
    for pid in pids:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass
    if pids:
        time.sleep(0.1)
    _ip("netns", "del", name, check=False)
