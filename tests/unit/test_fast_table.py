"""The C table writer (_fast.table via render.table.text) against the Python one.

render.table.render() is the reference: text() must give the same bytes for
every combination of the common columns, and hand anything it cannot write
as plain ASCII (escaped names, addresses a snapshot chose) back to it.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from sockdoctor.linux import native
from sockdoctor.model import Netns, Owner, Process, Snapshot, Socket, TcpState
from sockdoctor.render import table
from sockdoctor.render.table import Columns, render, text

pytestmark = pytest.mark.skipif(native.fast is None, reason="C extension not built")

V4, V6 = 2, 10
NS_A, NS_B, NS_UNNAMED = 4026531840, 4026532000, 4026532999


def sock(state: int, local: str, lport: int, peer: str, pport: int, *, family: int = V4,
         netns: int = NS_A, owners: tuple[tuple[int, int], ...] = (), **extra: Any) -> Socket:
    sk = Socket(netns, family, state, local, lport, peer, pport, 7, 1, 0, 0, 0)
    sk.owners = [Owner(pid, fd) for pid, fd in owners]
    for name, value in extra.items():
        setattr(sk, name, value)
    return sk


def snapshot(sockets: list[Socket], comms: dict[int, str] | None = None,
             ns_name: str = "blue") -> Snapshot:
    return Snapshot(created=1.0, hostname="box", kernel="6.18", sockets=sockets,
                    namespaces=[Netns(inode=NS_A, name="host", kind="host"),
                                Netns(inode=NS_B, name=ns_name, kind="named")],
                    processes={pid: Process(pid=pid, comm=c) for pid, c in (comms or {}).items()},
                    owners_scanned=True)


def varied() -> list[Socket]:
    """Every kind of cell: both families, a wildcard peer, ages in every unit (and
    none), queues wider than their titles, several owners, none (a note), an
    owner whose process is unknown, a namespace without a name."""
    ages = [None, 0, 999, 1000, 59_999, 60_000, 3_599_999, 3_600_000, 86_399_999,
            86_400_000, 10 * 86_400_000 + 5 * 3_600_000]
    out = [sock(TcpState.LISTEN, "0.0.0.0", 8080, "0.0.0.0", 0, owners=((10, 3), (11, 4)),
                recv_q=2, send_q=4_294_967_295),
           sock(TcpState.LISTEN, "::", 22, "::", 0, family=V6, netns=NS_B),
           sock(TcpState.TIME_WAIT, "10.0.0.1", 1, "10.0.0.2", 2),
           sock(TcpState.SYN_RECV, "10.0.0.1", 1, "10.0.0.3", 3, netns=NS_UNNAMED),
           sock(TcpState.ESTABLISHED, "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255", 65535,
                "fd77::2", 0, family=V6, owners=((99, 1_000_000),)),
           sock(15, "10.0.0.1", 5, "10.0.0.9", 6)]  # a state without a name
    for i, age in enumerate(ages):
        out.append(sock(TcpState.CLOSE_WAIT, f"10.1.0.{i}", 80, "10.2.0.1", 40000 + i,
                        owners=((10, 100 + i),), recv_q=i, age_ms=age))
    return out


COMMS = {10: "nginx", 11: "nginx: worker [x]"}


@pytest.mark.parametrize("flags", list(itertools.product((False, True), repeat=4)))
def test_text_is_render(flags: tuple[bool, ...]) -> None:
    processes, netns, age, header = flags
    snap = snapshot(varied(), COMMS)
    cols = Columns(processes=processes, netns=netns, age=age, header=header)
    assert text(snap, cols) == "".join(line + "\n" for line in render(snap, cols))


def test_no_sockets() -> None:
    snap = snapshot([])
    assert text(snap, Columns()) == "".join(line + "\n" for line in render(snap, Columns()))
    assert text(snap, Columns(header=False)) == ""


@pytest.mark.parametrize("case", ["comm", "netns", "addr"])
def test_anything_but_printable_ascii_goes_to_python(case: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Escaped or non-ASCII text: the C writer declines, render() escapes, same output."""
    comms = {**COMMS, 10: "caf\u00e9"} if case == "comm" else COMMS
    socks = varied()
    if case == "addr":
        socks[2].peer_addr = "10.0.0.2\x1b[31m"
    snap = snapshot(socks, comms, ns_name="bl\u00fce\udcff" if case == "netns" else "blue")
    cols = Columns(processes=True)
    fast = native.fast
    assert fast is not None
    assert fast.table(snap.sockets, table._STATES, table.fmt.shown_netns_names(snap), True,
                      table.fmt.shown_comms(snap.processes), [*table.HEADER, "Netns", "Age",
                                                              "Process"], True) is None
    assert text(snap, cols) == "".join(line + "\n" for line in render(snap, cols))


def test_details_stay_in_python(monkeypatch: pytest.MonkeyPatch) -> None:
    """-i -m -e -o are not the C writer's: it is not even called."""
    snap = snapshot(varied(), COMMS)
    monkeypatch.setattr(table, "fast", None)
    expected = text(snap, Columns(extended=True, timers=True))
    monkeypatch.undo()

    def refuse(*_: Any) -> None:
        raise AssertionError("called")
    monkeypatch.setattr(native.fast, "table", refuse, raising=False)
    assert text(snap, Columns(extended=True, timers=True)) == expected
