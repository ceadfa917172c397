"""The pure parts of the `close` and `fin` primitives: no root, no other process."""

from __future__ import annotations

import ctypes
import errno
import os

import pytest

from sockdoctor import errors
from sockdoctor.linux import pidfd, ptrace

MINUS = (1 << 64)  # a negative number as a 64-bit register holds it


@pytest.mark.parametrize(("orig_rax", "rax", "expected"), [
    (MINUS - 1, 0, ("", "continues")),  # interrupted in user space
    (43, MINUS - ptrace.ERESTARTSYS, ("accept", "restarts")),
    (23, MINUS - ptrace.ERESTARTNOHAND, ("select", "restarts")),
    (7, MINUS - ptrace.ERESTART_RESTARTBLOCK, ("poll", "restarts")),
    (232, MINUS - errno.EINTR, ("epoll_wait", "fails with EINTR (the program must retry)")),
    (0, 5, ("read", "returns its result")),
    (999, MINUS - ptrace.ERESTARTNOINTR, ("syscall 999", "restarts")),
])
def test_describe_interrupted(orig_rax: int, rax: int, expected: tuple[str, str]) -> None:
    assert ptrace.describe_interrupted(orig_rax, rax) == expected


def test_signed() -> None:
    assert ptrace.signed(MINUS - 512) == -512
    assert ptrace.signed(3) == 3
    assert ptrace.signed((1 << 63) - 1) == (1 << 63) - 1


def test_register_layout_matches_sys_user_h() -> None:
    assert ctypes.sizeof(ptrace.UserRegs) == 27 * 8
    assert ptrace.UserRegs.orig_rax.offset == 15 * 8
    assert ptrace.UserRegs.rip.offset == 16 * 8
    assert ptrace.UserRegs.cs.offset == 17 * 8
    regs = ptrace.UserRegs(rax=1, rip=2)
    twin = regs.copy()
    twin.rax = 7
    assert (regs.rax, twin.rax, twin.rip) == (1, 7, 2)


def test_other_architectures_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ptrace.platform, "machine", lambda: "aarch64")
    with pytest.raises(ptrace.Unsupported, match="x86_64 only") as caught:
        ptrace.inject_close(1, 3, 4)
    assert caught.value.exit_code == errors.EXIT_UNSUPPORTED


def test_own_process_is_refused() -> None:
    with pytest.raises(ptrace.NotPermitted, match="own process"):
        ptrace.inject_close(os.getpid(), 0, 1)


def test_pick_thread() -> None:
    me = os.getpid()
    assert ptrace.pick_thread(me) == me
    assert ptrace.pick_thread(me, me) == me
    with pytest.raises(ptrace.ProcessGone, match="no thread"):
        ptrace.pick_thread(me, 1)
    with pytest.raises(ptrace.ProcessGone):
        ptrace.pick_thread(_unused_pid())


def _unused_pid() -> int:
    with open("/proc/sys/kernel/pid_max") as fh:
        return int(fh.read()) + 1


def test_vdso_is_searched_first() -> None:
    with open("/proc/self/maps") as fh:
        vdso = next((line for line in fh if line.rstrip().endswith("[vdso]")), None)
    if vdso is None:
        pytest.skip("no vdso mapped (booted with vdso=0)")
    start = int(vdso.split("-")[0], 16)
    mappings = ptrace._exec_mappings(os.getpid())
    assert mappings[0][0] == start
    assert len(mappings) > 1  # the interpreter and libc follow


def test_stop_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ptrace.os, "waitid", lambda *args: None)
    tracee = ptrace._Tracee(1, 1)
    with pytest.raises(ptrace.TraceeUnresponsive) as caught:
        tracee._wait(deadline=0.0)
    assert isinstance(caught.value, errors.SockdoctorError)


@pytest.mark.parametrize(("code", "cls", "exit_code"), [
    (errno.ESRCH, pidfd.ProcessGone, errors.EXIT_NOT_FOUND),
    (errno.EINVAL, pidfd.ProcessGone, errors.EXIT_NOT_FOUND),
    (errno.EPERM, pidfd.NotPermitted, errors.EXIT_PERMISSION),
    (errno.ENOSYS, pidfd.Unsupported, errors.EXIT_UNSUPPORTED),
])
def test_pidfd_errors_map_to_user_errors(code: int, cls: type, exit_code: int) -> None:
    mapped = pidfd._kernel_error(OSError(code, os.strerror(code)), 42, "borrow fd 3")
    assert type(mapped) is cls
    assert mapped.exit_code == exit_code  # type: ignore[union-attr]


def test_pidfd_other_errors_stay_internal() -> None:
    exc = OSError(errno.EMFILE, "too many open files")
    assert pidfd._kernel_error(exc, 42, "x") is exc


def test_error_family() -> None:
    assert issubclass(pidfd.FdGone, errors.NotFoundError)
    assert issubclass(pidfd.IdentityChanged, errors.SockdoctorError)
    assert issubclass(pidfd.ListenerRefused, errors.UsageError)
    assert ptrace.FdGone is pidfd.FdGone  # one family for both methods
