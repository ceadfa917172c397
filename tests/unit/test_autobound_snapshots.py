"""Every consumer of a snapshot judges `autobound` by each namespace's recorded range.

Two namespaces hold the same connection (local port 20500): one records
ip_local_port_range 20000-20999, the other 40000-40999. Only the first's
socket is autobound, whichever consumer asks, and whatever this machine's
own range is.
"""

from __future__ import annotations

from sockdoctor.doctor import scope
from sockdoctor.doctor.synth import SnapshotBuilder
from sockdoctor.model import Snapshot, TcpState, state_mask
from sockdoctor.query import Query
from sockdoctor.remedy.policy import KillPolicy
from sockdoctor.watch.events import TraceEvent
from sockdoctor.watch.trace import EventFilter

RANGE = "net.ipv4.ip_local_port_range"


def two_hosts() -> tuple[Snapshot, int]:
    b = SnapshotBuilder()
    narrow = b.netns("narrow", sysctls={RANGE: "20000 20999"})
    b.netns("wide", sysctls={RANGE: "40000 40999"})
    for ns in ("narrow", "wide"):
        b.socket("established", "10.0.0.1:20500", "10.0.0.2:80", pid=100, netns=ns)
    return b.build(), narrow


def test_a_saved_snapshot_is_judged_per_namespace() -> None:
    snap, narrow = two_hosts()
    chosen = Query.build("autobound").apply(snap).sockets
    assert [sk.netns for sk in chosen] == [narrow]


def test_the_doctor_scope_judges_per_namespace() -> None:
    snap, narrow = two_hosts()
    _, found = scope.select(snap, Query.build("autobound"))
    assert found is not None and found.ports == {(narrow, 20500), (narrow, 80)}


def test_a_kill_or_reap_policy_judges_per_namespace() -> None:
    snap, narrow = two_hosts()
    policy = KillPolicy(states=state_mask(TcpState.ESTABLISHED),
                        where=Query.build("autobound"))
    selects = policy.selector(snap)
    assert [sk.netns for sk in snap.sockets if selects(sk)] == [narrow]


def test_trace_judges_events_by_the_sampled_namespaces() -> None:
    snap, narrow = two_hosts()
    events = EventFilter(Query.build("autobound"), None)
    events.rest.learn(snap.namespaces)  # what Tracer does with each sample
    for sk in snap.sockets:
        rec = TraceEvent(event="state", time=0.0, netns=None, netns_inode=sk.netns,
                         family="ipv4", local_addr=sk.local_addr, local_port=sk.local_port,
                         peer_addr=sk.peer_addr, peer_port=sk.peer_port, owners=[])
        assert events.match(sk.state, sk.state, rec) is (sk.netns == narrow)
