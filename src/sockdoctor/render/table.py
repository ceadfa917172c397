"""The ss-like table printed by `sockdoctor ls`.

Built column by column and formatted with one %-template per line: a table
of a hundred thousand rows renders in a fraction of a second this way; the
C extension writes the common columns (text()) in a few milliseconds.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from ..linux.native import fast
from ..model import SS_COLUMN_NAMES, TIMER_NAMES, Snapshot, Socket
from . import fmt
from .infotext import info_text


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

    @property
    def details(self) -> bool:
        return self.info or self.mem or self.extended or self.timers


HEADER = ["State", "Recv-Q", "Send-Q", "Local Address:Port", "Peer Address:Port"]
_STATES = [SS_COLUMN_NAMES.get(state, "?") for state in range(16)]


def text(snapshot: Snapshot, cols: Columns) -> str:
    """The whole table as one text, each line ending in a newline ("" if it has none).

    The common columns (no -i -m -e -o) are written by the C extension when it
    is built: the same text as render(), without a Python string per cell.
    Anything but printable ASCII in a cell (an escaped name) goes through
    render(), which escapes it.
    """
    if fast is not None and not cols.details:
        header = HEADER + [title for title, shown in
                           (("Netns", cols.netns), ("Age", cols.age), ("Process", cols.processes))
                           if shown]
        names = fmt.shown_netns_names(snapshot) if cols.netns else None
        comms = fmt.shown_comms(snapshot.processes) if cols.processes else None
        done = fast.table(snapshot.sockets, _STATES, names, cols.age, comms, header,
                          cols.header)
        if done is not None:
            return done
    lines = "\n".join(render(snapshot, cols))
    return lines + "\n" if lines else ""


def render(snapshot: Snapshot, cols: Columns) -> Iterator[str]:
    """Lines of the table, header first; widths fitted to the content."""
    socks = snapshot.sockets
    names = fmt.shown_netns_names(snapshot)
    header = list(HEADER)
    columns: list[list[str]] = [
        [SS_COLUMN_NAMES.get(sk.state, "?") for sk in socks],
        [str(sk.recv_q) for sk in socks],
        [str(sk.send_q) for sk in socks],
        [fmt.endpoint(sk.local_addr, sk.local_port, sk.family) for sk in socks],
        [fmt.endpoint(sk.peer_addr, sk.peer_port, sk.family, peer=True) for sk in socks],
    ]
    if cols.netns:
        header.append("Netns")
        columns.append([names.get(sk.netns, str(sk.netns)) for sk in socks])
    if cols.age:
        header.append("Age")
        columns.append([fmt.duration(sk.age_ms) for sk in socks])
    if cols.processes:
        header.append("Process")
        comms = fmt.shown_comms(snapshot.processes)
        columns.append([fmt.users(sk, comms) or f"({sk.owner_note()})" for sk in socks])
    template = _template(header, columns)
    if cols.header:
        yield (template % tuple(header)).rstrip()
    if not cols.details:
        for row in zip(*columns, strict=True):
            yield (template % row).rstrip()
        return
    # As in ss: timers (-o) and socket details (-e) end the socket's own line;
    # memory (-m) and tcp_info (-i) go on a second line that starts with a tab.
    for sk, row in zip(socks, zip(*columns, strict=True), strict=True):
        line = (template % row).rstrip()
        inline = _inline(sk, cols)
        yield f"{line} {inline}" if inline else line
        extra = _second_line(sk, cols)
        if extra:
            yield "\t " + extra


def _template(header: list[str], columns: list[list[str]]) -> str:
    """A %-format for one line: queues and the local endpoint right-aligned, as in ss."""
    parts = []
    last = len(header) - 1
    for i, (title, cells) in enumerate(zip(header, columns, strict=True)):
        if i == last:
            parts.append("%s")
            continue
        width = max(len(title), max(map(len, cells), default=0))
        parts.append(f"%{width}s" if i in (1, 2, 3) else f"%-{width}s")
    return " ".join(parts)


def _inline(sk: Socket, cols: Columns) -> str:
    parts: list[str] = []
    if cols.timers and sk.timer:
        name = TIMER_NAMES.get(sk.timer, "unknown")
        parts.append(f"timer:({name},{fmt.ss_timer(sk.expires_ms)},{sk.retrans})")
    if cols.extended:
        if sk.uid:
            parts.append(f"uid:{sk.uid}")
        parts.append(f"ino:{sk.inode} sk:{sk.cookie:x}")
        if sk.mark:
            parts.append(f"fwmark:{sk.mark:#x}")
        if sk.shutdown is not None:
            parts.append(_shutdown_arrows(sk.shutdown))
    return " ".join(parts)


def _second_line(sk: Socket, cols: Columns) -> str:
    parts: list[str] = []
    if cols.mem and sk.mem:
        m = sk.mem
        parts.append(f"skmem:(r{m.rmem_alloc},rb{m.rcvbuf},t{m.wmem_alloc},"
                     f"tb{m.sndbuf},f{m.fwd_alloc},w{m.wmem_queued},"
                     f"o{m.optmem},bl{m.backlog},d{m.drops})")
    if cols.info and (sk.info or sk.info_blob):
        parts.append(info_text(sk, options=cols.timers or cols.extended))
    return " ".join(parts)


def _shutdown_arrows(bits: int) -> str:
    """ss's notation: '<' receive side open, '>' send side open, '-' when shut."""
    return ("-" if bits & 1 else "<") + "-" + ("-" if bits & 2 else ">")
