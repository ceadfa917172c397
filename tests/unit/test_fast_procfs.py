"""The C owner walk (sockdoctor._fast.walk) against the Python reference.

On live /proc, with processes this test starts (sockets shared by fork and
dup, pipes, files; one process gone), in several thread counts; on a made-up
/proc tree that has the odd cases a live one rarely shows; and as user
nobody, for whom root's processes are unreadable. The two walks must give
the same arrays in the same order, so the same OwnerMap.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_fast_sockdiag import fast, needs_fast

from sockdoctor.linux import procfs

pytestmark = needs_fast

HOLDER = textwrap.dedent("""
    import json, os, socket, sys
    a, b = socket.socketpair()
    t = socket.socket()  # never bound nor connected: no traffic
    d = os.dup(t.fileno())
    r, w = os.pipe()
    f = open(os.devnull)
    pid = os.fork()
    if pid:
        inodes = [os.fstat(s.fileno()).st_ino for s in (a, b, t)]
        print(json.dumps({"pids": [os.getpid(), pid], "inodes": inodes}), flush=True)
    sys.stdin.read()  # both stay until the test closes stdin
""")


def start_holder(prefix: list[str] | None = None) -> tuple[subprocess.Popen[str], dict]:
    proc = subprocess.Popen([*(prefix or []), sys.executable, "-c", HOLDER], text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd="/")
    assert proc.stdout is not None
    return proc, json.loads(proc.stdout.readline())


def stop(proc: subprocess.Popen[str]) -> None:
    assert proc.stdin is not None
    proc.stdin.close()
    proc.wait(timeout=30)


def gone_pid() -> int:
    """A PID that existed a moment ago and has been reaped."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


@pytest.fixture
def holder() -> Iterator[dict]:
    proc, info = start_holder()
    yield info
    stop(proc)


def c_walk(pids: list[int], threads: int) -> procfs._Walk:
    assert fast is not None
    return procfs._Walk.from_arrays(fast.walk(procfs.PROC, pids, threads))


def flat(walk: procfs._Walk) -> tuple:
    return (list(walk.inodes), list(walk.pids), list(walk.fds), list(walk.count_pids),
            list(walk.counts), walk.denied)


@pytest.mark.parametrize("threads", [1, 2, 3, 8])
def test_live_walk_is_the_python_walk(holder: dict, threads: int) -> None:
    pids = [*holder["pids"], gone_pid(), *reversed(holder["pids"])]
    python, c = procfs._walk_python(pids), c_walk(pids, threads)
    assert flat(c) == flat(python)
    assert c.to_map() == python.to_map()
    owners = c.to_map().by_inode
    parent, child = holder["pids"]
    for inode in holder["inodes"]:  # shared by fork: both processes, in walk order
        assert list(dict.fromkeys(o.pid for o in owners[inode])) == [parent, child]
    t_inode = holder["inodes"][2]
    assert len({o.fd for o in owners[t_inode] if o.pid == parent}) == 2  # dup()ed


def test_owner_map_through_the_public_calls(holder: dict) -> None:
    """socket_owners() and the background-thread walk give the Python answer."""
    pids = holder["pids"]
    expected = procfs._walk_python(pids).to_map()
    assert procfs.socket_owners(pids) == expected
    assert procfs._threaded_walk(pids)() == expected


def test_made_up_proc_tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / ("a-long-directory-name-" * 8)  # paths longer than any fixed buffer

    def fds(pid: int, links: dict[str, str], dirs: tuple[str, ...] = ()) -> None:
        base = root / str(pid) / "fd"
        base.mkdir(parents=True)
        for name, target in links.items():
            (base / name).symlink_to(target)
        for name in dirs:  # readlink of a directory fails (EINVAL): the process is skipped
            (base / name).mkdir()

    fds(100, {"0": "/dev/null", "3": "socket:[555]", "4": "socket:[556]", "7": "pipe:[1]",
              "9": "socket:[555]", "12": "socket:[18446744073709551615]"})
    fds(200, {"5": "socket:[555]", "6": "anon_inode:[eventpoll]"})
    (root / "300").mkdir()
    (root / "300" / "fd").write_text("not a directory")
    fds(500, {})
    fds(700, {"3": "socket:[777]"}, dirs=("8",))
    monkeypatch.setattr(procfs, "PROC", str(root))
    pids = [100, 200, 300, 400, 500, 700]
    python = procfs._walk_python(pids)
    for threads in (1, 2, 4):
        assert flat(c_walk(pids, threads)) == flat(python)
    by_inode = python.to_map().by_inode
    assert {(o.pid, o.fd) for o in by_inode[555]} == {(100, 3), (100, 9), (200, 5)}
    assert by_inode[(1 << 64) - 1] == [procfs.Owner(100, 12)]
    assert dict(zip(python.count_pids, python.counts, strict=True)) == {
        100: 6, 200: 2, 500: 0, 700: 2}
    assert 777 not in by_inode


def test_as_nobody_root_processes_are_denied_the_same(unprivileged) -> None:
    """A process of nobody's own is walked, root's is counted as denied, by both walks."""
    from conftest import SETPRIV

    root_proc, root_info = start_holder()
    own_proc, own_info = start_holder(SETPRIV)
    try:
        pids = [root_info["pids"][0], *own_info["pids"], gone_pid()]
        script = textwrap.dedent(f"""
            import json
            from sockdoctor.linux import native, procfs
            pids = {pids!r}
            python = procfs._walk_python(pids)
            c = procfs._Walk.from_arrays(native.fast.walk(procfs.PROC, pids, 2))
            print(json.dumps([[list(a) for a in (w.inodes, w.pids, w.fds, w.count_pids,
                                                 w.counts)] + [w.denied] for w in (python, c)]))
        """)
        # Under the CI's AddressSanitizer run the extension needs its runtime preloaded.
        sanitizer = {k: v for k, v in os.environ.items()
                     if k in ("LD_PRELOAD", "ASAN_OPTIONS", "PYTHONMALLOC")}
        run = subprocess.run([*SETPRIV, unprivileged.python, "-c", script],
                             env={**unprivileged.env, **sanitizer}, cwd="/",
                             capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stderr
        python, c = json.loads(run.stdout)
        assert c == python
        assert python[5] == 1 and set(python[1]) == set(own_info["pids"])
    finally:
        stop(own_proc)
        stop(root_proc)


def test_owner_lists_and_join_are_the_python_ones(holder: dict,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """to_map's holder lists and OwnerMap.attach, in C and in Python, on a live walk."""
    from sockdoctor.model import Socket

    walk = procfs._walk_python([*holder["pids"], os.getpid()])
    inodes = [*holder["inodes"], 0, 1 << 40]  # held, held, held, no inode, held by nobody

    def sockets() -> list[Socket]:
        return [Socket(0, 2, 8, "127.0.0.1", 1, "127.0.0.1", 2, inode, 0, 0, 0, 0)
                for inode in inodes]

    c_map, c_socks = walk.to_map(), sockets()
    c_join = c_map.attach(c_socks)
    monkeypatch.setattr(procfs, "fast", None)
    py_map, py_socks = walk.to_map(), sockets()
    py_join = py_map.attach(py_socks)
    assert c_map == py_map and list(c_map.by_inode) == list(py_map.by_inode)
    assert c_join == py_join == (set(holder["pids"]), 1)
    assert c_socks == py_socks
    assert [len(sk.owners) for sk in c_socks] == [2, 2, 4, 0, 0]
