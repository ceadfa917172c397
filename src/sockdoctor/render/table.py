"""The ss-like table printed by `sockdoctor ls`."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from ..linux.tcpinfo import option_names
from ..model import TIMER_NAMES, Snapshot, Socket
from . import fmt


@dataclass(frozen=True)
class Columns:
    """Which optional parts to print, mirroring ss's -p -i -m -e -o."""

    processes: bool = False
    info: bool = False
    mem: bool = False
    extended: bool = False
    timers: bool = False
    netns: bool = True
    age: bool = True
    header: bool = True


def render(snapshot: Snapshot, cols: Columns) -> Iterator[str]:
    """Lines of the table, header first; widths fitted to the content."""
    names = fmt.netns_names(snapshot)
    rows = [_row(sk, snapshot, cols, names) for sk in snapshot.sockets]
    header = ["State", "Recv-Q", "Send-Q", "Local Address:Port", "Peer Address:Port"]
    if cols.netns:
        header.append("Netns")
    if cols.age:
        header.append("Age")
    if cols.processes:
        header.append("Process")
    widths = [len(h) for h in header]
    for cells, _extra in rows:
        for i, cell in enumerate(cells):
            if len(cell) > widths[i]:
                widths[i] = len(cell)
    right = {1, 2, 3}  # queues and the local endpoint are right-aligned, as in ss
    if cols.header:
        yield _join(header, widths, right)
    for cells, extra in rows:
        yield _join(cells, widths, right)
        if extra:
            yield "\t " + extra


def _join(cells: list[str], widths: list[int], right: set[int]) -> str:
    out = []
    last = len(cells) - 1
    for i, cell in enumerate(cells):
        if i == last:
            out.append(cell)
        elif i in right:
            out.append(cell.rjust(widths[i]))
        else:
            out.append(cell.ljust(widths[i]))
    return " ".join(out).rstrip()


def _row(sk: Socket, snapshot: Snapshot, cols: Columns,
         names: dict[int, str]) -> tuple[list[str], str]:
    cells = [
        fmt.state_name(sk.state), str(sk.recv_q), str(sk.send_q),
        fmt.endpoint(sk.local_addr, sk.local_port, sk.family),
        fmt.endpoint(sk.peer_addr, sk.peer_port, sk.family, peer=True),
    ]
    if cols.netns:
        cells.append(names.get(sk.netns, str(sk.netns)))
    if cols.age:
        cells.append(fmt.duration(sk.age_ms))
    if cols.processes:
        cells.append(fmt.users(sk, snapshot.processes) or f"({sk.owner_note()})")
    return cells, _details(sk, cols)


def _details(sk: Socket, cols: Columns) -> str:
    parts: list[str] = []
    if cols.timers and sk.timer:
        name = TIMER_NAMES.get(sk.timer, str(sk.timer))
        parts.append(f"timer:({name},{fmt.ss_timer(sk.expires_ms)},{sk.retrans})")
    if cols.extended:
        parts.append(f"uid:{sk.uid} ino:{sk.inode} sk:{sk.cookie:x}")
        if sk.shutdown is not None:
            parts.append(_shutdown_arrows(sk.shutdown))
    if cols.mem and sk.mem:
        m = sk.mem
        parts.append(f"skmem:(r{m['rmem_alloc']},rb{m['rcvbuf']},t{m['wmem_alloc']},"
                     f"tb{m['sndbuf']},f{m['fwd_alloc']},w{m['wmem_queued']},"
                     f"o{m['optmem']},bl{m['backlog']},d{m['drops']})")
    if cols.info and sk.info:
        parts.append(_info_text(sk))
    return " ".join(parts)


def _shutdown_arrows(bits: int) -> str:
    """ss's notation: '<' receive side open, '>' send side open, '-' when shut."""
    return ("-" if bits & 1 else "<") + "-" + ("-" if bits & 2 else ">")


def _info_text(sk: Socket) -> str:
    i = sk.info or {}
    parts = []
    if sk.cong:
        parts.append(sk.cong)
    opts = option_names(i.get("options", 0))
    if opts:
        parts.append(",".join(opts))
    if "wscale" in opts:
        parts.append(f"wscale:{i.get('snd_wscale', 0)},{i.get('rcv_wscale', 0)}")
    if i.get("rto"):
        parts.append(f"rto:{i['rto'] / 1000:g}")
    if i.get("rtt"):
        parts.append(f"rtt:{i['rtt'] / 1000:g}/{i.get('rttvar', 0) / 1000:g}")
    for key, label in (("snd_mss", "mss"), ("pmtu", "pmtu"), ("rcv_mss", "rcvmss"),
                       ("advmss", "advmss"), ("snd_cwnd", "cwnd"),
                       ("bytes_sent", "bytes_sent"), ("bytes_acked", "bytes_acked"),
                       ("bytes_received", "bytes_received"), ("segs_out", "segs_out"),
                       ("segs_in", "segs_in"), ("retrans", "unacked_retrans"),
                       ("total_retrans", "retrans_total")):
        if i.get(key):
            parts.append(f"{label}:{i[key]}")
    for key, label in (("last_data_sent", "lastsnd"), ("last_data_recv", "lastrcv"),
                       ("last_ack_recv", "lastack")):
        if key in i:
            parts.append(f"{label}:{i[key]}")
    return " ".join(parts)
