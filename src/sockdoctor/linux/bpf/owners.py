"""Socket owners from the kernel: the iter/task_file program (owners.bpf.c).

Gives the same OwnerMap as procfs.socket_owners() (every (pid, fd) of every
socket inode, and each process's number of open descriptors) in one kernel
pass instead of a readlink per descriptor. PIDs are the kernel's global
ones, so it serves only a process in the initial PID namespace.
"""

from __future__ import annotations

import os
import threading
from array import array
from collections.abc import Callable
from itertools import compress
from typing import TYPE_CHECKING

from .. import procfs
from . import BTF, BpfObject, libbpf, requested, wanted

if TYPE_CHECKING:
    from ..owners import Finish, Found, Scope

RECORD = 16  # struct record in owners.bpf.c: s32 tgid, s32 fd, u64 inode
# Loading the program costs ~15 ms (libbpf reads the kernel's BTF; the verifier);
# the /proc walk ~4 us per open file: below this many open files on the host the
# walk is faster, unless SOCKDOCTOR_ENGINE=bpf asks for the kernel engine anyway.
MIN_FILES = 5_000
CAP_PERFMON, CAP_BPF = 38, 39
PROC_PID_INIT_INO = 0xEFFFFFFC  # include/linux/proc_ns.h
_refused: list[OSError] = []  # a load that failed: not tried again in this process


def in_initial_pid_namespace() -> bool:
    """Whether our PIDs are the kernel's: the initial PID namespace has a fixed inode
    (PROC_PID_INIT_INO). Not NSpid in /proc/self/status: a container's own /proc
    (unshare --mount-proc) lists only the levels it can see, one number."""
    try:
        return os.stat(f"{procfs.PROC}/self/ns/pid").st_ino == PROC_PID_INIT_INO
    except OSError:
        return False


def usable() -> bool:
    """Wanted, built, not refused before, BTF and the capabilities present, our PIDs the
    kernel's. Not bpf.available(): its probe loads the program once more (~25 ms CPU)
    only to close it; a load that fails here is remembered and the walk reads /proc."""
    return (wanted() and not _refused and (libbpf.HERE / "owners.bpf.o").exists()
            and os.path.exists(BTF) and (procfs.has_capabilities(CAP_PERFMON, CAP_BPF)
                                         or procfs.has_capabilities(procfs.CAP_SYS_ADMIN))
            and in_initial_pid_namespace())


def walk() -> procfs._Walk:
    """Run the program once: the walk's flat arrays, as procfs._walk() gives them."""
    with BpfObject("owners") as obj:
        data = obj.run_iter("socket_owners")
    return decode(data)


def decode(data: bytes) -> procfs._Walk:
    """Records -> parallel arrays; count records (fd -1) -> per-process totals."""
    data = data[:len(data) - len(data) % RECORD]
    words = array("i", data)
    wide = array("Q", data)
    tgids, fds, inodes = words[0::4], words[1::4], wide[1::2]
    out = procfs._Walk()
    is_socket = [fd >= 0 for fd in fds]
    out.inodes.extend(compress(inodes, is_socket))
    out.pids.extend(compress(tgids, is_socket))
    out.fds.extend(compress(fds, is_socket))
    is_count = [not s for s in is_socket]
    out.count_pids.extend(compress(tgids, is_count))
    out.counts.extend(compress(inodes, is_count))
    return out


def socket_owners() -> procfs.OwnerMap:
    return walk().to_map()


def subset(found: procfs._Walk, pids: set[int]) -> procfs._Walk:
    """The part of a walk that is about these processes."""
    out = procfs._Walk(denied=found.denied)
    keep = [pid in pids for pid in found.pids]
    out.inodes.extend(compress(found.inodes, keep))
    out.pids.extend(compress(found.pids, keep))
    out.fds.extend(compress(found.fds, keep))
    keep = [pid in pids for pid in found.count_pids]
    out.count_pids.extend(compress(found.count_pids, keep))
    out.counts.extend(compress(found.counts, keep))
    return out


def worth_it() -> bool:
    """Whether a scan should take its owners from the program: the engine is in use
    here and the host has enough open files that one kernel pass beats the walk
    (SOCKDOCTOR_ENGINE=bpf: always, when it loads)."""
    if requested() != "bpf" and procfs.open_files() < MIN_FILES:
        return False
    return usable()


class KernelWalk:
    """Owner source (linux/owners.py): the program, run in a thread while the sockets
    are dumped (its read releases the GIL). Keeps what the /proc walk would have
    read: the processes of the scanned namespaces, the others only if needed."""

    def start(self, scope: Scope) -> Finish:
        collect = _start_thread()
        first, other = scope.pids

        def finish(found: Found) -> procfs.OwnerMap:
            walk = collect()
            if not other:
                return walk.to_map()
            owner_map = subset(walk, set(first)).to_map()
            if found.unowned(owner_map):
                owner_map.update(subset(walk, set(other)).to_map())
            return owner_map
        return finish


def _start_thread() -> Callable[[], procfs._Walk]:
    """Run the program in a thread; the returned function collects its walk
    (the /proc walk's if the program failed this time)."""
    result: list[procfs._Walk | BaseException] = []

    def run() -> None:
        try:
            result.append(walk())
        except OSError as exc:  # BpfError, or no libbpf: /proc then, and not again
            _refused.append(exc)
            result.append(exc)
    thread = threading.Thread(target=run, name="sockdoctor-bpf-owners", daemon=True)
    thread.start()

    def collect() -> procfs._Walk:
        thread.join()
        found = result[0] if result else None
        if isinstance(found, procfs._Walk):
            return found
        return procfs._walk(procfs.list_pids())
    return collect
