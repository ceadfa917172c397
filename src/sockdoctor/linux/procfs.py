"""Everything read from /proc: socket owners, process facts, sysctls, counters.

The owner walk is the most expensive part of a full scan (one readlink per
open file on the host), so it is a single linear pass that only runs when a
query needs owners, and it reads each /proc/PID/fd directory through a
directory fd so the kernel does not resolve the path again for every entry.
"""

from __future__ import annotations

import os
import pwd
import re
import struct
from array import array
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import lru_cache

from ..model import DeadSocketFd, Owner, Process, Socket, ThreadInfo
from .native import fast

# The one root of every /proc path in linux/ (tests point it at a fixture tree).
# Read it at call time, never copy it into a default argument or another name.
PROC = "/proc"


@dataclass
class OwnerMap:
    """inode -> every (pid, fd) holding it, plus what the walk could not see."""

    by_inode: dict[int, list[Owner]] = field(default_factory=dict)
    fd_counts: dict[int, int] = field(default_factory=dict)
    denied_pids: int = 0

    def attach(self, sockets: list[Socket]) -> tuple[set[int], int]:
        """Give each socket the descriptors that hold it (inode 0: none can).

        Returns the pids of the holders given out and how many sockets with
        an inode found none. (The C join does the same, without the loop.)
        """
        if fast is not None:
            return fast.join(sockets, self.by_inode)
        by_inode = self.by_inode
        pids: set[int] = set()
        unowned = 0
        for sk in sockets:
            if sk.inode:
                holders = by_inode.get(sk.inode)
                if not holders:
                    unowned += 1
                    continue
                sk.owners = holders
                if len(holders) == 1:
                    pids.add(holders[0].pid)
                else:
                    pids.update(holder.pid for holder in holders)
        return pids, unowned

    def update(self, other: OwnerMap) -> None:
        """Add what a walk over other processes found."""
        for inode, holders in other.by_inode.items():
            self.by_inode.setdefault(inode, []).extend(holders)
        self.fd_counts.update(other.fd_counts)
        self.denied_pids += other.denied_pids


@dataclass
class _Walk:
    """Flat result of the walk: parallel arrays are cheap to build and to ship."""

    inodes: array = field(default_factory=lambda: array("Q"))
    pids: array = field(default_factory=lambda: array("q"))
    fds: array = field(default_factory=lambda: array("q"))
    count_pids: array = field(default_factory=lambda: array("q"))
    counts: array = field(default_factory=lambda: array("q"))
    denied: int = 0

    def extend(self, other: _Walk) -> None:
        for mine, theirs in ((self.inodes, other.inodes), (self.pids, other.pids),
                             (self.fds, other.fds), (self.count_pids, other.count_pids),
                             (self.counts, other.counts)):
            mine.extend(theirs)
        self.denied += other.denied

    def to_map(self) -> OwnerMap:
        # Owner objects are made here, once: scan() hands these lists to the sockets.
        counts = dict(zip(self.count_pids, self.counts, strict=True))
        if fast is not None:
            return OwnerMap(fast.by_inode(Owner, self.inodes, self.pids, self.fds), counts,
                            self.denied)
        holders = list(map(Owner, self.pids, self.fds))
        by_inode = dict(zip(self.inodes, ([h] for h in holders), strict=True))
        if len(by_inode) < len(holders):  # shared sockets (fork, dup): collect every holder
            by_inode = {}
            for inode, holder in zip(self.inodes, holders, strict=True):
                by_inode.setdefault(inode, []).append(holder)
        return OwnerMap(by_inode, counts, self.denied)

    def dumps(self) -> bytes:
        head = struct.pack("=QQq", len(self.inodes), len(self.counts), self.denied)
        return b"".join((head, self.inodes.tobytes(), self.pids.tobytes(), self.fds.tobytes(),
                         self.count_pids.tobytes(), self.counts.tobytes()))

    @classmethod
    def from_arrays(cls, raw: tuple[bytes, bytes, bytes, bytes, bytes, int]) -> _Walk:
        """What the C walk returns: the five arrays as bytes, and the denied count."""
        walk = cls(denied=raw[5])
        for arr, data in zip((walk.inodes, walk.pids, walk.fds, walk.count_pids, walk.counts),
                             raw[:5], strict=True):
            arr.frombytes(data)
        return walk

    @classmethod
    def loads(cls, data: bytes) -> _Walk:
        n, m, denied = struct.unpack_from("=QQq", data)
        walk = cls(denied=denied)
        offset = 24
        for arr, size in ((walk.inodes, n), (walk.pids, n), (walk.fds, n),
                          (walk.count_pids, m), (walk.counts, m)):
            arr.frombytes(data[offset:offset + 8 * size])
            offset += 8 * size
        return walk


CAP_DAC_READ_SEARCH, CAP_SYS_PTRACE, CAP_SYS_ADMIN = 2, 19, 21


def has_capabilities(*caps: int) -> bool:
    """Whether this process holds every one of these in its effective set.

    A service may run as an ordinary user with just the capabilities it needs
    (deploy/systemd), and root in a container may lack some: the uid alone
    does not say what a scan may see.
    """
    try:
        for line in _read(f"{PROC}/self/status").splitlines():
            if line.startswith("CapEff:"):
                effective = int(line.split()[1], 16)
                return all(effective >> cap & 1 for cap in caps)
    except (OSError, ValueError, IndexError):
        pass
    return os.geteuid() == 0


def sees_every_process() -> bool:
    """May read every process's descriptors (list them and follow the links)?"""
    return has_capabilities(CAP_DAC_READ_SEARCH, CAP_SYS_PTRACE)


def list_pids() -> list[int]:
    return [int(name) for name in os.listdir(PROC) if name.isdigit()]


def pid_exists(pid: int) -> bool:
    """Whether a process with this PID runs in our PID namespace (any owner)."""
    return pid > 0 and os.path.exists(f"{PROC}/{pid}")


def _walk(pids: Iterable[int], threads: int = 1) -> _Walk:
    """One pass over /proc/PID/fd: every descriptor that points at a socket.

    With the C extension the walk runs in `threads` threads without the GIL;
    the result is the same as this Python walk's, in the same order.
    """
    if fast is not None:
        return _Walk.from_arrays(fast.walk(PROC, list(pids), threads))
    return _walk_python(pids)


def _walk_python(pids: Iterable[int]) -> _Walk:
    """_walk() in Python: the reference for the C walk."""
    walk = _Walk()
    for pid in pids:
        try:
            dirfd = os.open(f"{PROC}/{pid}/fd", os.O_RDONLY | os.O_DIRECTORY)
        except PermissionError:
            walk.denied += 1
            continue
        except (FileNotFoundError, ProcessLookupError, NotADirectoryError):
            continue  # exited meanwhile
        try:
            names = os.listdir(dirfd)
            walk.count_pids.append(pid)
            walk.counts.append(len(names))
            _sockets_of(pid, dirfd, names, walk)
        except PermissionError:
            walk.denied += 1
        except OSError:
            pass  # the process exited while we read it
        finally:
            os.close(dirfd)
    return walk


def _sockets_of(pid: int, dirfd: int, names: list[str], walk: _Walk) -> None:
    """Append (inode, pid, fd) for each socket among one process's descriptors.

    A list comprehension first (the kernel's readlink is most of the cost and
    the loop around it should add little); a descriptor closed meanwhile
    makes it fail, and then the careful loop takes over.
    """
    readlink = os.readlink
    try:
        links = [readlink(name, dir_fd=dirfd) for name in names]
    except FileNotFoundError:
        links = []
        for name in names:
            try:
                links.append(readlink(name, dir_fd=dirfd))
            except FileNotFoundError:
                links.append("")
    found = [(int(link[8:-1]), int(name)) for name, link in zip(names, links, strict=True)
             if link.startswith("socket:[")]
    if found:
        walk.inodes.extend(inode for inode, _ in found)
        walk.fds.extend(fd for _, fd in found)
        walk.pids.extend([pid] * len(found))


def socket_owners(pids: Iterable[int] | None = None) -> OwnerMap:
    """Which process fds point at which socket inode (fork, dup, SCM_RIGHTS: several)."""
    pids = list_pids() if pids is None else list(pids)
    # Threads pay off for a host-wide walk, not for the few processes of a guard's look.
    return _walk(pids, _cpus() if len(pids) >= MANY_PROCESSES else 1).to_map()


def _cpus() -> int:
    """CPUs this process may run on (a container's share, not the host's count)."""
    return len(os.sched_getaffinity(0)) or 1


MANY_PROCESSES = 32  # from this many processes on, the C walk uses every CPU

# Above this many open files on the host, walking /proc in a child process
# while the parent dumps sockets pays for the fork.
PARALLEL_WALK_MIN_FILES = 20_000


def open_files() -> int:
    """Open file handles on the host (first field of /proc/sys/fs/file-nr)."""
    return read_int_file(f"{PROC}/sys/fs/file-nr") or 0


def socket_owners_async(pids: list[int] | None = None) -> Callable[[], OwnerMap]:
    """Start the owner walk now; the returned function collects its result.

    On a busy host the walk runs in forked children, one per CPU, so that it
    overlaps with the kernel dump in the parent and uses every core. The
    children only read /proc and write flat arrays to a pipe each.
    """
    pids = list_pids() if pids is None else pids
    if open_files() < PARALLEL_WALK_MIN_FILES:
        return lambda: socket_owners(pids)
    if fast is not None:
        return _threaded_walk(pids)
    # One walker per CPU but one: the parent has the kernel dump to parse meanwhile.
    shares = [share for share in _balanced(pids, (os.cpu_count() or 2) - 1) if share]
    children = [_fork_walker(share) for share in shares]

    def collect() -> OwnerMap:
        total = _Walk()
        for (child, read_end), share in zip(children, shares, strict=True):
            chunks = []
            with os.fdopen(read_end, "rb") as pipe:
                while chunk := pipe.read(1 << 20):
                    chunks.append(chunk)
            _, status = os.waitpid(child, 0)
            total.extend(_Walk.loads(b"".join(chunks)) if status == 0 else _walk(share))
        return total.to_map()
    return collect


def _threaded_walk(pids: list[int]) -> Callable[[], OwnerMap]:
    """The C walk in a background thread: it releases the GIL, so it overlaps the dump."""
    import threading  # only needed here: keeps `import procfs` cheap

    result: list[_Walk] = []
    thread = threading.Thread(target=lambda: result.append(_walk(pids, _cpus())),
                              name="sockdoctor-owner-walk", daemon=True)
    thread.start()

    def collect() -> OwnerMap:
        thread.join()
        return (result[0] if result else _walk(pids)).to_map()
    return collect


def _fork_walker(pids: list[int]) -> tuple[int, int]:
    """A child that walks `pids` and writes the result to a pipe: (child pid, read end)."""
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        status = 1
        try:
            os.close(read_end)
            data = memoryview(_walk(pids).dumps())
            while data:
                data = data[os.write(write_end, data):]
            status = 0
        finally:
            os._exit(status)
    os.close(write_end)
    return child, read_end


def _balanced(pids: list[int], parts: int) -> list[list[int]]:
    """Split processes into `parts` shares with about as many descriptors each.

    Since Linux 6.2, stat() of /proc/PID/fd reports the number of open
    descriptors as its size; on older kernels every process weighs the same.
    """
    weights = []
    for pid in pids:
        try:
            weights.append((os.stat(f"{PROC}/{pid}/fd").st_size + 1, pid))
        except OSError:
            weights.append((1, pid))
    shares: list[list[int]] = [[] for _ in range(max(1, parts))]
    loads = [0] * len(shares)
    for weight, pid in sorted(weights, reverse=True):
        lightest = loads.index(min(loads))
        shares[lightest].append(pid)
        loads[lightest] += weight
    return shares


def _read(path: str) -> str:
    # surrogateescape: names and command lines are bytes any user chooses; bytes
    # that are not UTF-8 survive exactly (render.fmt.untrusted, jsontext).
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        return f.read()


def read_int_file(path: str) -> int | None:
    try:
        return int(_read(path).split()[0])
    except (OSError, ValueError, IndexError):
        return None


@lru_cache(maxsize=1024)
def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


# A container's cgroup, as each runtime names it (docs/containers.md):
#   docker, cgroupfs driver      /docker/<id>
#   docker, systemd driver       /system.slice/docker-<id>.scope
#   containerd (CRI)             .../cri-containerd-<id>.scope, /kubepods/<qos>/pod<uid>/<id>
#   CRI-O                        .../crio-<id>.scope, /kubepods/<qos>/pod<uid>/crio-<id>
#   podman, systemd              /machine.slice/libpod-<id>.scope (rootless: under
#                                user@UID.service; --cgroups=split: .../libpod-<id>.scope/container)
#   podman, cgroupfs             /libpod_parent/libpod-<id>
# A path component that is the 64-hex id, bare or with the runtime's prefix;
# the innermost one wins (a container in a container). conmon, the monitor
# beside a podman or CRI-O container (libpod-conmon-<id>, crio-conmon-<id>.scope),
# is not in it and does not match.
_CONTAINER = re.compile(r"/(?:(?:docker|cri-containerd|crio|libpod)-)?([0-9a-f]{64})"
                        r"(?:\.scope)?(?=/|$)")
_SHORT_ID = re.compile(r"/(?:docker|containerd|lxc|machine)/([0-9a-f]{12,63})(?=/|$)")


def container_id(cgroup: str) -> str:
    """Container id derived from a cgroup path, shortened like docker does."""
    found = _CONTAINER.findall(cgroup) or _SHORT_ID.findall(cgroup)
    return found[-1][:12] if found else ""


def cgroup_path(text: str) -> str:
    """The telling path of a /proc/PID/cgroup: the one that names a container.

    cgroup v2 has one line, `0::PATH`; v1 one per hierarchy; the hybrid layout
    both, where the v2 line often stays `/` while the v1 ones name the
    container. Looked at in order: v2, name=systemd, the controllers.
    """
    lines = [line.split(":", 2) for line in text.splitlines() if line.count(":") >= 2]
    order = {"0": 0, "name=systemd": 1}
    paths = [path for _id, _ctl, path in sorted(
        lines, key=lambda f: order.get(f[0] if f[1] == "" else f[1], 2))]
    for path in paths:
        if container_id(path):
            return path
    return next((p for p in paths if p != "/"), paths[0] if paths else "")


def process_names() -> list[Process]:
    """Every process's pid, name and command line (what `--process` is matched against)."""
    out = []
    for pid in list_pids():
        try:
            comm = _read(f"{PROC}/{pid}/comm").removesuffix("\n")
            cmdline = [part for part in _read(f"{PROC}/{pid}/cmdline").split("\0") if part]
        except OSError:
            continue
        out.append(Process(pid=pid, comm=comm, cmdline=cmdline))
    return out


# Kubernetes puts each pod in a cgroup named after its uid: "pod<uid>" with the
# cgroupfs driver, "kubepods-<qos>-pod<uid with _ for ->.slice" with systemd's.
_POD_UID = re.compile(r"kubepods.*?pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_]"
                      r"[0-9a-f]{4}[-_][0-9a-f]{12})")


def pod_uid(cgroup: str) -> str:
    """The Kubernetes pod uid a cgroup path reveals ('' outside Kubernetes)."""
    m = _POD_UID.search(cgroup)
    return m.group(1).replace("_", "-") if m else ""


def process_info(pid: int, fd_count: int = 0, threads: bool = False) -> Process | None:
    """Facts about one process, or None if it is gone."""
    base = f"{PROC}/{pid}"
    try:
        comm = _read(f"{base}/comm").removesuffix("\n")
        stat = _read(f"{base}/stat")
        uid = os.stat(base).st_uid
    except OSError:
        return None
    state, ppid = [*stat[stat.rfind(")") + 2:].split(" ", 2), "", ""][:2]
    proc = Process(pid=pid, comm=comm, uid=uid, user=user_name(uid), state=state,
                   ppid=int(ppid) if ppid.isdigit() else 0, fd_count=fd_count)
    try:
        raw = _read(f"{base}/cmdline")
        proc.cmdline = [part for part in raw.split("\0") if part]
    except OSError:
        pass
    try:
        proc.cgroup = cgroup_path(_read(f"{base}/cgroup"))
        proc.container = container_id(proc.cgroup)
    except OSError:
        pass
    try:
        proc.netns = os.stat(f"{base}/ns/net").st_ino
    except OSError:
        pass
    proc.fd_limit = fd_soft_limit(pid)
    if threads:
        proc.threads = thread_states(pid)
    return proc


def start_time(pid: int) -> tuple[int, str] | None:
    """(start time in clock ticks since boot, state letter) of a process; None if gone.

    The start time tells a process from a later one that got the same PID.
    """
    try:
        stat = _read(f"{PROC}/{pid}/stat")
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2:].split(" ")
    try:
        return int(fields[19]), fields[0]
    except (IndexError, ValueError):
        return None


def comm(pid: int) -> str:
    try:
        return _read(f"{PROC}/{pid}/comm").removesuffix("\n")
    except OSError:
        return ""


def fd_soft_limit(pid: int) -> int:
    try:
        for line in _read(f"{PROC}/{pid}/limits").splitlines():
            if line.startswith("Max open files"):
                value = line.split()[3]
                return 0 if value == "unlimited" else int(value)
    except (OSError, ValueError, IndexError):
        pass
    return 0


# x86_64 syscall numbers a stuck network program is typically blocked in.
SYSCALL_NAMES = {
    0: "read", 7: "poll", 23: "select", 35: "nanosleep", 43: "accept", 45: "recvfrom",
    47: "recvmsg", 61: "wait4", 202: "futex", 230: "clock_nanosleep", 232: "epoll_wait",
    270: "pselect6", 271: "ppoll", 281: "epoll_pwait", 288: "accept4", 441: "epoll_pwait2",
    34: "pause", 1: "write", 44: "sendto", 46: "sendmsg",
}


def thread_states(pid: int) -> list[ThreadInfo]:
    """State, wait channel and current syscall of each thread of a process."""
    out: list[ThreadInfo] = []
    try:
        tids = sorted(int(t) for t in os.listdir(f"{PROC}/{pid}/task"))
    except OSError:
        return out
    for tid in tids:
        base = f"{PROC}/{pid}/task/{tid}"
        try:
            stat = _read(f"{base}/stat")
        except OSError:
            continue
        state = stat[stat.rfind(")") + 2:].split(" ", 1)[0]
        wchan = ""
        syscall = ""
        try:
            wchan = _read(f"{base}/wchan").strip()
            wchan = "" if wchan == "0" else wchan
        except OSError:
            pass
        try:
            first = _read(f"{base}/syscall").split()[0]
            if first == "running":
                syscall = "running"
            elif first.lstrip("-").isdigit():
                nr = int(first)
                syscall = "" if nr < 0 else SYSCALL_NAMES.get(nr, f"syscall {nr}")
        except (OSError, IndexError):
            pass
        out.append(ThreadInfo(tid=tid, state=state, wchan=wchan, syscall=syscall))
    return out


def socket_protocol(pid: int, fd: int) -> str:
    """Protocol name of the socket behind a descriptor ("TCP", "TCPv6", "UNIX", ...)."""
    try:
        raw = os.getxattr(f"{PROC}/{pid}/fd/{fd}", "system.sockprotoname")
    except OSError:
        return ""
    return raw.rstrip(b"\0").decode("ascii", "replace")


EpollWatch = tuple[int, int, int]  # (epoll fd, events, data) of one registration


def epoll_watches(pid: int, fd: int, inode: int) -> list[EpollWatch]:
    """The process's epoll instances that watch its descriptor `fd` (naming `inode`).

    From /proc/PID/fdinfo of each eventpoll descriptor: "tfd: N events: X
    data: Y ... ino:I" per watched descriptor. Unreadable: none.
    """
    found: list[EpollWatch] = []
    base = f"{PROC}/{pid}"
    try:
        names = os.listdir(f"{base}/fd")
    except OSError:
        return found
    for name in names:
        try:
            if os.readlink(f"{base}/fd/{name}") != "anon_inode:[eventpoll]":
                continue
            text = _read(f"{base}/fdinfo/{name}")
        except OSError:
            continue
        for line in text.splitlines():
            watch = _epoll_line(line, fd, inode)
            if watch is not None:
                found.append((int(name), *watch))
    return found


def _epoll_line(line: str, fd: int, inode: int) -> tuple[int, int] | None:
    words = line.split()
    if len(words) < 6 or words[0] != "tfd:" or words[2] != "events:":
        return None
    fields = dict(w.split(":", 1) for w in words[6:] if ":" in w)
    try:
        if int(words[1]) != fd or int(fields.get("ino", "-1"), 16) != inode:
            return None
        return int(words[3], 16), int(words[5], 16)
    except ValueError:
        return None


def dead_tcp_fds(owners: OwnerMap, live_inodes: set[int], namespaces: set[int],
                 protocols: dict[int, str] | None = None) -> list[DeadSocketFd]:
    """Descriptors pointing at TCP sockets that are in no TCP table any more.

    Only processes inside the scanned namespaces are considered: a socket
    usually lives in its creator's namespace, and one from a namespace we did
    not dump would otherwise look dead. `protocols` (inode -> protocol name)
    is a cache a caller that asks again and again (the sampler) keeps: a
    socket's protocol never changes.
    """
    dead: list[DeadSocketFd] = []
    netns_of: dict[int, int] = {}
    by_inode = owners.by_inode
    for inode in by_inode.keys() - live_inodes:
        for holder in by_inode[inode]:
            pid, fd = holder.pid, holder.fd
            if pid not in netns_of:
                netns_of[pid] = netns_inode(pid)
            if netns_of[pid] not in namespaces:
                continue
            proto = protocols.get(inode, "") if protocols is not None else ""
            if not proto:
                proto = socket_protocol(pid, fd)
                if protocols is not None and proto:
                    protocols[inode] = proto
            if proto in ("TCP", "TCPv6"):
                dead.append(DeadSocketFd(pid=pid, fd=fd, inode=inode, protocol=proto))
    return sorted(dead, key=lambda d: (d.pid, d.fd))


def netns_inode(pid: int) -> int:
    try:
        return os.stat(f"{PROC}/{pid}/ns/net").st_ino
    except OSError:
        return 0


# --- sysctls and counters (per network namespace when read from a thread inside it) ---

NET_SYSCTLS = (
    "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes", "net.ipv4.tcp_tw_reuse", "net.ipv4.tcp_tw_recycle",
    "net.ipv4.tcp_max_tw_buckets", "net.ipv4.tcp_orphan_retries",
    "net.ipv4.tcp_retries2", "net.ipv4.tcp_syn_retries", "net.ipv4.tcp_synack_retries",
    "net.ipv4.tcp_max_syn_backlog", "net.ipv4.tcp_syncookies", "net.ipv4.tcp_abort_on_overflow",
    "net.ipv4.ip_local_port_range", "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_challenge_ack_limit", "net.ipv4.tcp_invalid_ratelimit",
    "net.core.somaxconn",
)
# Host-wide ones: a network namespace other than the first has no such file.
GLOBAL_SYSCTLS = ("fs.file-max", "fs.nr_open", "fs.file-nr", "net.ipv4.tcp_mem",
                  "net.ipv4.tcp_max_orphans")


def read_sysctls(names: Iterable[str]) -> dict[str, str]:
    """Values of the given sysctls that exist on this kernel, whitespace normalised."""
    values: dict[str, str] = {}
    for name in names:
        try:
            raw = _read(f"{PROC}/sys/{name.replace('.', '/')}")
        except OSError:
            continue
        values[name] = " ".join(raw.split())
    return values


def _parse_pairs_file(text: str) -> dict[str, dict[str, int]]:
    """/proc/net/netstat and /proc/net/snmp: header line then value line per group."""
    out: dict[str, dict[str, int]] = {}
    lines = text.splitlines()
    for header, values in zip(lines[::2], lines[1::2], strict=False):
        hname, _, hkeys = header.partition(":")
        vname, _, vvals = values.partition(":")
        if hname != vname:
            continue
        try:
            out[hname] = dict(zip(hkeys.split(), map(int, vvals.split()), strict=True))
        except ValueError:
            continue
    return out


def _parse_sockstat(text: str) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        words = rest.split()
        try:
            out["sockstat." + name] = {k: int(v) for k, v in zip(words[::2], words[1::2],
                                                                  strict=False)}
        except ValueError:
            continue
    return out


def read_counters(net_dir: str = "") -> dict[str, dict[str, int]]:
    """TcpExt, Tcp and sockstat counters of the calling thread's network namespace."""
    net_dir = net_dir or f"{PROC}/thread-self/net"
    counters: dict[str, dict[str, int]] = {}
    for name in ("netstat", "snmp"):
        try:
            groups = _parse_pairs_file(_read(f"{net_dir}/{name}"))
        except OSError:
            continue
        for group in ("TcpExt", "Tcp"):
            if group in groups:
                counters[group] = groups[group]
    for name in ("sockstat", "sockstat6"):
        try:
            counters.update(_parse_sockstat(_read(f"{net_dir}/{name}")))
        except OSError:
            continue
    return counters
