"""The C writer of ls --json records (_fast.json_records) against records() + msgspec.

write_json/write_ndjson with the C writer must give the same bytes as without
it, for every kind of record, and leave to msgspec the chunks it does not write.
"""

from __future__ import annotations

import io

import pytest
from test_fast_table import NS_A, NS_B, NS_UNNAMED, V6, sock

from sockdoctor.linux import native
from sockdoctor.model import Netns, Process, SkMemInfo, Snapshot, Socket, TcpState
from sockdoctor.render import jsonout
from sockdoctor.sides import Sides

pytestmark = pytest.mark.skipif(native.fast is None, reason="C extension not built")

def varied() -> list[Socket]:
    return [
        sock(TcpState.LISTEN, "0.0.0.0", 8080, "0.0.0.0", 0, owners=((10, 3), (11, 4)),
             recv_q=2, send_q=4_294_967_295),
        sock(TcpState.LISTEN, "::", 22, "::", 0, family=V6, netns=NS_B),  # an owner note
        sock(TcpState.TIME_WAIT, "10.0.0.1", 1, "10.0.0.2", 2, timer=3, expires_ms=59_000),
        sock(TcpState.SYN_RECV, "10.0.0.1", 1, "10.0.0.3", 3, netns=NS_UNNAMED, timer=99),
        sock(TcpState.ESTABLISHED, "fd77::1", 40000, "fd77::2", 443, family=V6,
             owners=((99, 5),), cookie=2**64 - 1, inode=2**32 - 1, uid=65534, retrans=3,
             shutdown=1, cgroup_id=12345, age_ms=0),
        sock(TcpState.CLOSE_WAIT, "10.1.0.1", 80, "10.2.0.1", 50000, owners=((10, 9),),
             age_ms=86_400_000, recv_q=1),
        sock(15, "10.0.0.1", 5, "10.0.0.9", 6, family=3),  # no state name, no family name
    ]


def snapshot(sockets: list[Socket], comms: dict[int, str], owners: bool = True,
             ns_name: str = "blue") -> Snapshot:
    return Snapshot(created=1.5, hostname="box", kernel="6.18", sockets=sockets,
                    namespaces=[Netns(inode=NS_A, name="host", kind="host"),
                                Netns(inode=NS_B, name=ns_name, kind="named")],
                    processes={pid: Process(pid=pid, comm=c) for pid, c in comms.items()},
                    owners_scanned=owners)


def both(snap: Snapshot, monkeypatch: pytest.MonkeyPatch) -> list[tuple[bytes, bytes]]:
    """(with the C writer, without) for write_json and write_ndjson, in chunks of 3."""
    out = []
    for write in (jsonout.write_json, jsonout.write_ndjson):
        fast, slow = io.BytesIO(), io.BytesIO()
        write(snap, fast, chunk=3)
        with monkeypatch.context() as m:
            m.setattr(jsonout, "fast", None)
            write(snap, slow, chunk=3)
        out.append((fast.getvalue(), slow.getvalue()))
    return out


@pytest.mark.parametrize("owners", [True, False])
def test_same_bytes(owners: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    snap = snapshot(varied(), {10: "nginx", 11: "nginx: worker"}, owners=owners)
    for fast, slow in both(snap, monkeypatch):
        assert fast == slow


def test_the_c_writer_writes_plain_records() -> None:
    snap = snapshot(varied(), {10: "nginx"})
    socks = snap.sockets
    fast = native.fast
    assert fast is not None
    args = jsonout._fast_args(snap)
    assert args is not None
    assert fast.json_records(socks, Sides(snap).clients(socks), *args, b"\n") is not None


@pytest.mark.parametrize("case", ["comm", "utf8", "netns", "addr", "mem", "cong", "info_blob"])
def test_what_only_msgspec_writes(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Text JSON must escape or carry as bytes, tcp_info, memory, congestion: the C writer
    declines the chunk, msgspec writes it, the document is the same."""
    socks = varied()
    comms = {10: "nginx", 11: "w\"x\\y"}
    if case == "comm":
        comms[10] = "bad\udcff"
    elif case == "utf8":
        comms[10] = "caf\u00e9"
    elif case == "addr":
        socks[2].peer_addr = "10.0.0.2\x1b"
    elif case == "mem":
        socks[5].mem = SkMemInfo(1, 2, 3, 4, 5, 6, 7, 8, 9)
    elif case == "cong":
        socks[4].cong = "cubic"
    elif case == "info_blob":
        socks[4].info_blob = bytes(104)
    snap = snapshot(socks, comms, ns_name="bl\nue" if case == "netns" else "blue")
    args = jsonout._fast_args(snap)
    assert args is not None and native.fast is not None
    assert native.fast.json_records(socks, Sides(snap).clients(socks), *args, b",") is None
    for fast, slow in both(snap, monkeypatch):
        assert fast == slow
