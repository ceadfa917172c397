"""The kernel engine's owner source (iter/task_file) against the /proc walk, on live sockets.

Processes in a namespace of the test's own hold TCP, UDP and Unix sockets,
a descriptor shared after fork, dup()ed descriptors and threads; both
sources must give exactly the same {inode: [(pid, fd)]} and descriptor
counts for them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from bpfengine import need_engine
from conftest import Remote, Unprivileged
from sockdoctor import inventory
from sockdoctor.lab.netlab import Lab
from sockdoctor.linux import bpf, procfs
from sockdoctor.linux.bpf import owners
from sockdoctor.linux.owners import ProcWalk, choose
from sockdoctor.model import TcpState

pytestmark = pytest.mark.root

HOLD = """
import threading
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(64)
port = srv.getsockname()[1]
conns = []
for _ in range(20):
    c = socket.create_connection(("127.0.0.1", port)); a, _ = srv.accept()
    conns += [c, a]
conns.append(os.dup(conns[0].fileno()))                      # one socket, two descriptors
u = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); u.bind(("::1", 0))
pair = socket.socketpair()
plain = open("/proc/self/status")                   # not a socket: not listed
stop = threading.Event()
threads = [threading.Thread(target=stop.wait) for _ in range(3)]
for t in threads: t.start()
ready_r, ready_w = os.pipe()                        # kept open on both sides
child = os.fork()
if child == 0:                                      # shares every descriptor above
    os.write(ready_w, b"x"); time.sleep(3600); os._exit(0)
os.read(ready_r, 1)                                 # its after-fork handlers have run
result = child
"""


def holders(owner_map: procfs.OwnerMap, pids: set[int]) -> dict[int, list[tuple[int, int]]]:
    out: dict[int, list[tuple[int, int]]] = {}
    for inode, owners_ in owner_map.by_inode.items():
        mine = sorted((o.pid, o.fd) for o in owners_ if o.pid in pids)
        if mine:
            out[inode] = mine
    return out


def test_task_file_owners_equal_the_proc_walk(solo: Lab) -> None:
    need_engine()  # (owners.socket_owners runs the program whatever SOCKDOCTOR_ENGINE says)
    remote = Remote(solo, solo.server, "bpfowners")
    child = remote(HOLD)
    pids = {remote.pid, child}
    try:
        kernel = owners.socket_owners()
        walked = procfs.socket_owners(sorted(pids))
        expected = holders(walked, pids)
        assert holders(kernel, pids) == expected
        assert len(expected) >= 44  # 41 TCP (20 pairs, listener), UDP, the Unix pair
        assert any(len(h) == 4 for h in expected.values())  # dup'd, then shared by fork
        assert {p: kernel.fd_counts[p] for p in pids} == {p: walked.fd_counts[p] for p in pids}
        assert kernel.denied_pids == 0
    finally:
        os.kill(child, 9)


def test_a_scan_takes_its_owners_from_the_engine_when_asked(solo: Lab,
                                                             monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    need_engine()
    remote = Remote(solo, solo.server, "bpfscan")
    remote("s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(); result = s.fileno()")
    monkeypatch.setenv("SOCKDOCTOR_ENGINE", "bpf")
    calls: list[str] = []
    real = owners.walk
    monkeypatch.setattr(owners, "walk", lambda: calls.append("bpf") or real())
    snap = inventory.scan(None, netns=str(solo.server.inode()))
    assert calls == ["bpf"]
    (listener,) = [sk for sk in snap.sockets if sk.state == TcpState.LISTEN]
    assert [o.pid for o in listener.owners] == [remote.pid]
    assert snap.processes[remote.pid].comm == "bpfscan"


@pytest.mark.parametrize("engine", ["c", "pure"])
def test_forced_off_the_scan_walks_proc(solo: Lab, monkeypatch: pytest.MonkeyPatch,
                                        engine: str) -> None:
    monkeypatch.setenv("SOCKDOCTOR_ENGINE", engine)
    assert not owners.worth_it()
    assert isinstance(choose(), ProcWalk)
    assert "off (SOCKDOCTOR_ENGINE=" in bpf.describe()
    remote = Remote(solo, solo.server, "bpfoff")
    remote("s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(); result = 1")
    snap = inventory.scan(None, netns=str(solo.server.inode()))
    assert [o.pid for sk in snap.sockets for o in sk.owners] == [remote.pid]


def test_without_the_privileges_it_says_why_and_lists_owners_from_proc(
        solo: Lab, unprivileged: Unprivileged) -> None:
    """As user nobody (no CAP_BPF, CAP_PERFMON): --version says why; ls -p still works."""
    version = unprivileged.sockdoctor("--version")
    assert version.returncode == 0, version.stderr
    line = version.stdout.splitlines()[-1]
    assert line.startswith("kernel engine: BPF not in use: "), line
    if bpf._probe() == "":  # it loads as root here, so as nobody the reason is privilege
        assert line.endswith("needs CAP_BPF and CAP_PERFMON (root)"), line
    listed = unprivileged.sockdoctor("ls", "-p", "--json", netns=solo.server.netns)
    assert listed.returncode == 0 and "Traceback" not in listed.stderr, listed.stderr


def test_without_its_programs_everything_works_as_before(tmp_path: os.PathLike,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """An install without clang: --version says why, ls -p still finds owners (/proc)."""
    code = ("import sockdoctor.linux.bpf.libbpf as l, pathlib, sys;"
            f"l.HERE = pathlib.Path({str(tmp_path)!r});"
            "from sockdoctor.cli import main; sys.argv=['sockdoctor','--version']; main()")
    env = {**os.environ, "SOCKDOCTOR_ENGINE": "bpf"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=60)
    assert "kernel engine: BPF not in use: its programs were not built" in out.stdout
    monkeypatch.setenv("SOCKDOCTOR_ENGINE", "bpf")
    assert owners.usable() is (bpf._probe() == "")


def test_version_says_owners_come_from_proc_in_another_pid_namespace() -> None:
    """The program's PIDs are the kernel's: in a PID namespace of its own sockdoctor
    takes owners from /proc, and --version says so."""
    need_engine()
    env = {**os.environ, "SOCKDOCTOR_ENGINE": "bpf"}
    env.pop("SOCKDOCTOR_PURE", None)
    here = subprocess.run([sys.executable, "-m", "sockdoctor", "--version"], env=env,
                          capture_output=True, text=True, timeout=60)
    inside = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", sys.executable,
                             "-m", "sockdoctor", "--version"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert "in use" in here.stdout and "owners from /proc" not in here.stdout
    assert "in use; owners from /proc (not the initial PID namespace)" in inside.stdout, inside


def test_in_a_pid_namespace_of_its_own_owners_carry_its_pids(solo: Lab) -> None:
    """A container's view: with its own PID namespace and /proc, the owner of a socket
    is named by the PID that namespace knows, not the kernel's."""
    need_engine()
    env = {**os.environ, "SOCKDOCTOR_ENGINE": "bpf"}
    env.pop("SOCKDOCTOR_PURE", None)
    code = ("import json, os, socket, subprocess, sys\n"
            "s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen()\n"
            "out = subprocess.run([sys.executable, '-m', 'sockdoctor', 'ls', '-l', '-p',"
            " '--json', '--netns', 'self'], capture_output=True, text=True).stdout\n"
            "port = s.getsockname()[1]\n"
            "mine = [sk for sk in json.loads(out)['sockets'] if sk['local_port'] == port]\n"
            "print(json.dumps([os.getpid(), [o['pid'] for sk in mine for o in sk['owners']]]))\n")
    done = subprocess.run(["ip", "netns", "exec", solo.server.netns, "unshare", "--pid",
                           "--fork", "--mount-proc", sys.executable, "-c", code], env=env,
                          capture_output=True, text=True, timeout=60)
    pid, owners = json.loads(done.stdout.strip().splitlines()[-1])
    assert owners == [pid], done.stderr
