"""Rendering of `sockdoctor ls`: the ss-like table, JSON/NDJSON records, the summary.

Synthetic snapshots only (no kernel): the integration tests check the same
output against real sockets and against `ss` itself.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import msgspec
import pytest

from sockdoctor.model import (
    Netns,
    Owner,
    Process,
    SkMemInfo,
    Snapshot,
    Socket,
    TcpInfo,
    TcpState,
)
from sockdoctor.render import fmt, jsonout, summary
from sockdoctor.render.table import Columns, render

V4, V6 = 2, 10
NS_A, NS_B = 4026531840, 4026532000
DOCS = Path(__file__).resolve().parents[2] / "docs" / "json.md"


def sock(state: TcpState, local: str, lport: int, peer: str, pport: int, *,
         family: int = V4, netns: int = NS_A, inode: int = 1000, cookie: int = 1,
         owners: tuple[tuple[int, int], ...] = (), **extra: Any) -> Socket:
    sk = Socket(netns, family, int(state), local, lport, peer, pport, inode, cookie, 0, 0, 0)
    sk.owners = [Owner(pid, fd) for pid, fd in owners]
    for name, value in extra.items():
        setattr(sk, name, value)
    return sk


def snapshot(sockets: list[Socket], *, owners_scanned: bool = True,
             processes: dict[int, str] | None = None) -> Snapshot:
    procs = {pid: Process(pid=pid, comm=comm) for pid, comm in (processes or {}).items()}
    return Snapshot(created=1_700_000_000.5, hostname="box", kernel="6.18.0", sockets=sockets,
                    namespaces=[Netns(inode=NS_A, name="host", kind="host"),
                                Netns(inode=NS_B, name="blue", kind="named")],
                    processes=procs, owners_scanned=owners_scanned)


@pytest.fixture
def mixed() -> Snapshot:
    return snapshot([
        sock(TcpState.LISTEN, "0.0.0.0", 8080, "0.0.0.0", 0, cookie=1,
             owners=((10, 3), (11, 3)), recv_q=2, send_q=128),
        sock(TcpState.CLOSE_WAIT, "10.0.0.1", 8080, "10.0.0.2", 51234, cookie=2,
             owners=((10, 7),), recv_q=1, age_ms=754_000),
        sock(TcpState.ESTABLISHED, "fd77::1", 443, "fd77::2", 40000, family=V6, cookie=3,
             netns=NS_B, inode=0, age_ms=850),
        sock(TcpState.LISTEN, "::", 22, "::", 0, family=V6, cookie=4, netns=NS_B, inode=5),
    ], processes={10: "nginx", 11: "nginx-worker"})


# --- table ---------------------------------------------------------------------

def test_table_columns_align(mixed: Snapshot) -> None:
    lines = list(render(mixed, Columns(processes=True)))
    header = lines[0]
    assert header.split()[:6] == ["State", "Recv-Q", "Send-Q", "Local", "Address:Port", "Peer"]
    assert header.split()[-3:] == ["Netns", "Age", "Process"]
    # Recv-Q, Send-Q and the local endpoint are right-aligned as in ss, the rest left
    for title in ("Recv-Q", "Send-Q", "Local Address:Port"):
        right = header.index(title) + len(title)
        for row in lines[1:]:
            assert row[right - 1] != " " and row[right] == " ", (title, row)
    for title in ("Peer Address:Port", "Netns", "Age", "Process"):
        left = header.index(title)
        for row in lines[1:]:
            assert row[left - 1] == " " and row[left] != " ", (title, row)
    assert all(line == line.rstrip() for line in lines)


def test_table_endpoints_like_ss(mixed: Snapshot) -> None:
    rows = list(render(mixed, Columns(netns=False, age=False)))[1:]
    cells = [row.split() for row in rows]
    assert cells[0][3:5] == ["0.0.0.0:8080", "0.0.0.0:*"]  # unbound peer port is *
    assert cells[1][3:5] == ["10.0.0.1:8080", "10.0.0.2:51234"]
    assert cells[2][3:5] == ["[fd77::1]:443", "[fd77::2]:40000"]  # v6 in brackets
    assert cells[3][3:5] == ["[::]:22", "[::]:*"]
    assert [c[0] for c in cells] == ["LISTEN", "CLOSE-WAIT", "ESTAB", "LISTEN"]
    assert [c[1:3] for c in cells] == [["2", "128"], ["1", "0"], ["0", "0"], ["0", "0"]]


def test_table_process_netns_and_age(mixed: Snapshot) -> None:
    rows = list(render(mixed, Columns(processes=True)))[1:]
    assert rows[0].endswith('users:(("nginx",pid=10,fd=3),("nginx-worker",pid=11,fd=3))')
    assert rows[1].endswith('users:(("nginx",pid=10,fd=7))')
    assert " host " in rows[1] and " 12m34s " in rows[1]
    assert " blue " in rows[2] and " 850ms " in rows[2]
    assert rows[2].endswith("(accept queue: never accept()ed)")
    assert re.search(r" - +\(", rows[3])  # no age for a listener
    no_header = list(render(mixed, Columns(header=False, netns=False, age=False)))
    assert len(no_header) == 4 and not no_header[0].startswith("State")


def test_unknown_process_shows_a_question_mark() -> None:
    snap = snapshot([sock(TcpState.ESTABLISHED, "10.0.0.1", 1, "10.0.0.2", 2,
                          owners=((99, 4),))])
    comms = fmt.shown_comms(snap.processes)
    assert fmt.users(snap.sockets[0], comms) == 'users:(("?",pid=99,fd=4))'


def test_detail_lines_like_ss() -> None:
    info = TcpInfo(options=1 | 2 | 4, snd_wscale=7, rcv_wscale=9, rto=204_000, rtt=26_500,
                   rttvar=13_250, ato=40_000, snd_mss=1448, rcv_mss=536, advmss=1448,
                   pmtu=1500, snd_cwnd=10, snd_ssthresh=0x7FFFFFFF, bytes_received=1,
                   segs_out=3, segs_in=4, last_data_sent=0, last_data_recv=856,
                   last_ack_recv=856, retrans=0, total_retrans=2, reordering=3,
                   unacked=0, sacked=0, min_rtt=27)
    mem = SkMemInfo(832, 131072, 0, 69120, 3264, 0, 0, 0, 0)
    sk = sock(TcpState.CLOSE_WAIT, "10.0.0.1", 80, "10.0.0.2", 5000, inode=4121636,
              cookie=0x1AD083, timer=2, expires_ms=7_199_000, retrans=0, shutdown=1,
              info=info, mem=mem, cong="cubic", uid=0, age_ms=900)
    lines = list(render(snapshot([sk]), Columns(info=True, mem=True, extended=True,
                                                timers=True, netns=False)))
    assert len(lines) == 3
    main, second = lines[1], lines[2]
    assert main.endswith(" timer:(keepalive,119min,0) ino:4121636 sk:1ad083 -->")
    assert "uid:" not in main  # ss shows uid only when it is not root's
    assert second == ("\t skmem:(r832,rb131072,t0,tb69120,f3264,w0,o0,bl0,d0) ts sack cubic"
                      " wscale:7,9 rto:204 rtt:26.5/13.25 ato:40 mss:1448 pmtu:1500"
                      " rcvmss:536 advmss:1448 cwnd:10 bytes_received:1 segs_out:3 segs_in:4"
                      " send 4371321bps lastrcv:856 lastack:856 retrans:0/2 minrtt:0.027")
    sk.uid, sk.shutdown = 1000, 3
    main = list(render(snapshot([sk]), Columns(extended=True, netns=False)))[1]
    assert main.endswith(" uid:1000 ino:4121636 sk:1ad083 ---")


def test_listener_info_hides_the_backlog_and_initial_rto() -> None:
    info = TcpInfo(rto=3_000_000, snd_cwnd=10, unacked=2, sacked=128, reordering=3)
    sk = sock(TcpState.LISTEN, "0.0.0.0", 80, "0.0.0.0", 0, info=info, cong="bbr")
    second = list(render(snapshot([sk]), Columns(info=True, netns=False)))[2]
    assert second == "\t bbr cwnd:10 unacked:2"


def test_no_detail_line_when_there_is_nothing_to_add() -> None:
    sk = sock(TcpState.TIME_WAIT, "10.0.0.2", 5000, "10.0.0.1", 80, inode=0, timer=3,
              expires_ms=57_624)
    lines = list(render(snapshot([sk]), Columns(info=True, mem=True, timers=True,
                                                netns=False, age=False)))
    assert len(lines) == 2 and lines[1].endswith(" timer:(timewait,57sec,0)")


@pytest.mark.parametrize("ms, text", [
    (0, ""), (40, "040ms"), (999, "999ms"), (1000, "1sec"), (5_624, "5.624sec"),
    (9_005, "9.005sec"), (57_624, "57sec"), (60_000, "1min"), (65_400, "1min5sec"),
    (150_000, "2min30sec"), (599_000, "9min59sec"), (7_199_000, "119min"),
])
def test_timer_expiry_like_ss(ms: int, text: str) -> None:
    assert fmt.ss_timer(ms) == text


@pytest.mark.parametrize("ms, text", [
    (None, "-"), (0, "0ms"), (850, "850ms"), (42_999, "42s"), (432_000, "7m12s"),
    (11_100_000, "3h05m"), (187_200_000, "2d04h"),
])
def test_age_durations(ms: int | None, text: str) -> None:
    assert fmt.duration(ms) == text


def test_endpoint_helper() -> None:
    assert fmt.endpoint("::1", 0, V6, peer=True) == "[::1]:*"
    assert fmt.endpoint("::1", 0, V6) == "[::1]:0"
    assert fmt.endpoint("1.2.3.4", 80, V4, peer=True) == "1.2.3.4:80"


# --- JSON ------------------------------------------------------------------------

def _json(snap: Snapshot) -> dict[str, Any]:
    out = io.BytesIO()
    jsonout.write_json(snap, out)
    raw = out.getvalue()
    assert raw.endswith(b"\n") and raw.count(b"\n") == 1
    return json.loads(raw)


REQUIRED = {"netns": str, "family": str, "state": str, "local_addr": str, "local_port": int,
            "peer_addr": str, "peer_port": int, "recv_q": int, "send_q": int, "inode": int,
            "cookie": int, "uid": int, "timer": str, "expires_ms": int, "retrans": int}


def test_json_document_schema(mixed: Snapshot) -> None:
    mixed.warnings = ["something was not readable"]
    doc = _json(mixed)
    assert list(doc) == ["schema", "created", "hostname", "kernel", "namespaces", "warnings",
                         "count", "sockets"]
    assert doc["schema"] == "sockdoctor.ls/1"
    assert isinstance(doc["created"], float) and doc["hostname"] == "box"
    assert doc["kernel"] == "6.18.0" and doc["warnings"] == ["something was not readable"]
    assert doc["namespaces"] == [{"inode": NS_A, "name": "host", "kind": "host"},
                                 {"inode": NS_B, "name": "blue", "kind": "named"}]
    assert doc["count"] == len(doc["sockets"]) == 4
    for rec in doc["sockets"]:
        for name, kind in REQUIRED.items():
            assert isinstance(rec[name], kind), (name, rec)
        assert set(rec) - set(REQUIRED) <= {"age_ms", "owners", "owner_note"}
        assert isinstance(rec["owners"], list)
    msgspec.json.decode(json.dumps(doc), type=jsonout.LsDocument)  # the schema types hold


def test_json_records_say_what_ss_says(mixed: Snapshot) -> None:
    lst, cw, est, v6lst = _json(mixed)["sockets"]
    assert (lst["state"], lst["family"], lst["netns"], lst["peer_port"]) == \
        ("LISTEN", "ipv4", "host", 0)
    assert lst["owners"] == [{"pid": 10, "fd": 3, "comm": "nginx"},
                             {"pid": 11, "fd": 3, "comm": "nginx-worker"}]
    assert "owner_note" not in lst and "age_ms" not in lst
    assert (cw["state"], cw["age_ms"], cw["recv_q"], cw["timer"]) == ("CLOSE-WAIT", 754_000, 1,
                                                                      "off")
    assert (est["family"], est["netns"], est["owners"]) == ("ipv6", "blue", [])
    assert "accept queue" in est["owner_note"]
    assert v6lst["local_addr"] == "::" and "owner_note" in v6lst


def test_json_optional_parts_follow_the_scan() -> None:
    sk = sock(TcpState.ESTABLISHED, "10.0.0.1", 1, "10.0.0.2", 2, timer=1, expires_ms=204,
              retrans=1, shutdown=0, cgroup_id=77, cong="cubic",
              info=TcpInfo(rtt=1000, last_ack_recv=5), mem=SkMemInfo(*range(9)))
    (rec,) = _json(snapshot([sk], owners_scanned=False))["sockets"]
    assert "owners" not in rec and "owner_note" not in rec  # owners were not looked up
    assert (rec["timer"], rec["expires_ms"], rec["retrans"]) == ("on", 204, 1)
    assert (rec["shutdown"], rec["cgroup_id"], rec["cong"]) == (0, 77, "cubic")
    assert rec["info"]["rtt"] == 1000 and rec["info"]["last_ack_recv"] == 5
    assert "rttvar" not in rec["info"]  # fields this kernel did not fill are left out
    assert rec["mem"] == {"rmem_alloc": 0, "rcvbuf": 1, "wmem_alloc": 2, "sndbuf": 3,
                          "fwd_alloc": 4, "wmem_queued": 5, "optmem": 6, "backlog": 7,
                          "drops": 8}


def test_ndjson_is_one_record_per_line(mixed: Snapshot) -> None:
    out = io.BytesIO()
    jsonout.write_ndjson(mixed, out, chunk=3)  # two chunks
    lines = out.getvalue().decode().splitlines()
    assert [json.loads(line) for line in lines] == _json(mixed)["sockets"]
    empty = io.BytesIO()
    jsonout.write_ndjson(snapshot([]), empty)
    assert empty.getvalue() == b""


def _documented_fields() -> dict[str, set[str]]:
    """Field names in the tables of docs/json.md, per `### ` heading."""
    fields: dict[str, set[str]] = {}
    heading = ""
    for line in DOCS.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            heading = line[4:].strip() if line.startswith("### ") else ""
        m = re.match(r"\| `([a-z_]+)` \|", line)
        if m and heading:
            fields.setdefault(heading, set()).add(m.group(1))
    return fields


@pytest.mark.parametrize("heading, struct", [
    ("Document", jsonout.LsDocument), ("Socket record", jsonout.SocketRecord),
    ("Owner", jsonout.OwnerRecord), ("Namespace", jsonout.NamespaceRecord),
])
def test_every_field_is_documented(heading: str, struct: type) -> None:
    assert _documented_fields()[heading] == set(struct.__struct_fields__)


# --- summary ---------------------------------------------------------------------

def test_summary_groups_by_state_process_and_service() -> None:
    socks = [sock(TcpState.LISTEN, "0.0.0.0", 8080, "0.0.0.0", 0, owners=((10, 3),))]
    socks += [sock(TcpState.CLOSE_WAIT, "10.0.0.1", 8080, "10.0.0.2", 50_000 + i, cookie=i,
                   owners=((10, 20 + i),)) for i in range(3)]
    socks += [sock(TcpState.CLOSE_WAIT, "10.0.0.1", 8080, "10.0.0.3", 40_000, inode=0)]
    socks += [sock(TcpState.ESTABLISHED, "10.0.0.1", 45_000 + i, "10.0.0.9", 5432,
                   owners=((11, 5 + i),)) for i in range(2)]
    socks += [sock(TcpState.ESTABLISHED, "10.0.0.1", 45_100, "10.0.0.9", 5432, netns=NS_B)]
    snap = snapshot(socks, processes={10: "app", 11: "worker"})
    rows = summary.rows(snap)
    assert rows[0] == summary.SummaryRow("host", "CLOSE-WAIT", "app(10)", ":8080", 3)
    assert summary.SummaryRow("host", "ESTAB", "worker(11)", "-> 10.0.0.9:5432", 2) in rows
    assert summary.SummaryRow("host", "CLOSE-WAIT", "(accept queue)", ":8080", 1) in rows
    assert summary.SummaryRow("blue", "ESTAB", "(no owner)", "-> 10.0.0.9:5432", 1) in rows
    assert sum(r.count for r in rows) == len(socks) and len(rows) == 5
    lines = list(summary.render(snap))
    assert lines[0] == "8 TCP sockets: CLOSE-WAIT 4, ESTAB 3, LISTEN 1"
    assert lines[2].split() == ["COUNT", "STATE", "PROCESS", "SERVICE", "NETNS"]
    assert re.split(r"\s{2,}", lines[3].strip()) == ["3", "CLOSE-WAIT", "app(10)", ":8080",
                                                     "host"]


def test_summary_without_owners_and_with_a_limit() -> None:
    socks = [sock(TcpState.ESTABLISHED, "10.0.0.1", 1000 + i, "10.0.1.1", 80 + i)
             for i in range(5)]
    snap = snapshot(socks, owners_scanned=False)
    assert {r.process for r in summary.rows(snap)} == {"-"}
    lines = list(summary.render(snap, limit=2))
    assert lines[-1] == "... 3 more groups (3 sockets); use --json for all"
    assert list(summary.render(snapshot([]))) == ["0 TCP sockets"]


@pytest.mark.parametrize("chunk", [1, 2, 3, 100])
def test_json_written_in_chunks_is_one_valid_document(mixed: Snapshot, chunk: int) -> None:
    whole, pieces = io.BytesIO(), io.BytesIO()
    jsonout.write_json(mixed, whole)
    jsonout.write_json(mixed, pieces, chunk=chunk)
    assert json.loads(pieces.getvalue()) == json.loads(whole.getvalue())
    assert len(json.loads(pieces.getvalue())["sockets"]) == len(mixed.sockets) > 2


def test_untrusted_text_never_reaches_the_terminal_raw() -> None:
    from sockdoctor.render.fmt import untrusted

    assert untrusted("nginx: worker") == "nginx: worker"
    assert untrusted("café") == "café"
    hostile = "\x1b[31mRED\nroot\tx\r\x9b\x7f"
    escaped = untrusted(hostile)
    # U+009B is a character (\u009b); \xNN above 0x7f is kept for raw bytes
    assert escaped == "\\x1b[31mRED\\nroot\\tx\\r\\u009b\\x7f"
    assert escaped.isprintable()
    assert untrusted(b"py\xff\xfe".decode("utf-8", "surrogateescape")) == "py\\xff\\xfe"
    assert untrusted("a\\x1b") == "a\\\\x1b"  # a literal backslash cannot fake an escape
    assert untrusted("\u200b") == "\\u200b"


def test_info_rates_busy_and_congestion_details_like_ss() -> None:
    """The ss -i fields beyond plain label:value, with ss's units and rules."""
    import struct

    from sockdoctor.render.infotext import info_text

    info = TcpInfo(options=1, rto=3_000_000, rtt=1000, rttvar=500, snd_mss=1000, snd_cwnd=10,
                   pacing_rate=1_000_000, max_pacing_rate=0xFFFFFFFFFFFFFFFF,
                   delivery_rate=125, busy_time=4_000_000, rwnd_limited=1_000_000,
                   sndbuf_limited=0, delivery_rate_app_limited=1, reordering=5,
                   min_rtt=0xFFFFFFFF, rcv_wnd=65536)
    sk = sock(TcpState.ESTABLISHED, "10.0.0.1", 80, "10.0.0.2", 5000, info=info, cong="bbr")
    sk.cc_info = bytes((16,)) + struct.pack("=IIIII", 1000, 0, 27, 739, 512)
    assert info_text(sk) == (
        "bbr rtt:1/0.5 mss:1000 cwnd:10 bbr:(bw:8000bps,mrtt:0.027,pacing_gain:2.88672,"
        "cwnd_gain:2) send 80000000bps pacing_rate 8000000bps delivery_rate 1000bps"
        " app_limited busy:4000ms rwnd_limited:1000ms(25.0%) reordering:5 rcv_wnd:65536")
    assert info_text(sk, options=True).startswith("ts bbr ")
    sk.cong, sk.cc_info = "dctcp", bytes((9,)) + struct.pack("=HHIII", 1, 0, 1024, 7, 9)
    assert " dctcp:(ce_state:0,alpha:1024,ab_ecn:7,ab_tot:9) " in info_text(sk)
    sk.cc_info = bytes((9,)) + struct.pack("=HHIII", 0, 0, 0, 0, 0)
    assert " dctcp:fallback_mode " in info_text(sk)
    # vegas's own rtt replaces tcp_info's in the send rate, as in ss
    sk.cong, sk.cc_info = "vegas", bytes((3,)) + struct.pack("=IIII", 1, 4, 2000, 1500)
    assert " send 40000000bps " in info_text(sk)


def test_ss_summary_from_counters_and_without_them() -> None:
    from sockdoctor.model import Netns

    socks = [sock(TcpState.LISTEN, "0.0.0.0", 80, "0.0.0.0", 0),
             sock(TcpState.ESTABLISHED, "10.0.0.1", 80, "10.0.0.2", 5000)]
    snap = snapshot(socks)
    snap.namespaces = [Netns(inode=1, name="a", kind="named", counters={
        "sockstat.sockets": {"used": 9}, "sockstat.TCP": {"inuse": 3, "orphan": 1, "tw": 2,
                                                          "alloc": 5},
        "sockstat.TCP6": {"inuse": 1}, "Tcp": {"CurrEstab": 2}})]
    lines = list(summary.render_ss(snap))
    # ss: total = alloc + tw; closed = alloc - (inuse4 + inuse6 - tw)
    assert lines[:5] == ["Total: 9", "TCP:   7 (estab 2, closed 3, orphaned 1, timewait 2)",
                         "", "Transport Total     IP        IPv6",
                         "TCP       4         3         1"]
    assert "leaves out ss's RAW, UDP, INET and FRAG rows" in lines[5]
    assert lines[-1].split() == ["TCP", "2", "2", "0"]
    snap.namespaces = []
    assert "no kernel counters" in next(summary.render_ss(snap))
