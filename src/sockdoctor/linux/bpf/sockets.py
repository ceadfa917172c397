"""TCP sockets from the kernel: the iter/tcp program (sockets.bpf.c), a sock_diag alternative.

One kernel pass per network namespace emits an 80-byte record per socket
that passes the query's state mask and port set, with what an inet_diag_msg
carries (the kernel's sock_diag fill rules) and tcp_info's last-ACK-received
(the age). It serves a dump only when nothing else is asked of sock_diag:
full tcp_info (`-i`), memory (`-m`) and the extended attributes (`-e`, the
doctor's evidence) come from sock_diag as before, and so does everything
when the engine is off or refused. The iterator walks the namespace of the
thread that creates it, so `dump()` runs inside the namespace (netns.run_in
/ run_many), like a sock_diag socket opened there.
"""

from __future__ import annotations

import os
import queue
import socket
import struct
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from operator import attrgetter
from typing import Protocol

from ...model import Socket, TcpState, state_mask
from .. import procfs, sockdiag
from ..native import fast
from . import BTF, BpfError, BpfObject, libbpf, requested, wanted

NAME, PROGRAM = "sockets", "dump_sockets"
# struct record in sockets.bpf.c: family state timer retrans | sport dport (host order) |
# saddr daddr | cookie | inode uid rqueue wqueue expires_ms age_ms ifindex pad
RECORD = struct.Struct("=BBBBHH16s16sQIIIIIII4x")
CONFIG = struct.Struct("=IHH16H")  # struct config: states, family, nports, ports[16]
MAX_PORTS = 16
CAP_PERFMON, CAP_BPF = 38, 39
NO_AGE = 0xFFFFFFFF
# Loading the program costs ~15-25 ms (libbpf reads the kernel's BTF; the verifier);
# a broad pass saves ~0.6 us a socket against sock_diag: below this many TCP sockets
# on the host sock_diag is faster, unless SOCKDOCTOR_ENGINE=bpf asks (see pays()).
MIN_SOCKETS = 40_000
# A dump pays only if it wants (nearly) every socket: these states at least.
BROAD_STATES = state_mask(TcpState.ESTABLISHED, TcpState.FIN_WAIT1, TcpState.FIN_WAIT2,
                          TcpState.TIME_WAIT, TcpState.CLOSE_WAIT)
READ_CHUNK = 1 << 20  # the kernel returns at most its seq_file buffer (32 KiB) a read

_refused: list[str] = []  # why the kernel refused the program (tried once per process)
_lock = threading.Lock()

Dump = Callable[[int], list[Socket]]  # netns inode -> its sockets, called inside it
_family = attrgetter("family")


class SocketSource(Protocol):
    """Where a scan's sockets come from (inventory.dump_namespaces).

    open(opts, families) gives, while its block runs, the dump of one
    namespace (called inside it) or None: sock_diag's. `complete`: whether a
    dump gives every socket the options select; a counting source
    (aggregate.Counting) gives only some and counts the others aside, and
    `also` names the processes its consumer reads besides their holders.
    """

    complete: bool
    also: frozenset[int]

    def open(self, opts: sockdiag.DumpOptions, families: Iterable[int]
             ) -> AbstractContextManager[Dump | None]: ...


class Listing:
    """The usual source: every socket, from iter/tcp where it pays, else sock_diag."""

    complete = True
    also: frozenset[int] = frozenset()

    def open(self, opts: sockdiag.DumpOptions, families: Iterable[int]
             ) -> AbstractContextManager[Dump | None]:
        return source(opts, families)


LISTING = Listing()


def serves(opts: sockdiag.DumpOptions) -> bool:
    """Whether the records carry everything this dump asks for."""
    if opts.info or opts.mem or opts.attrs:
        return False
    return not opts.bytecode or bool(opts.ports)  # a filter we cannot read: sock_diag's


def usable() -> bool:
    """The engine is wanted, its program was built and not refused, the kernel has BTF,
    and we may load it (a failed load would cost as much as a successful one)."""
    return (wanted() and not _refused and (libbpf.HERE / f"{NAME}.bpf.o").exists()
            and os.path.exists(BTF) and (procfs.has_capabilities(CAP_PERFMON, CAP_BPF)
                                         or procfs.has_capabilities(procfs.CAP_SYS_ADMIN)))


def pays(opts: sockdiag.DumpOptions) -> bool:
    """Whether the pass is faster than sock_diag for this dump (or SOCKDOCTOR_ENGINE=bpf asks).

    The iterator locks and visits every socket of the namespace before the
    program can skip one (~0.7 us each, measured at 144k), where sock_diag
    skips a socket of another state or port for almost nothing; what the
    pass saves is per socket returned (~1.2 us: no netlink message to parse,
    and decoding overlaps the kernel's pass). So it pays for a broad dump
    (every common state, no port filter: ls, ls --json, ls -p, a sample) on
    a host with many sockets (the program's load costs ~20 ms), not for a
    narrow one like `state close-wait` or `--port`, nor for a dump without
    the age (`ls -s`): sock_diag then sends no tcp_info and is cheap enough
    that loading libbpf and the program (~40-50 ms) is not won back
    (measured at 50k: +45 ms CPU, docs/benchmarks.md, issue 19 re-measured).
    """
    if requested() == "bpf":
        return True
    broad = opts.states & BROAD_STATES == BROAD_STATES and not opts.bytecode
    return broad and opts.age and host_sockets() >= MIN_SOCKETS


def host_sockets() -> int:
    """TCP sockets allocated on the host plus this namespace's TIME-WAIT (/proc/net/sockstat)."""
    try:
        text = procfs._read(f"{procfs.PROC}/net/sockstat")
    except OSError:
        return 0
    tcp = procfs._parse_sockstat(text).get("sockstat.TCP", {})
    return tcp.get("alloc", 0) + tcp.get("tw", 0)


@contextmanager
def source(opts: sockdiag.DumpOptions, families: Iterable[int]) -> Iterator[Dump | None]:
    """The iter/tcp dump for these options while the block runs, or None: use sock_diag.

    The program is loaded once for every namespace of the scan; each call of
    the dump creates an iterator in the calling thread's namespace.
    """
    fams = tuple(families)
    if not (serves(opts) and usable() and pays(opts)):
        yield None
        return
    try:
        obj = BpfObject(NAME)
    except BpfError as exc:
        _refuse(exc)
        yield None
        return
    try:
        obj.update_elem("config", 0, config(opts, fams))
        yield lambda netns: dump(obj, opts, netns, fams)
    except BpfError as exc:
        _refuse(exc)
        yield None
    finally:
        obj.close()


def _refuse(exc: BpfError) -> None:
    with _lock:
        _refused.append(exc.strerror or str(exc))


def config(opts: sockdiag.DumpOptions, families: tuple[int, ...]) -> bytes:
    family = families[0] if len(families) == 1 else 0
    # more ports than the program compares: every socket comes back, Python filters
    ports = sorted(opts.ports) if opts.bytecode and len(opts.ports) <= MAX_PORTS else []
    return CONFIG.pack(opts.states & 0xFFFFFFFF, family, len(ports),
                       *ports, *[0] * (MAX_PORTS - len(ports)))


def dump(obj: BpfObject, opts: sockdiag.DumpOptions, netns: int,
         families: tuple[int, ...]) -> list[Socket]:
    """Every socket of the calling thread's namespace the options select, IPv4 first.

    A pass the kernel refuses falls back to a sock_diag dump of the namespace.
    """
    try:
        out = obj.run_iter(PROGRAM, lambda fd: read_decoding(fd, netns, opts.age))
    except OSError:  # BpfError too
        return sockdiag.dump_here(opts, netns=netns, families=families)
    out.sort(key=_family)  # stable: as sockdiag.dump, each family in the kernel's order
    return out


def read_decoding(fd: int, netns: int, age: bool) -> list[Socket]:
    """Read the iterator on a second thread while this one decodes what has come.

    The kernel's pass (a read() blocks in it, without the GIL) and the decoding
    (Python objects, with the GIL) overlap: on two CPUs the dump costs about
    the longer of the two instead of their sum.
    """
    chunks: queue.SimpleQueue[bytes | BaseException | None] = queue.SimpleQueue()

    def read() -> None:
        try:
            while chunk := os.read(fd, READ_CHUNK):
                chunks.put(chunk)
        except BaseException as exc:  # whatever it is, the decoding side raises it
            chunks.put(exc)
        finally:
            chunks.put(None)  # never leave the decoding side waiting
    reader = threading.Thread(target=read, name="sockdoctor-bpf-sockets", daemon=True)
    reader.start()
    out: list[Socket] = []
    rest = b""
    try:
        while (chunk := chunks.get()) is not None:
            if isinstance(chunk, BaseException):
                raise chunk
            if rest:
                chunk, rest = rest + chunk, b""
            cut = len(chunk) - len(chunk) % RECORD.size  # a record split between reads
            rest = chunk[cut:]
            out.extend(decode(chunk[:cut] if rest else chunk, netns, age))
    finally:
        reader.join()
    return out


def decode(data: bytes, netns: int, age: bool) -> list[Socket]:
    """Records -> Socket objects (the C decoder when it is built)."""
    data = data[:len(data) - len(data) % RECORD.size]
    if fast is not None:  # an ABI-4 build has tcp_records (native._load checks)
        return fast.tcp_records(data, netns, age, sockdiag.AGED_STATES)
    return decode_python(data, netns, age)


def decode_python(data: bytes, netns: int, age: bool) -> list[Socket]:
    """decode() in Python: the reference for the C decoder."""
    names: dict[tuple[int, bytes], str] = {}
    aged = sockdiag.AGED_STATES if age else 0
    out = []
    append = out.append
    for (family, state, timer, retrans, sport, dport, src, dst, cookie, inode, uid, rqueue,
         wqueue, expires, age_ms, ifindex) in RECORD.iter_unpack(data):
        local = names.get((family, src)) or _name(names, family, src)
        peer = names.get((family, dst)) or _name(names, family, dst)
        sk = Socket(netns, family, state, local, sport, peer, dport, inode, cookie, uid,
                    rqueue, wqueue, timer, expires, retrans, ifindex)
        if (1 << state) & aged and age_ms != NO_AGE:
            sk.age_ms = age_ms
        append(sk)
    return out


def _name(names: dict[tuple[int, bytes], str], family: int, raw: bytes) -> str:
    if family not in (socket.AF_INET, socket.AF_INET6):
        raise ValueError(f"unknown address family {family} in an iter/tcp record")
    text = names[family, raw] = socket.inet_ntop(
        family, raw[:4] if family == socket.AF_INET else raw)
    return text
