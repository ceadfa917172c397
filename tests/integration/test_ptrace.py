"""Method `close` on real sockets: shutdown() and a placeholder injected with ptrace.

The server leaks half-closed connections (CLOSE_WAIT) while its main thread
sits in accept() and a worker thread in epoll answers "ping". On request it
starts a thread blocked in recv/select/poll/epoll on a socketpair, to check
that a call interrupted by our stop carries on correctly after we detach.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
from pathlib import Path

import leaky
import pytest

from conftest import Remote, Script
from sockdoctor.lab.netlab import SERVER_V4, Lab
from sockdoctor.linux import ptrace
from sockdoctor.model import TcpState

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.uname().machine != "x86_64", reason="syscall injection: x86_64 only"),
]
PORT = 7200
ACCEPT_CALLS = ("43", "288")  # accept, accept4 (x86_64)

SERVER = f"""
import signal, threading
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("{SERVER_V4}", {PORT}))
srv.listen(64)
conns, keep, pairs = {{}}, [], {{}}
ep = select.epoll()
signal.signal(signal.SIGUSR1, lambda *_: emit({{"usr1": True}}))

{leaky.SERVE}
def blocker(kind, a):
    emit({{"blocker": kind, "tid": threading.get_native_id()}})
    try:
        if kind == "select":
            select.select([a], [], [])
        elif kind == "poll":
            p = select.poll()
            p.register(a, select.POLLIN)
            p.poll(60000)
        elif kind == "epoll":
            e = select.epoll()
            e.register(a, select.EPOLLIN)
            e.poll()
        emit({{"woke": kind, "data": a.recv(10).decode()}})
    except Exception as exc:
        emit({{"error": repr(exc)}})

def commands():
    while True:
        cmd = json.loads(wait())
        if cmd["op"] == "block":
            a, b = socket.socketpair()
            pairs[cmd["kind"]] = (a, b)
            threading.Thread(target=blocker, args=(cmd["kind"], a), daemon=True).start()
        elif cmd["op"] == "wake":
            pairs[cmd["kind"]][1].send(b"x")

threading.Thread(target=serve, daemon=True).start()
threading.Thread(target=commands, daemon=True).start()
emit({{"ready": True}})
while True:
    c, peer = srv.accept()
    keep.append(c)
    conns[c.fileno()] = c
    ep.register(c.fileno(), select.EPOLLIN)
    emit({{"fd": c.fileno(), "inode": os.fstat(c.fileno()).st_ino}})
"""








def syscall_of(pid: int, tid: int) -> str:
    with open(f"/proc/{pid}/task/{tid}/syscall") as fh:
        return fh.read().split()[0]


@pytest.fixture
def server(lab: Lab) -> Script:
    return leaky.start(lab, SERVER)






def fd_link(pid: int, fd: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/fd/{fd}")
    except FileNotFoundError:
        return None


def assert_freed(lab: Lab, server: Script, peer: socket.socket, conn: dict) -> None:
    """The kernel socket is gone; the number is held by another (placeholder) socket."""
    assert peer.recv(100) == b""  # our FIN reached the peer
    # LAST_ACK, then gone
    assert leaky.wait_until(lambda: leaky.state_of(lab, conn["inode"]) is None)
    link = fd_link(server.pid, conn["fd"])
    assert link is not None and link.startswith("socket:[")
    assert link != f"socket:[{conn['inode']}]"


def test_close_frees_close_wait_while_other_threads_run(
        lab: Lab, server: Script, monkeypatch: pytest.MonkeyPatch) -> None:
    healthy = leaky.connect(lab, PORT)
    server.read()
    peer, conn = leaky.open_close_wait(lab, server, PORT)
    assert leaky.wait_until(lambda: syscall_of(server.pid, server.pid) in ACCEPT_CALLS)
    answers: list[bytes] = []
    check_fd = ptrace._Tracee.check_fd

    def check_while_stopped(self: ptrace._Tracee, fd: int, inode: int) -> None:
        if not answers:  # main thread stopped: the epoll worker still answers
            healthy.sendall(b"ping")
            answers.append(healthy.recv(100))
        check_fd(self, fd, inode)

    monkeypatch.setattr(ptrace._Tracee, "check_fd", check_while_stopped)
    result = ptrace.inject_close(server.pid, conn["fd"], conn["inode"])

    assert answers == [b"pong"]
    assert (result.shutdown_rc, result.close_rc) == (0, 0)
    assert result.tid == server.pid
    assert result.interrupted in ("accept", "accept4")
    assert result.after == "restarts"
    assert_freed(lab, server, peer, conn)
    # the interrupted accept() returned the next client
    leaky.assert_serves(lab, server, PORT, {"fd", "inode"})
    healthy.close()
    peer.close()


@pytest.mark.parametrize(("kind", "after"), [
    ("recv", "restarts"),  # -ERESTARTSYS
    ("select", "restarts"),  # -ERESTARTNOHAND
    ("poll", "restarts"),  # -ERESTART_RESTARTBLOCK (poll with a timeout)
    ("epoll", "fails with EINTR (the program must retry)"),
])
def test_interrupted_blocking_call_carries_on(
        lab: Lab, server: Script, kind: str, after: str) -> None:
    peer, conn = leaky.open_close_wait(lab, server, PORT)
    server.send(json.dumps({"op": "block", "kind": kind}))
    tid = server.read()["tid"]
    assert leaky.wait_until(lambda: syscall_of(server.pid, tid) not in ("running", "-1"))

    result = ptrace.inject_close(server.pid, conn["fd"], conn["inode"], tid=tid)

    assert result.tid == tid
    assert result.close_rc == 0
    assert result.after == after
    if kind == "recv":
        assert result.interrupted == "recvfrom"
    server.send(json.dumps({"op": "wake", "kind": kind}))
    assert server.read() == {"woke": kind, "data": "x"}
    assert_freed(lab, server, peer, conn)
    leaky.assert_serves(lab, server, PORT, {"fd", "inode"})
    peer.close()


def test_stopped_process_stays_stopped(lab: Lab, server: Script) -> None:
    peer, conn = leaky.open_close_wait(lab, server, PORT)
    os.kill(server.pid, signal.SIGSTOP)
    try:
        assert leaky.wait_until(lambda: ptrace._task_state(server.pid, server.pid) == "T")

        result = ptrace.inject_close(server.pid, conn["fd"], conn["inode"])

        assert (result.shutdown_rc, result.close_rc) == (0, 0)
        assert_freed(lab, server, peer, conn)
        assert leaky.wait_until(lambda: ptrace._task_state(server.pid, server.pid) == "T")
    finally:
        os.kill(server.pid, signal.SIGCONT)
    leaky.assert_serves(lab, server, PORT, {"fd", "inode"})
    peer.close()


def test_wrong_inode_changes_nothing(lab: Lab, server: Script) -> None:
    peer, conn = leaky.open_close_wait(lab, server, PORT)

    with pytest.raises(ptrace.IdentityChanged):
        ptrace.inject_close(server.pid, conn["fd"], conn["inode"] + 1)

    assert leaky.state_of(lab, conn["inode"]) == TcpState.CLOSE_WAIT
    assert os.readlink(f"/proc/{server.pid}/fd/{conn['fd']}") == f"socket:[{conn['inode']}]"
    peer.setblocking(False)
    with pytest.raises(BlockingIOError):
        peer.recv(100)  # no FIN came
    leaky.assert_serves(lab, server, PORT, {"fd", "inode"})
    peer.close()


def test_missing_fd_process_and_thread(lab: Lab, server: Script) -> None:
    with pytest.raises(ptrace.FdGone):
        ptrace.inject_close(server.pid, 999, 1)
    leaky.assert_serves(lab, server, PORT, {"fd", "inode"})  # detached properly after the refusal
    with open("/proc/sys/kernel/pid_max") as fh:
        beyond = int(fh.read()) + 1
    with pytest.raises(ptrace.ProcessGone):
        ptrace.inject_close(beyond, 3, 1)
    with pytest.raises(ptrace.ProcessGone, match="no thread"):
        ptrace.inject_close(server.pid, 3, 1, tid=beyond)


def test_exited_process_is_gone(lab: Lab) -> None:
    child = lab.spawn(lab.server, ["true"])
    assert leaky.wait_until(lambda: ptrace._task_state(child.pid, child.pid) == "Z")
    with pytest.raises(ptrace.ProcessGone):
        ptrace.inject_close(child.pid, 0, 1)
    child.wait()


def test_signal_arriving_while_stopped_is_delivered_after(
        lab: Lab, server: Script, monkeypatch: pytest.MonkeyPatch) -> None:
    peer, conn = leaky.open_close_wait(lab, server, PORT)
    kept: list[int] = []
    check_fd, keep_signal = ptrace._Tracee.check_fd, ptrace._Tracee._keep_signal

    def check_and_signal(self: ptrace._Tracee, fd: int, inode: int) -> None:
        if not kept:
            _tgkill(self.pid, self.tid, signal.SIGUSR1)  # pending on the stopped thread
        check_fd(self, fd, inode)

    def record(self: ptrace._Tracee, sig: int) -> None:
        kept.append(sig)
        keep_signal(self, sig)

    monkeypatch.setattr(ptrace._Tracee, "check_fd", check_and_signal)
    monkeypatch.setattr(ptrace._Tracee, "_keep_signal", record)
    result = ptrace.inject_close(server.pid, conn["fd"], conn["inode"])

    assert kept == [signal.SIGUSR1]
    assert result.close_rc == 0
    assert server.read() == {"usr1": True}  # handed back on detach, handler ran
    assert_freed(lab, server, peer, conn)
    leaky.assert_serves(lab, server, PORT, {"fd", "inode"})
    peer.close()


def _tgkill(pid: int, tid: int, sig: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.syscall(ptrace.SYS_TGKILL, pid, tid, sig) == 0


@pytest.mark.parametrize("when", ["at the fd check", "in the shutdown step", "in the close step"])
def test_process_killed_during_the_operation(
        lab: Lab, server: Script, monkeypatch: pytest.MonkeyPatch, when: str) -> None:
    peer, conn = leaky.open_close_wait(lab, server, PORT)
    check_fd, real_ptrace = ptrace._Tracee.check_fd, ptrace._ptrace
    steps: list[int] = []

    def check_then_die(self: ptrace._Tracee, fd: int, inode: int) -> None:
        check_fd(self, fd, inode)
        if when == "at the fd check":
            os.kill(self.pid, signal.SIGKILL)

    def step_then_die(request: int, tid: int, addr: int = 0, data: int = 0) -> None:
        real_ptrace(request, tid, addr, data)
        if request == ptrace.PTRACE_SINGLESTEP:
            steps.append(tid)
            if when == ("in the shutdown step", "in the close step")[len(steps) - 1]:
                os.kill(tid, signal.SIGKILL)

    monkeypatch.setattr(ptrace._Tracee, "check_fd", check_then_die)
    monkeypatch.setattr(ptrace, "_ptrace", step_then_die)
    with pytest.raises(ptrace.ProcessGone):
        ptrace.inject_close(server.pid, conn["fd"], conn["inode"])
    assert server.proc.wait(timeout=10) == -signal.SIGKILL
    peer.close()


def test_already_traced_is_not_permitted(lab: Lab, server: Script) -> None:
    seized, release = threading.Event(), threading.Event()

    def other_tracer() -> None:  # seizes without stopping; its exit detaches
        ptrace._ptrace(ptrace.PTRACE_SEIZE, server.pid)
        seized.set()
        release.wait(10)

    holder = threading.Thread(target=other_tracer)
    holder.start()
    try:
        assert seized.wait(10)
        with pytest.raises(ptrace.NotPermitted, match="already being traced"):
            ptrace.inject_close(server.pid, 3, 1)
    finally:
        release.set()
        holder.join()
    assert leaky.wait_until(lambda: ptrace._tracer_of(server.pid) == 0)
    leaky.assert_serves(lab, server, PORT, {"fd", "inode"})


def test_many_fds_in_one_stop(lab: Lab, server: Script) -> None:
    pairs = [leaky.open_close_wait(lab, server, PORT) for _ in range(10)]
    targets = [(conn["fd"], conn["inode"]) for _, conn in pairs]
    stale = (targets[3][0], targets[3][1] + 1)  # as if fd 3's socket had been replaced

    results = ptrace.inject_close_many(server.pid, [stale, *targets])

    assert isinstance(results[0], ptrace.IdentityChanged)
    assert [(r.fd, r.close_rc) for r in results[1:]] == [(fd, 0) for fd, _ in targets]
    for peer, conn in pairs:
        assert_freed(lab, server, peer, conn)
        peer.close()
    leaky.assert_serves(lab, server, PORT, {"fd", "inode"})


def fd_flags(pid: int, fd: int) -> int:
    with open(f"/proc/{pid}/fdinfo/{fd}") as fh:
        return next(int(line.split()[1], 8) for line in fh if line.startswith("flags:"))


def test_the_placeholder_keeps_the_number_and_close_on_exec_a_bare_close_frees_it(
        lab: Lab, server: Script) -> None:
    (peer1, kept), (peer2, freed) = (leaky.open_close_wait(lab, server, PORT) for _ in "ab")
    assert fd_flags(server.pid, kept["fd"]) & ptrace.O_CLOEXEC  # Python's sockets have it

    swapped = ptrace.inject_close(server.pid, kept["fd"], kept["inode"])
    bare = ptrace.inject_close(server.pid, freed["fd"], freed["inode"], placeholder=False)

    assert (swapped.placeholder, swapped.close_rc, bare.placeholder, bare.close_rc) == \
        (True, 0, False, 0)
    assert_freed(lab, server, peer1, kept)
    assert fd_flags(server.pid, kept["fd"]) & ptrace.O_CLOEXEC  # an exec() still drops it
    assert peer2.recv(100) == b""
    assert fd_link(server.pid, freed["fd"]) is None  # the number is free for reuse
    leaky.assert_serves(lab, server, PORT, {"fd", "inode"})
    peer1.close()
    peer2.close()


def test_a_process_at_its_descriptor_limit_gets_no_placeholder(lab: Lab) -> None:
    full = Remote(lab, lab.server, "sd-full")
    full(f"""
        import resource
        srv = socket.create_server(("{SERVER_V4}", {PORT + 1}))
        result = None
    """)
    peer = leaky.connect(lab, PORT + 1)
    conn = full("""
        c, _ = srv.accept()
        fd = c.fileno()
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (fd + 16, hard))
        fill = []
        try:
            while True:
                fill.append(os.open("/dev/null", os.O_RDONLY))
        except OSError:
            pass
        result = {"fd": fd, "inode": os.fstat(fd).st_ino, "pid": os.getpid()}
    """)
    result = ptrace.inject_close(conn["pid"], conn["fd"], conn["inode"])  # type: ignore[index]
    assert result.close_rc == -errno.EMFILE  # socket() failed: nothing was swapped
    assert fd_link(conn["pid"], conn["fd"]) == f"socket:[{conn['inode']}]"  # type: ignore[index]
    assert peer.recv(100) == b""  # the shutdown went out all the same
    peer.close()


# A thread that spends its life inside an rseq critical section (glibc >= 2.35
# registers rseq for every thread) and counts how often the kernel aborts it.
RSEQ_SPINNER = r"""
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <sys/rseq.h>
#include <sys/socket.h>
#include <sys/stat.h>

static struct rseq_cs cs __attribute__((aligned(32)));
static volatile unsigned long aborts;
extern const char cs_start[], cs_end[], cs_abort[];

static void __attribute__((noinline)) spin_in_cs(struct rseq *rs) {
    __asm__ volatile(
        "leaq %[cs], %%rax\n\t"
        "movq %%rax, %[slot]\n\t"
        ".globl cs_start\ncs_start:\n\t"
        "jmp cs_start\n\t"
        ".globl cs_end\ncs_end:\n\t"
        ".long 0x53053053\n\t"
        ".globl cs_abort\ncs_abort:\n\t"
        : [slot] "=m"(rs->rseq_cs) : [cs] "m"(cs) : "rax", "memory");
}

int main(void) {
    int sv[2];
    struct stat st;
    if (__rseq_size == 0 || socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0) return 2;
    fstat(sv[0], &st);
    cs.start_ip = (uintptr_t)cs_start;
    cs.post_commit_offset = (uintptr_t)(cs_end - cs_start);
    cs.abort_ip = (uintptr_t)cs_abort;
    printf("%d %lu %lu\n", sv[0], (unsigned long)st.st_ino, (unsigned long)&aborts);
    fflush(stdout);
    aborts = 1; /* past the write(): from here on it is (almost) always in the section */
    struct rseq *rs = (struct rseq *)((char *)__builtin_thread_pointer() + __rseq_offset);
    for (;;) {
        spin_in_cs(rs);
        aborts++;
    }
}
"""


def _build_spinner(tmp_path: Path) -> Path:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler")
    source, binary = tmp_path / "spin.c", tmp_path / "spin"
    source.write_text(RSEQ_SPINNER)
    built = subprocess.run([cc, "-O1", "-o", str(binary), str(source)], capture_output=True)
    if built.returncode != 0:
        pytest.skip("cannot build the rseq spinner (libc without <sys/rseq.h>?)")
    return binary


def test_thread_inside_rseq_critical_section_is_aborted(lab: Lab, tmp_path: Path) -> None:
    """Back into the middle of a critical section the kernel has forgotten would
    break its atomicity; we resume at its abort handler, like a preemption does."""
    spinner = lab.spawn(lab.server, [str(_build_spinner(tmp_path))], stdout=subprocess.PIPE,
                        text=True)
    line = spinner.stdout.readline()  # type: ignore[union-attr]
    if not line:
        pytest.skip("rseq is not registered by this libc/kernel")
    fd, inode, counter = (int(x) for x in line.split())

    def aborts() -> int:
        with open(f"/proc/{spinner.pid}/mem", "rb", buffering=0) as mem:
            mem.seek(counter)
            return int.from_bytes(mem.read(8), "little")

    assert leaky.wait_until(lambda: aborts() >= 1)

    result = ptrace.inject_close(spinner.pid, fd, inode, shutdown_first=False)
    seen = aborts()

    assert result.close_rc == 0
    # "continues at its rseq abort handler", unless the kernel had aborted it already
    assert result.after.startswith("continues")
    assert leaky.wait_until(lambda: aborts() > seen)  # still protected: aborts keep coming
    assert fd_link(spinner.pid, fd) != f"socket:[{inode}]"
