"""trace's output: records in time order, the table's widths, the summary mode."""

from __future__ import annotations

import re

import msgspec

from sockdoctor.render.trace import Table, summary
from sockdoctor.watch.events import EventOwner, LostEvent, TraceEvent
from sockdoctor.watch.reorder import Reorder
from sockdoctor.watch.tracesummary import Transitions


def ev(t: float, old: str = "ESTAB", new: str = "CLOSE-WAIT", lport: int = 8080,
       pport: int = 40000, peer: str = "10.0.0.2", owners: tuple = ((7, 5, "nginx"),),
       kind: str = "state", netns: str | None = "web", family: str = "ipv4") -> TraceEvent:
    return TraceEvent(event=kind, time=t, netns=netns, netns_inode=1 if netns else None,
                      family=family, old=old if kind == "state" else None, new=new,
                      local_addr="10.0.0.1" if family == "ipv4" else "::ffff:10.0.0.1",
                      local_port=lport, peer_addr=peer, peer_port=pport,
                      owners=[EventOwner(*o) for o in owners])


def test_records_are_released_in_time_order_up_to_the_watermark() -> None:
    r: Reorder = Reorder()
    r.push([ev(5.0), ev(3.0)])  # state changes, one batch
    r.push([ev(4.0, kind="destroy")])  # a destroy read after them, but earlier
    r.push([LostEvent(event="lost", time=3.5, source="tracefs", count=2)])
    assert [x.time for x in r.release(4.0)] == [3.0, 3.5, 4.0]
    assert r.release(4.9) == [] and len(r) == 1
    r.push([ev(4.95), ev(4.95, new="LAST-ACK")])  # equal times keep their arrival order
    assert [(x.time, getattr(x, "new", None)) for x in r.drain()] == [
        (4.95, "CLOSE-WAIT"), (4.95, "LAST-ACK"), (5.0, "CLOSE-WAIT")]


def test_columns_widen_for_long_addresses_and_stay_aligned() -> None:
    table = Table()
    header = table.header()
    short = table.line(ev(1.0))
    mapped = table.line(ev(2.0, family="ipv6", peer="::ffff:203.0.113.255", pport=65535))
    after = table.line(ev(3.0))
    assert "[::ffff:203.0.113.255]:65535" in mapped
    # PROCESS starts at the same column on every line from the long one on
    col = mapped.index("nginx(7)")
    assert after.index("nginx(7)") == col and mapped.index("web") == after.index("web")
    assert short.index("nginx(7)") < col and header.index("PROCESS") < col


def test_summary_counts_transitions_per_process_port_and_change_with_rates() -> None:
    counts = Transitions(100.0, lambda rec: rec.local_port == 8080)
    counts.add([ev(100.5 + i / 10) for i in range(8)])
    counts.add([ev(101.0, new="LAST-ACK", old="CLOSE-WAIT"),
                ev(101.0, kind="destroy", new="TIME-WAIT", owners=()),
                ev(101.2, lport=41000, pport=5432, peer="10.0.0.9", old="SYN-SENT",
                   new="ESTAB", owners=((9, 3, "worker\x1b[31m"),)),
                LostEvent(event="lost", time=101.3, source="tracefs", count=4)])
    period = counts.take(104.0)
    assert (period.changes, period.destroyed, period.lost) == (10, 1, 4)
    top = period.rows[0]
    assert (top.process, top.service, top.change, top.count, top.per_s) == (
        "nginx(7)", ":8080", "ESTAB -> CLOSE-WAIT", 8, 2.0)
    assert any(r.service == "-> 10.0.0.9:5432" and r.change == "SYN-SENT -> ESTAB"
               for r in period.rows)
    assert any(r.change == "TIME-WAIT -> destroyed" and r.process == "?" for r in period.rows)
    lines = list(summary(period))
    assert re.match(r"--- \S+  last 4\.0s: 10 state changes \(2\.5/s\), 1 destroyed, 4 lost",
                    lines[0])
    assert lines[1].split() == ["COUNT", "PER-S", "CHANGE", "PROCESS", "SERVICE", "NETNS"]
    assert lines[2].split() == ["8", "2.0", "ESTAB", "->", "CLOSE-WAIT", "nginx(7)", ":8080",
                                "web"]
    assert not any("\x1b" in line for line in lines)  # process names escaped
    # the next period starts from zero, from where this one ended
    assert counts.take(105.0).rows == [] and counts.start == 105.0
    assert msgspec.json.decode(msgspec.json.encode(period))["event"] == "summary"
