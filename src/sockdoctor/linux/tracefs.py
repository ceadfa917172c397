"""TCP state changes from tracefs: the `sock:inet_sock_set_state` tracepoint.

No BPF and no compiler: a private tracing instance (its own ring buffer, so
other users of tracefs are not disturbed) with one event enabled, read as
binary ring-buffer pages from per_cpu/cpuN/trace_pipe_raw. The binary pages
cost the kernel no text formatting and us no text parsing (measured in
bench/trace_bench.py against the text trace_pipe).

The layout of the event is read from its `format` file and the page layout
from events/header_page, so a kernel that moves a field still decodes (the
decoding itself is in ringbuf.py).
Events the ring buffer could not keep are counted by the kernel in
per_cpu/cpuN/stats; `lost()` reports them, and the reader never drops any of
its own.

Cleanup: the instance is named sockdoctor-PID-N and removed on close (the CLI
closes it on exit, on error and on SIGINT/SIGTERM). If tracefs was not mounted,
it is mounted on a private directory and unmounted on close. An instance left
behind by a sockdoctor that was killed with SIGKILL is removed by the next one.
"""

from __future__ import annotations

import bisect
import contextlib
import ctypes
import errno
import os
import re
import select
import tempfile
import time

from ..errors import PermissionDeniedError, UnsupportedError
from . import procfs
from .ringbuf import IRQ_FLAGS, EventLayout, StateChange, iter_page, page_layout

SYSTEM, EVENT = "sock", "inet_sock_set_state"
INSTANCE_PREFIX = "sockdoctor-"
PRIVATE_MOUNT = "sockdoctor-tracefs-"  # + PID-random: where trace mounts tracefs if need be
IPPROTO_TCP = 6
MNT_DETACH = 2
HOLD_BACK_NS = 2_000_000  # see Reader.read

_STATS = re.compile(r"^(overrun|commit overrun|dropped events|entries):\s*(\d+)", re.M)

_libc = ctypes.CDLL(None, use_errno=True)


def thread_group(tid: int) -> int:
    """The process of a thread: an event's common_pid names a thread. 0 if it is gone."""
    try:
        with open(f"{procfs.PROC}/{tid}/status") as f:
            for line in f:
                if line.startswith("Tgid:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


# --- finding or mounting tracefs ----------------------------------------------

def find_mount(mounts: str = "") -> str | None:
    """Where tracefs is mounted already (tracefs itself, or debugfs's tracing/)."""
    try:
        with open(mounts or f"{procfs.PROC}/self/mounts") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    found = None
    for line in lines:
        parts = line.split()
        if len(parts) < 3:
            continue
        where = parts[1].replace("\\040", " ")
        if PRIVATE_MOUNT in where:
            continue  # another sockdoctor's, gone when it exits
        if parts[2] == "tracefs":
            return where
        if parts[2] == "debugfs" and os.path.isdir(f"{where}/tracing/instances"):
            found = f"{where}/tracing"
    return found


def kernel_has_tracefs() -> bool:
    try:
        with open(f"{procfs.PROC}/filesystems") as f:
            return any(line.split()[-1] == "tracefs" for line in f if line.strip())
    except OSError:
        return False


class Mount:
    """tracefs, as found, or mounted by us on a private directory until close()."""

    def __init__(self) -> None:
        remove_stale_mounts()
        self.path = find_mount()
        self._ours = ""
        if self.path is None:
            self.path = self._ours = self._mount()

    @staticmethod
    def _mount() -> str:
        if not kernel_has_tracefs():
            raise UnsupportedError("this kernel has no tracefs (CONFIG_TRACING is off), "
                                   "so state changes cannot be traced")
        if os.geteuid() != 0:
            raise PermissionDeniedError("tracing needs root: tracefs is not mounted and "
                                        "only root may mount it")
        where = tempfile.mkdtemp(prefix=f"{PRIVATE_MOUNT}{os.getpid()}-")
        if _libc.mount(b"nodev", where.encode(), b"tracefs", 0, None) != 0:
            err = ctypes.get_errno()
            os.rmdir(where)
            if err in (errno.EPERM, errno.EACCES):
                raise PermissionDeniedError("mounting tracefs was refused: tracing needs "
                                            "root (CAP_SYS_ADMIN)")
            raise UnsupportedError(f"tracefs could not be mounted: {os.strerror(err)}")
        return where

    def close(self) -> None:
        if self._ours:
            _libc.umount2(self._ours.encode(), MNT_DETACH)
            try:
                os.rmdir(self._ours)
            except OSError:
                pass
            self._ours = ""


def remove_stale_mounts(mounts: str = "") -> list[str]:
    """Unmount private tracefs mounts of sockdoctor processes that no longer exist."""
    removed = []
    try:
        with open(mounts or f"{procfs.PROC}/self/mounts") as f:
            points = [line.split()[1] for line in f if PRIVATE_MOUNT in line]
    except OSError:
        return removed
    for where in points:
        m = re.search(rf"{PRIVATE_MOUNT}(\d+)-", where)
        if m and not procfs.pid_exists(int(m.group(1))):
            remove_stale_instances(where)
            if _libc.umount2(where.encode(), MNT_DETACH) == 0:
                with contextlib.suppress(OSError):
                    os.rmdir(where)
                removed.append(where)
    return removed


# --- the private instance -------------------------------------------------------

class Instance:
    """instances/sockdoctor-PID-N with inet_sock_set_state enabled for TCP only."""

    _serial = 0

    def __init__(self, root: str, buffer_kb: int = 2048) -> None:
        self.root = root
        if not os.access(root, os.R_OK | os.X_OK) or (
                os.path.isdir(f"{root}/instances")
                and not os.access(f"{root}/instances", os.W_OK | os.X_OK)):
            raise PermissionDeniedError("tracing needs root: only root may read tracefs and "
                                        "create a tracing instance")
        if not os.path.isdir(f"{root}/events/{SYSTEM}/{EVENT}"):
            raise UnsupportedError(f"this kernel has no {SYSTEM}:{EVENT} tracepoint "
                                   "(it appeared in Linux 4.16)")
        if not os.path.isdir(f"{root}/instances"):
            raise UnsupportedError("this kernel's tracefs has no instances/ (Linux >= 3.14 "
                                   "has them): a private ring buffer cannot be made")
        remove_stale_instances(root)
        Instance._serial += 1
        self.name = f"{INSTANCE_PREFIX}{os.getpid()}-{Instance._serial}"
        self.path = f"{root}/instances/{self.name}"
        try:
            os.mkdir(self.path)
        except PermissionError as exc:
            raise PermissionDeniedError("creating a tracing instance needs root") from exc
        try:
            self._configure(buffer_kb)
        except BaseException:
            self.close()
            raise

    def _configure(self, buffer_kb: int) -> None:
        self.write("tracing_on", "0")
        self.write("buffer_size_kb", str(buffer_kb))
        self.write("trace_clock", "mono")  # one clock for all CPUs, = time.monotonic()
        self.write("options/overwrite", "0")  # a full buffer drops (and counts) new events
        if os.path.exists(f"{self.path}/buffer_percent"):
            self.write("buffer_percent", "0")  # poll() wakes as soon as there is data
        event = f"events/{SYSTEM}/{EVENT}"
        self.write(f"{event}/filter", f"protocol == {IPPROTO_TCP}")
        self.write(f"{event}/enable", "1")
        self.write("tracing_on", "1")

    def write(self, name: str, value: str) -> None:
        with open(f"{self.path}/{name}", "w") as f:
            f.write(value)

    def read(self, name: str) -> str:
        with open(f"{self.path}/{name}") as f:
            return f.read()

    def cpus(self) -> list[int]:
        return sorted(int(name[3:]) for name in os.listdir(f"{self.path}/per_cpu")
                      if name.startswith("cpu") and name[3:].isdigit())

    def lost(self) -> dict[int, int]:
        """Events the kernel could not keep, per CPU, since the instance was made."""
        out = {}
        for cpu in self.cpus():
            text = self.read(f"per_cpu/cpu{cpu}/stats")
            out[cpu] = sum(int(v) for k, v in _STATS.findall(text) if k != "entries")
        return out

    def close(self) -> None:
        """Disable the event and remove the instance (also after a partial set-up)."""
        if not os.path.isdir(self.path):
            return
        for name, value in (("tracing_on", "0"), (f"events/{SYSTEM}/{EVENT}/enable", "0")):
            try:
                self.write(name, value)
            except OSError:
                pass
        for _ in range(50):  # EBUSY while a reader still has a pipe open
            try:
                os.rmdir(self.path)
                return
            except FileNotFoundError:
                return
            except OSError as exc:
                if exc.errno != errno.EBUSY:
                    raise
                time.sleep(0.02)


def remove_stale_instances(root: str) -> list[str]:
    """Remove instances left by sockdoctor processes that no longer exist."""
    removed = []
    try:
        names = os.listdir(f"{root}/instances")
    except OSError:
        return removed
    for name in names:
        m = re.fullmatch(rf"{INSTANCE_PREFIX}(\d+)-\d+", name)
        if m and not procfs.pid_exists(int(m.group(1))):
            try:
                os.rmdir(f"{root}/instances/{name}")
                removed.append(name)
            except OSError:
                pass
    return removed


class Reader:
    """Reads every CPU's trace_pipe_raw of an instance without blocking."""

    def __init__(self, instance: Instance) -> None:
        self.instance = instance
        root = instance.root
        with open(f"{root}/events/{SYSTEM}/{EVENT}/format") as f:
            self.event = EventLayout(f.read())
        self.page = page_layout(root)
        self.page_size = _subbuf_size(instance)
        self._fds: dict[int, int] = {}
        self._held: list[StateChange] = []
        try:
            for cpu in instance.cpus():
                path = f"{instance.path}/per_cpu/cpu{cpu}/trace_pipe_raw"
                self._fds[os.open(path, os.O_RDONLY | os.O_NONBLOCK)] = cpu
        except BaseException:
            self.close()
            raise
        self._poll = select.poll()
        for fd in self._fds:
            self._poll.register(fd, select.POLLIN)

    def wait(self, timeout_s: float) -> None:
        """Sleep until some CPU has data, or the timeout."""
        self._poll.poll(max(0, int(timeout_s * 1000)))

    def read(self, everything: bool = False) -> list[StateChange]:
        """The events waiting in the buffers, oldest first, all CPUs merged.

        The CPUs' buffers are read one after the other, so the last one read
        may already hold events newer than some the first one will only get
        next time: events after the moment the reading began (less a small
        margin for events still being written) are held back for the next
        read, so that every read is complete and in order. `everything`
        returns the held-back ones too (at the end of a trace).
        """
        watermark = time.monotonic_ns() - HOLD_BACK_NS
        out: list[StateChange] = self._held
        self._held = []
        for fd, cpu in self._fds.items():
            while True:
                try:
                    page = os.read(fd, self.page_size)
                except BlockingIOError:
                    break
                except OSError as exc:
                    if exc.errno in (errno.EAGAIN, errno.EINTR):
                        break
                    raise
                if not page:
                    break
                self._decode(page, cpu, out)
        out.sort(key=lambda ev: ev.ts_ns)
        if not everything:
            cut = bisect.bisect_right([ev.ts_ns for ev in out], watermark)
            out, self._held = out[:cut], out[cut:]
        return out

    def _decode(self, page: bytes, cpu: int, out: list[StateChange]) -> None:
        event = self.event
        unpack, wanted_id, size = event.struct.unpack_from, event.event_id, event.size
        (i_type, i_flags, i_pid, i_sk, i_old, i_new, i_sport, i_dport, i_family, i_saddr,
         i_daddr, i_saddr6, i_daddr6) = (event.order.index(name) for name in event.WANTED)
        append = out.append
        for ts, payload in iter_page(page, self.page):
            if len(payload) < size:
                continue
            f = unpack(payload)
            if f[i_type] != wanted_id:
                continue
            v6 = f[i_family] == 10
            append(StateChange(
                ts, cpu, f[i_pid], bool(f[i_flags] & IRQ_FLAGS), f[i_sk], f[i_old], f[i_new],
                f[i_family], f[i_sport], f[i_dport], f[i_saddr6] if v6 else f[i_saddr],
                f[i_daddr6] if v6 else f[i_daddr]))

    def close(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds.clear()


def _subbuf_size(instance: Instance) -> int:
    try:
        return int(instance.read("buffer_subbuf_size_kb")) * 1024
    except (OSError, ValueError):
        return os.sysconf("SC_PAGE_SIZE")


class Session:
    """Mount (if needed) + instance + reader, closed together, in reverse order."""

    def __init__(self, buffer_kb: int = 2048) -> None:
        self.mount = Mount()
        try:
            self.instance = Instance(self.mount.path or "", buffer_kb)
            try:
                self.reader = Reader(self.instance)
            except BaseException:
                self.instance.close()
                raise
        except BaseException:
            self.mount.close()
            raise

    def lost(self) -> int:
        return sum(self.instance.lost().values())

    def close(self) -> None:
        self.reader.close()
        self.instance.close()
        self.mount.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
