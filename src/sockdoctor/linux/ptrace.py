"""Run system calls inside another process, as gdb would: the `close` method.

What `gdb -p PID -batch -ex 'print (int)close(FD)'` does, without gdb:
PTRACE_SEIZE + PTRACE_INTERRUPT one thread (the others keep running), save
its registers, point it at a `syscall` instruction that already exists in
its memory, single-step that instruction once per injected call, restore
the registers exactly and detach.

Why single-step and not PTRACE_SYSCALL: a single-step over `syscall` ends in
a SIGTRAP signal-delivery-stop, inside the kernel's signal handling. The
registers we restore there (rax = -ERESTARTSYS, orig_rax = the interrupted
call) then go through the kernel's normal restart logic, so an accept() or
recv() the thread was blocked in is restarted as if nothing happened. A
restore at a syscall-exit-stop would hand -512 to the program instead.

What the stopped thread sees afterwards (CloseResult.after): a blocked call
that returned -ERESTART* restarts; epoll_wait and a few others return EINTR
(the kernel's rule for any stop, gdb's attach included); a thread stopped
inside an rseq critical section resumes at its abort handler. Signals that
arrive while we hold the thread are handed back when we detach.

Why a placeholder and not a bare close(fd): POSIX hands out the lowest free
descriptor number, so after close(fd) the program's next open()/accept()
gets that number while the program still believes it is the old connection;
its next write on that object lands in the new file or in another client's
socket. So by default the descriptor is not freed but swapped: the stopped
thread runs socket() (an unconnected unix socket named "sockdoctor-closed:..."),
dup3(placeholder, fd) and close(placeholder), and puts the placeholder into
the epoll sets that watched the old socket. The kernel socket is released,
the number stays taken until the program closes it itself, its reads and
writes on it fail (ENOTCONN) as on any dead connection, and an event loop is
told it hung up (see _swap). A bare close stays available as
an explicit choice (`placeholder=False`) for when the descriptor itself must
be freed (a process at its descriptor limit).

The session runs on a thread of its own: when that thread ends the kernel
detaches whatever it still traces, so a target is never left stopped.
The fd is checked (as the stopped thread sees it) just before each injected
call; in a multithreaded program another thread could still swap the fd in
the microseconds between that check and the call. x86_64 only; other
architectures raise Unsupported.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import signal
import struct
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

from ..errors import SockdoctorError
from . import procfs
from .pidfd import FdGone, IdentityChanged, NotPermitted, ProcessGone, Unsupported
from .procfs import SYSCALL_NAMES

__all__ = [
    "CloseResult",
    "FdGone",
    "IdentityChanged",
    "NotPermitted",
    "ProcessGone",
    "TraceeUnresponsive",
    "Unsupported",
    "inject_close",
    "inject_close_many",
    "while_frozen",
]

T = TypeVar("T")

PTRACE_SINGLESTEP = 9
PTRACE_GETREGS = 12
PTRACE_SETREGS = 13
PTRACE_DETACH = 17
PTRACE_GETSIGINFO = 0x4202
PTRACE_SETSIGINFO = 0x4203
PTRACE_SEIZE = 0x4206
PTRACE_INTERRUPT = 0x4207
PTRACE_GET_RSEQ_CONFIGURATION = 0x420F
PTRACE_EVENT_STOP = 128
WALL = 0x40000000  # __WALL: wait for threads too
SIGINFO_SIZE = 128

SYS_CLOSE = 3
SYS_MMAP = 9
SYS_MUNMAP = 11
SYS_SOCKET = 41
SYS_BIND = 49
SYS_EPOLL_CTL = 233
SYS_SHUTDOWN = 48
SYS_TGKILL = 234
SYS_DUP3 = 292
SHUT_RDWR = 2
AF_UNIX, SOCK_SEQPACKET = 1, 5
EPOLL_CTL_ADD = 1
PROT_RW, MAP_PRIVATE_ANON = 3, 0x22
PAGE = 4096
PLACEHOLDER_NAME = "sockdoctor-closed"  # abstract unix name prefix: `ss -xp | grep` finds them
O_CLOEXEC = 0o2000000  # also SOCK_CLOEXEC on x86_64
SYSCALL_INSN = b"\x0f\x05"
USER_CS_64 = 0x33  # a 64-bit task's code segment; compat (32-bit) tasks have 0x23

# -errno values a blocked syscall leaves in rax when a stop interrupts it.
ERESTARTSYS, ERESTARTNOINTR, ERESTARTNOHAND, ERESTART_RESTARTBLOCK = 512, 513, 514, 516

_REG_NAMES = ("r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8", "rax", "rcx",
              "rdx", "rsi", "rdi", "orig_rax", "rip", "cs", "eflags", "rsp", "ss", "fs_base",
              "gs_base", "ds", "es", "fs", "gs")


class UserRegs(ctypes.Structure):
    """struct user_regs_struct of x86_64 (sys/user.h)."""

    _fields_ = [(name, ctypes.c_uint64) for name in _REG_NAMES]

    def copy(self) -> UserRegs:
        return UserRegs.from_buffer_copy(self)


class RseqConfig(ctypes.Structure):
    """struct ptrace_rseq_configuration (linux/ptrace.h)."""

    _fields_ = [("abi_pointer", ctypes.c_uint64), ("abi_size", ctypes.c_uint32),
                ("signature", ctypes.c_uint32), ("flags", ctypes.c_uint32),
                ("pad", ctypes.c_uint32)]


class TraceeUnresponsive(SockdoctorError):
    """The thread did not stop in time (uninterruptible sleep?); nothing was done."""


@dataclass(frozen=True)
class CloseResult:
    """What the injected calls returned (0 or -errno) and what the thread will see."""

    pid: int
    tid: int
    fd: int
    inode: int
    shutdown_rc: int | None  # None: shutdown was not asked for
    close_rc: int  # 0, or -errno of close() (bare) / socket() or dup3() (placeholder)
    interrupted: str  # the system call the thread was in, "" when it was running
    after: str  # what that call does once we detach
    placeholder: bool = False  # the number now holds an unconnected socket, not freed
    rewatched: int = 0  # epoll sets the placeholder was put into in the old socket's place


_libc = ctypes.CDLL(None, use_errno=True)
_ptrace_fn = _libc.ptrace
_ptrace_fn.restype = ctypes.c_long
_ptrace_fn.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long


def _ptrace(request: int, tid: int, addr: int = 0, data: int = 0) -> None:
    if _ptrace_fn(request, tid, addr, data) == -1:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def signed(value: int) -> int:
    """A register as the signed 64-bit number the kernel meant."""
    return value - (1 << 64) if value >= 1 << 63 else value


def describe_interrupted(orig_rax: int, rax: int) -> tuple[str, str]:
    """(syscall name, what it does after we detach) from the saved registers."""
    nr, ret = signed(orig_rax), signed(rax)
    if nr < 0:
        return "", "continues"
    name = SYSCALL_NAMES.get(nr, f"syscall {nr}")
    if -ret in (ERESTARTSYS, ERESTARTNOINTR, ERESTARTNOHAND, ERESTART_RESTARTBLOCK):
        return name, "restarts"
    if ret == -errno.EINTR:
        return name, "fails with EINTR (the program must retry)"
    return name, "returns its result"


# --- the process as /proc shows it ---

def _read_text(path: str) -> str:
    with open(path) as fh:
        return fh.read()


def _task_state(pid: int, tid: int) -> str:
    stat = _read_text(f"{procfs.PROC}/{pid}/task/{tid}/stat")
    return stat[stat.rfind(")") + 2]


def pick_thread(pid: int, tid: int | None = None) -> int:
    """The thread to stop: `tid` if given, else the main thread unless it has exited."""
    if tid is None:
        try:
            if _task_state(pid, pid) not in "ZX":
                return pid
        except FileNotFoundError:
            pass  # no such process: said below
        except ProcessLookupError as exc:
            raise ProcessGone(f"process {pid} does not exist (any more)") from exc
    try:
        tids = sorted(int(t) for t in os.listdir(f"{procfs.PROC}/{pid}/task"))
    except (FileNotFoundError, ProcessLookupError) as exc:
        raise ProcessGone(f"process {pid} does not exist (any more)") from exc
    if tid is not None:
        if tid not in tids:
            raise ProcessGone(f"process {pid} has no thread {tid}")
        return tid
    for candidate in tids:  # the main thread called pthread_exit: take a live one
        try:
            if _task_state(pid, candidate) not in "ZX":
                return candidate
        except OSError:
            continue
    raise ProcessGone(f"process {pid} has exited")


def _tracer_of(pid: int) -> int:
    try:
        for line in _read_text(f"{procfs.PROC}/{pid}/status").splitlines():
            if line.startswith("TracerPid:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _exec_mappings(pid: int) -> list[tuple[int, int]]:
    """Executable mappings, the vdso first (small, always there, has `syscall`)."""
    found: list[tuple[int, int, bool]] = []
    for line in _read_text(f"{procfs.PROC}/{pid}/maps").splitlines():
        fields = line.split()
        if len(fields) < 2 or "x" not in fields[1]:
            continue
        start, end = (int(x, 16) for x in fields[0].split("-"))
        found.append((start, end, fields[-1] == "[vdso]"))
    found.sort(key=lambda m: not m[2])
    return [(start, end) for start, end, _ in found]


# --- one stopped thread ---

class _Tracee:
    """One seized thread: stop it, run system calls in it, put everything back."""

    def __init__(self, pid: int, tid: int) -> None:
        self.pid, self.tid = pid, tid
        self.saved = UserRegs()
        self.modified = False
        self.attached = False
        self.at_signal_stop = False
        self.pending: list[tuple[int, bytes]] = []  # signals to hand back on detach
        self.syscall_addr = 0
        self.resume_rip = 0  # where the thread goes on once we restore it
        self.page = 0  # a page mapped in the tracee for the arguments of injected calls

    def attach(self, timeout: float) -> None:
        try:
            _ptrace(PTRACE_SEIZE, self.tid)
        except OSError as exc:
            raise self._seize_error(exc) from exc
        self.attached = True
        try:
            _ptrace(PTRACE_INTERRUPT, self.tid)
        except OSError as exc:
            raise self._gone(exc) from exc
        sig, event = self._wait(time.monotonic() + timeout)
        if event == 0:  # a signal was being delivered: keep it for later
            self._keep_signal(sig)
        self._get_regs(self.saved)
        if self.saved.cs != USER_CS_64:
            raise Unsupported(f"process {self.pid} is a 32-bit program: method `close` "
                              "supports 64-bit programs only")
        self.resume_rip = self._rseq_abort_ip() or self.saved.rip

    def _rseq_abort_ip(self) -> int:
        """The abort handler if the thread was stopped inside an rseq critical section.

        Once the thread has run our syscall elsewhere, the kernel forgets the
        critical section (it clears rseq->rseq_cs), so returning into its
        middle would break its atomicity: resume at the abort handler instead,
        as the kernel does after a preemption. 0 when not in one.
        """
        conf = RseqConfig()
        try:
            _ptrace(PTRACE_GET_RSEQ_CONFIGURATION, self.tid, ctypes.sizeof(conf),
                    ctypes.addressof(conf))
        except OSError:
            return 0  # kernel < 5.13: no way to tell
        if not conf.abi_pointer:
            return 0
        try:
            cs_ptr = int.from_bytes(self._read_mem(conf.abi_pointer + 8, 8), "little")
            raw = self._read_mem(cs_ptr, 32) if cs_ptr else b""
        except OSError:
            return 0  # unreadable descriptor: the kernel would kill the thread anyway
        if len(raw) < 32:
            return 0
        start, length, abort = (int.from_bytes(raw[i:i + 8], "little") for i in (8, 16, 24))
        return abort if start <= self.saved.rip < start + length else 0

    def _seize_error(self, exc: OSError) -> SockdoctorError | OSError:
        if exc.errno == errno.ESRCH:
            return ProcessGone(f"process {self.pid} does not exist (any more)")
        if exc.errno == errno.EPERM:
            tracer = _tracer_of(self.pid)
            why = (f"it is already being traced by process {tracer} (a debugger?)" if tracer
                   else "needs root or the same user, and ptrace rights")
            return NotPermitted(f"cannot attach to process {self.pid}: {why}")
        return exc

    def _gone(self, exc: OSError) -> SockdoctorError | OSError:
        if exc.errno == errno.ESRCH:
            return ProcessGone(f"process {self.pid} exited during the operation")
        return exc

    def _wait(self, deadline: float | None = None) -> tuple[int, int]:
        """Next stop as (signal, ptrace event); ProcessGone if the thread ended.

        Peeks with WNOWAIT first and consumes only stops: an exit status is
        left for the real parent (which may be our own process).
        """
        peek = os.WEXITED | os.WSTOPPED | os.WNOWAIT | WALL
        pause = 0.0  # a stop usually comes within microseconds: yield first
        while True:
            try:
                info = os.waitid(os.P_PID, self.tid,
                                 peek | (os.WNOHANG if deadline is not None else 0))
            except ChildProcessError as exc:
                raise ProcessGone(f"process {self.pid} exited during the operation") from exc
            if info is None:
                if time.monotonic() > deadline:  # type: ignore[operator]
                    raise TraceeUnresponsive(
                        f"thread {self.tid} of process {self.pid} did not stop (uninterruptible "
                        "sleep?): nothing was done")
                time.sleep(pause)
                pause = min(max(pause * 2, 0.00005), 0.01)
                continue
            if info.si_code not in (os.CLD_TRAPPED, os.CLD_STOPPED):
                self.attached = False  # exited or killed: nothing left to detach from
                raise ProcessGone(f"process {self.pid} exited during the operation")
            os.waitid(os.P_PID, self.tid, os.WSTOPPED | WALL)  # consume this stop
            sig, event = info.si_status & 0xFF, info.si_status >> 8
            self.at_signal_stop = event == 0
            return sig, event

    def _keep_signal(self, sig: int) -> None:
        info = ctypes.create_string_buffer(SIGINFO_SIZE)
        try:
            _ptrace(PTRACE_GETSIGINFO, self.tid, 0, ctypes.addressof(info))
        except OSError:
            pass
        self.pending.append((sig, info.raw))

    def _get_regs(self, regs: UserRegs) -> None:
        try:
            _ptrace(PTRACE_GETREGS, self.tid, 0, ctypes.addressof(regs))
        except OSError as exc:
            raise self._gone(exc) from exc

    def _set_regs(self, regs: UserRegs) -> None:
        try:
            _ptrace(PTRACE_SETREGS, self.tid, 0, ctypes.addressof(regs))
        except OSError as exc:
            raise self._gone(exc) from exc

    def _read_mem(self, addr: int, size: int) -> bytes:
        try:
            fd = os.open(f"{procfs.PROC}/{self.pid}/mem", os.O_RDONLY)
        except (ProcessLookupError, FileNotFoundError) as exc:
            raise ProcessGone(f"process {self.pid} exited during the operation") from exc
        try:
            return os.pread(fd, size, addr)
        finally:
            os.close(fd)

    def scratch(self, data: bytes) -> int:
        """`data` copied into a page of the tracee's that we mapped for it; its address."""
        if not self.page:
            addr = self.inject(SYS_MMAP, 0, PAGE, PROT_RW, MAP_PRIVATE_ANON, (1 << 64) - 1, 0)
            if addr < 0:
                raise OSError(-addr, os.strerror(-addr))
            self.page = addr
        fd = os.open(f"{procfs.PROC}/{self.pid}/mem", os.O_RDWR)
        try:
            os.pwrite(fd, data, self.page)
        finally:
            os.close(fd)
        return self.page

    def unmap_scratch(self) -> None:
        if self.page:
            self.inject(SYS_MUNMAP, self.page, PAGE)
            self.page = 0

    def find_syscall(self) -> int:
        """Address of a `syscall` instruction in the tracee's executable memory."""
        rip = self.saved.rip
        if signed(self.saved.orig_rax) >= 0 and self._read_mem(rip - 2, 2) == SYSCALL_INSN:
            return rip - 2  # the one the thread entered the kernel through
        try:
            mappings = _exec_mappings(self.pid)
        except (ProcessLookupError, FileNotFoundError) as exc:
            raise ProcessGone(f"process {self.pid} exited during the operation") from exc
        for start, end in mappings:
            for offset in range(start, end, 1 << 20):
                try:
                    chunk = self._read_mem(offset, min(end - offset, (1 << 20) + 1))
                except OSError:
                    break
                hit = chunk.find(SYSCALL_INSN)
                if hit >= 0:
                    return offset + hit
        raise RuntimeError(f"no syscall instruction found in process {self.pid}")

    def inject(self, nr: int, *args: int) -> int:
        """Run one system call in the thread; its return value (negative: -errno)."""
        if not self.syscall_addr:
            self.syscall_addr = self.find_syscall()
        addr = self.syscall_addr
        regs = self.saved.copy()
        regs.rip, regs.rax = addr, nr
        regs.orig_rax = (1 << 64) - 1  # -1: no syscall to restart from this stop
        for name, value in zip(("rdi", "rsi", "rdx", "r10", "r8", "r9"), args, strict=False):
            setattr(regs, name, value & ((1 << 64) - 1))
        self._set_regs(regs)
        self.modified = True
        now = UserRegs()
        for _ in range(1000):
            try:
                _ptrace(PTRACE_SINGLESTEP, self.tid)
            except OSError as exc:
                raise self._gone(exc) from exc
            sig, event = self._wait()
            self._get_regs(now)
            if event == 0 and sig == signal.SIGTRAP and now.rip == addr + 2:
                return signed(now.rax)
            if event == 0:
                self._keep_signal(sig)  # arrived meanwhile: deliver it after detach
        raise RuntimeError(f"injected syscall {nr} in thread {self.tid} never completed")

    def check_fd(self, fd: int, inode: int) -> None:
        """The fd, as the stopped thread sees it, still names the planned socket."""
        path = f"{procfs.PROC}/{self.pid}/task/{self.tid}/fd/{fd}"
        try:
            link = os.readlink(path)
        except (FileNotFoundError, ProcessLookupError) as exc:
            if not os.path.exists(f"{procfs.PROC}/{self.pid}/task/{self.tid}"):
                raise ProcessGone(f"process {self.pid} exited during the operation") from exc
            raise FdGone(f"process {self.pid} has no file descriptor {fd} (any more)") from exc
        if link != f"socket:[{inode}]":
            raise IdentityChanged(f"file descriptor {fd} of process {self.pid} now points at "
                                  f"{link}, not socket inode {inode}: left alone")

    def release(self) -> None:
        """Restore the registers and detach, handing back any signal we held."""
        if not self.attached:
            return
        try:
            if self.modified:
                regs = self.saved.copy()
                regs.rip = self.resume_rip
                _ptrace(PTRACE_SETREGS, self.tid, 0, ctypes.addressof(regs))
            sig = 0
            if self.pending and self.at_signal_stop:
                sig, info = self.pending.pop(0)
                buf = ctypes.create_string_buffer(info, SIGINFO_SIZE)
                try:
                    _ptrace(PTRACE_SETSIGINFO, self.tid, 0, ctypes.addressof(buf))
                except OSError:
                    pass  # the kernel makes a plain siginfo for it
            _ptrace(PTRACE_DETACH, self.tid, 0, sig)
        except OSError as exc:
            if exc.errno != errno.ESRCH:
                raise
        finally:
            self.attached = False
        for sig, _info in self.pending:
            _syscall(ctypes.c_long(SYS_TGKILL), ctypes.c_long(self.pid),
                     ctypes.c_long(self.tid), ctypes.c_long(sig))
        self.pending.clear()


# --- public API ---

def _require_x86_64() -> None:
    machine = platform.machine()
    if machine not in ("x86_64", "amd64") or ctypes.sizeof(ctypes.c_void_p) != 8:
        raise Unsupported(f"method `close` (syscall injection) supports x86_64 only, "
                          f"not {machine}")


def _close_one(tracee: _Tracee, fd: int, inode: int, shutdown_first: bool,
               placeholder: bool) -> CloseResult:
    tracee.check_fd(fd, inode)
    shutdown_rc = None
    if shutdown_first:
        shutdown_rc = tracee.inject(SYS_SHUTDOWN, fd, SHUT_RDWR)
        tracee.check_fd(fd, inode)
    rewatched = 0
    if placeholder:
        close_rc, rewatched = _swap(tracee, fd, inode)
    else:
        close_rc = tracee.inject(SYS_CLOSE, fd)
    if close_rc == -errno.EBADF:
        raise FdGone(f"file descriptor {fd} of process {tracee.pid} was closed meanwhile")
    name, after = describe_interrupted(tracee.saved.orig_rax, tracee.saved.rax)
    if tracee.resume_rip != tracee.saved.rip:
        after = "continues at its rseq abort handler (as after a preemption)"
    return CloseResult(tracee.pid, tracee.tid, fd, inode, shutdown_rc, close_rc, name, after,
                       placeholder, rewatched)


def _swap(tracee: _Tracee, fd: int, inode: int) -> tuple[int, int]:
    """Put a placeholder in place of `fd`: (0 or the -errno that stopped us, epoll sets).

    The placeholder is an unconnected unix seqpacket socket bound to the
    abstract name "sockdoctor-closed:PID:FD:INODE": recognisable (ss -xp,
    /proc/net/unix), not a TCP socket, so never taken for a leaked
    connection. Reads and writes on it fail with ENOTCONN (no SIGPIPE) and
    poll reports a hang-up, as on a dead connection. dup3()
    replaces the descriptor atomically (no moment where the number is free),
    releasing the program's reference to the old socket; FD_CLOEXEC is kept.
    The old socket's epoll registrations go with it, so the placeholder is
    put into the same epoll sets with the same events and data: an event
    loop hears of the hang-up and closes it as any dead connection, instead
    of keeping a ghost it will never look at.
    """
    watches = procfs.epoll_watches(tracee.pid, fd, inode)
    cloexec = O_CLOEXEC if _fd_flags(tracee.pid, fd) & O_CLOEXEC else 0
    spare = tracee.inject(SYS_SOCKET, AF_UNIX, SOCK_SEQPACKET | cloexec, 0)
    if spare < 0:
        return spare, 0  # e.g. -EMFILE: the process is at its descriptor limit
    try:
        name = f"\0{PLACEHOLDER_NAME}:{tracee.pid}:{fd}:{inode}".encode()
        addr = tracee.scratch(struct.pack("=H", AF_UNIX) + name)
        tracee.inject(SYS_BIND, spare, addr, 2 + len(name))  # a name is a courtesy
        tracee.check_fd(fd, inode)
        rc = tracee.inject(SYS_DUP3, spare, fd, cloexec)
    finally:
        tracee.inject(SYS_CLOSE, spare)
    if rc != fd:
        return rc, 0
    rewatched = 0
    for epfd, events, data in watches:
        event = tracee.scratch(struct.pack("=IQ", events, data))  # x86_64: packed
        rewatched += tracee.inject(SYS_EPOLL_CTL, epfd, EPOLL_CTL_ADD, fd, event) == 0
    return 0, rewatched


def _fd_flags(pid: int, fd: int) -> int:
    """The open flags of a descriptor (fdinfo's octal `flags:`), 0 if unreadable."""
    try:
        for line in _read_text(f"{procfs.PROC}/{pid}/fdinfo/{fd}").splitlines():
            if line.startswith("flags:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _session(pid: int, targets: list[tuple[int, int]], shutdown_first: bool, placeholder: bool,
             tid: int | None, timeout: float) -> list[CloseResult | SockdoctorError]:
    tracee = _Tracee(pid, pick_thread(pid, tid))
    results: list[CloseResult | SockdoctorError] = []
    try:
        tracee.attach(timeout)
        for fd, inode in targets:
            try:
                results.append(_close_one(tracee, fd, inode, shutdown_first, placeholder))
            except (FdGone, IdentityChanged) as exc:
                results.append(exc)
    finally:
        try:
            if tracee.attached:
                tracee.unmap_scratch()
        finally:
            tracee.release()
    return results


def _as_tracer_thread(fn: Callable[[], list]) -> list:
    """Run a ptrace session in a thread of its own.

    The kernel detaches every tracee of a thread that exits, so whatever
    happens (a timeout, a bug, an exception), the target is let go when the
    thread ends and never stays stopped behind us.
    """
    box: dict[str, object] = {}

    def run() -> None:
        try:
            box["result"] = fn()
        except BaseException as exc:
            box["error"] = exc

    worker = threading.Thread(target=run, name="sockdoctor-ptrace", daemon=True)
    worker.start()
    try:
        worker.join()
    except BaseException:
        worker.join()  # e.g. Ctrl-C: let it put the registers back before we go
        raise
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["result"]  # type: ignore[return-value]


def _threads(pid: int) -> set[int]:
    try:
        return {int(t) for t in os.listdir(f"{procfs.PROC}/{pid}/task")}
    except (FileNotFoundError, ProcessLookupError) as exc:
        raise ProcessGone(f"process {pid} does not exist (any more)") from exc


def _freeze_all(pids: Iterable[int], timeout: float) -> list[_Tracee]:
    """Every thread of every process stopped (threads made meanwhile too)."""
    held: dict[int, _Tracee] = {}
    try:
        for pid in pids:
            while True:  # a thread still running may make another: list again
                new = _threads(pid) - held.keys()
                if not new:
                    break
                for tid in sorted(new):
                    tracee = held[tid] = _Tracee(pid, tid)
                    try:
                        tracee.attach(timeout)
                    except ProcessGone:
                        if not os.path.exists(f"{procfs.PROC}/{pid}"):
                            raise
                        tracee.attached = False  # that thread ended: nothing to hold
    except BaseException:
        for tracee in held.values():
            tracee.release()
        raise
    return list(held.values())


def while_frozen(pids: Iterable[int], fn: Callable[[], T], *, timeout: float = 5.0) -> T:
    """fn() while every thread of `pids` is held in a ptrace stop, as a debugger's attach.

    For the moment of fn() none of those programs runs a single instruction,
    so none can accept(), close or read a socket meanwhile. Registers are not
    touched; each thread resumes where it was (a blocked call restarts,
    epoll_wait and a few others return EINTR, as after any stop). Raises
    ProcessGone, NotPermitted, Unsupported or TraceeUnresponsive (then fn is
    not called).
    """
    _require_x86_64()
    todo = sorted(set(pids))
    if os.getpid() in todo:
        raise NotPermitted("cannot stop sockdoctor's own process")

    def session() -> list[T]:
        tracees = _freeze_all(todo, timeout)
        try:
            return [fn()]
        finally:
            for tracee in tracees:
                tracee.release()
    return _as_tracer_thread(session)[0]


def inject_close_many(pid: int, targets: Iterable[tuple[int, int]], *,
                      shutdown_first: bool = True, placeholder: bool = True,
                      tid: int | None = None, timeout: float = 5.0,
                      ) -> list[CloseResult | SockdoctorError]:
    """Method `close` for many (fd, inode) of one process, in one stop of one thread.

    placeholder: swap each descriptor for an unconnected socket instead of
    freeing its number (see the module docstring); False is a bare close().

    Each target gets a CloseResult, or the FdGone / IdentityChanged error that
    made us leave it alone. Raises ProcessGone, NotPermitted, Unsupported or
    TraceeUnresponsive for the process as a whole.
    """
    _require_x86_64()
    if pid == os.getpid():
        raise NotPermitted("cannot inject system calls into sockdoctor's own process")
    todo = list(targets)
    return _as_tracer_thread(lambda: _session(pid, todo, shutdown_first, placeholder, tid,
                                              timeout))


def inject_close(pid: int, fd: int, inode: int, *, shutdown_first: bool = True,
                 placeholder: bool = True, tid: int | None = None,
                 timeout: float = 5.0) -> CloseResult:
    """Method `close`: shutdown(fd, SHUT_RDWR), then the socket released, inside `pid`.

    Only thread `tid` (default: the main thread) is stopped, for the time of
    the calls. The fd must still name socket `inode`, as the stopped thread
    sees it, or nothing is done (IdentityChanged). With `placeholder` (the
    default) the number stays taken by an unconnected socket; with
    placeholder=False it is freed and the program may reuse it unknowingly.
    """
    (result,) = inject_close_many(pid, [(fd, inode)], shutdown_first=shutdown_first,
                                  placeholder=placeholder, tid=tid, timeout=timeout)
    if isinstance(result, SockdoctorError):
        raise result
    return result
