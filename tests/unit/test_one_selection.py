"""One selection: every consumer of a Query chooses what Query.select chooses.

A query meets a snapshot in one place, `Query.select`. Each consumer (ls
--from through Query.apply, the doctor's scope, the kill policy and its
plan, the reaper's command-line filter, top, trace's event filter) is run
here on the same synthetic snapshot with a range of queries and compared
with it: a second selection path that drifts (forgets the family, reads
--process another way, ignores --netns or the age) fails here. A source
check keeps the per-socket matchers out of modules that have no business
calling them, so a new private selection loop is caught before it drifts.
The meaning of --dead-fds, shared by the CLI and the library, is pinned in
tests/integration/test_one_selection_live.py on real sockets.
"""

from __future__ import annotations

import ast
import dataclasses
import socket
import textwrap
import tomllib
from pathlib import Path

import pytest

from sockdoctor.doctor import scope
from sockdoctor.doctor.synth import SnapshotBuilder
from sockdoctor.linux.host import Host
from sockdoctor.model import ALL_STATES_MASK, Snapshot, Socket, TcpState, state_mask
from sockdoctor.query import Query
from sockdoctor.reap.policy import parse
from sockdoctor.reap.reaper import Reaper
from sockdoctor.remedy import KillPolicy, plan_kill
from sockdoctor.remedy.policy import DEFAULT_STATES, dead_fds_mode
from sockdoctor.watch import Sample
from sockdoctor.watch.events import EventOwner, TraceEvent
from sockdoctor.watch.top import TopModel
from sockdoctor.watch.trace import EventFilter

HOST = Host(gathered=True, destroy=True)
OLD = 700_000  # ms: older than 10m


def build() -> Snapshot:
    """Two namespaces, three programs, every kind of socket a filter can tell apart."""
    b = SnapshotBuilder()
    b.process(10, "nginx")
    b.process(20, "php-fpm7", netns="web")
    b.process(30, "billing")
    b.listener(8080, pid=10)
    b.listener(9000, pid=20, netns="web")
    b.socket("established", "10.0.0.1:8080", "10.0.0.2", pid=10)
    b.socket("close-wait", "10.0.0.1:8080", "10.0.0.3", pid=10, age_ms=OLD)
    b.socket("close-wait", "10.0.0.1:8080", "10.0.0.3", pid=10)
    b.socket("close-wait", "[fd00::1]:8080", "[fd00::2]:41000", pid=10, age_ms=OLD)
    b.socket("fin-wait-2", "10.0.0.1:8080", "10.0.0.4")
    b.socket("time-wait", "10.0.0.1:8080", "10.0.0.5")
    b.socket("established", "10.0.0.1", "10.0.0.9:5432", pid=30, age_ms=OLD)
    b.socket("close-wait", "10.0.0.1", "10.0.0.9:5432", pid=30)
    b.socket("last-ack", "10.1.0.1:9000", "10.1.0.2", netns="web")
    b.socket("close-wait", "10.1.0.1:9000", "10.1.0.2", pid=20, netns="web", age_ms=OLD)
    b.socket("established", "10.1.0.1:9000", "10.1.0.3", pid=20, netns="web")
    return b.build()


QUERIES = {
    "nothing": lambda: Query.build(),
    "state words": lambda: Query.build("state close-wait"),
    "--state": lambda: Query.build(states=["established", "close-wait"]),
    "--port": lambda: Query.build(ports=[8080]),
    "expression": lambda: Query.build("dport = :5432"),
    "--pid": lambda: Query.build(pids=[10]),
    "--process glob": lambda: Query.build(process="php*"),
    "--older-than": lambda: Query.build(older_than="10m"),
    "--netns": lambda: Query.build(netns="web"),
    "all of it": lambda: Query.build("state close-wait", netns="web", process="php*"),
    "-6": lambda: Query.build(family=socket.AF_INET6),
    "exclude": lambda: Query.build("exclude listening", ports=[8080]),
    "state all": lambda: Query.build("state all"),
}


@pytest.fixture(params=sorted(QUERIES))
def query(request: pytest.FixtureRequest) -> Query:
    return QUERIES[request.param]()


def ids(sockets: list[Socket]) -> list[int]:
    return [sk.cookie for sk in sockets]


def no_listeners(sockets: list[Socket]) -> list[int]:
    return [sk.cookie for sk in sockets if sk.state != TcpState.LISTEN]


def test_the_snapshot_and_queries_tell_the_sockets_apart() -> None:
    """The comparisons below are worth something: the queries choose different sets."""
    snap = build()
    chosen = {name: tuple(ids(make().select(snap))) for name, make in QUERIES.items()}
    assert len(set(chosen.values())) == len(chosen) - 1  # "state all" is "nothing"
    assert 0 < len(chosen["all of it"]) < len(chosen["--netns"]) < len(snap.sockets)


def test_ls_from_a_file_is_select(query: Query) -> None:
    snap = build()
    assert ids(query.apply(snap).sockets) == ids(query.select(snap))


def test_the_doctors_scope_is_select_with_listeners_as_context(query: Query) -> None:
    snap = build()
    view, found = scope.select(snap, query)
    chosen = query.select(snap)
    assert no_listeners(view.sockets) == no_listeners(chosen)
    assert (found is not None) == query.narrows
    if found is not None:
        assert found.pids == {o.pid for sk in chosen for o in sk.owners}


def test_the_kill_policy_and_its_plan_are_select(query: Query) -> None:
    snap = build()
    default = query if query.names_states else dataclasses.replace(query, states=DEFAULT_STATES)
    for policy, want in ((KillPolicy(where=query), default),  # CLOSE-WAIT unless named
                         (KillPolicy(where=query, states=ALL_STATES_MASK), query)):
        plan = plan_kill(snap, policy, host=HOST)
        chosen = ids(want.select(snap))
        assert [i.socket.cookie for i in plan.items if i.socket is not None] == chosen
        assert ids(policy.query.select(snap)) == chosen


def test_the_reapers_command_line_filter_is_select(query: Query) -> None:
    snap = build()
    policy = parse(tomllib.loads('[[rule]]\nname = "x"\nport = 1\n'), "reap.toml")
    reaper = Reaper(policy, apply=False, host=HOST, audit_log=None, narrow=query)
    view = reaper._view(Sample(seq=1, started=snap.created, snapshot=snap))
    assert no_listeners(view.sockets) == no_listeners(query.select(snap))


@dataclasses.dataclass
class TopSample:
    snapshot: Snapshot
    report: object = None
    previous: object = None
    first_seen: dict = dataclasses.field(default_factory=dict)

    def age_ms(self, sk: Socket) -> int | None:
        return sk.age_ms


def test_top_counts_what_select_chooses(query: Query) -> None:
    """top's sampler chose the namespaces (--netns); its filter picks sockets in them."""
    snap = build()
    model = TopModel(query)
    model.update(TopSample(snap))
    everywhere = dataclasses.replace(query, netns="all")
    assert sum(g.count for g in model.groups) == len(everywhere.select(snap))


def event(sk: Socket, snap: Snapshot) -> TraceEvent:
    owners = [EventOwner(o.pid, o.fd, snap.processes[o.pid].comm) for o in sk.owners]
    return TraceEvent(event="state", time=0.0, netns=None, netns_inode=sk.netns,
                      family="ipv6" if sk.family == socket.AF_INET6 else "ipv4",
                      local_addr=sk.local_addr, local_port=sk.local_port,
                      peer_addr=sk.peer_addr, peer_port=sk.peer_port, cookie=sk.cookie,
                      inode=sk.inode, owners=owners)


def test_traces_event_filter_is_the_same_test(query: Query) -> None:
    """trace sees changes, not ages: the age part is its only difference."""
    snap = build()
    inodes = None if query.netns == "all" else {ns.inode for ns in query.namespaces(snap)}
    events = EventFilter(query, inodes)
    ageless = dataclasses.replace(query, older_than_ms=None)
    matched = [sk.cookie for sk in snap.sockets
               if events.match(sk.state, sk.state, event(sk, snap))]
    assert matched == ids(ageless.select(snap))


def test_narrows_is_one_answer() -> None:
    assert not Query.build().narrows and not Query.build("state all").narrows
    assert not Query.build(netns="web").narrows  # chooses namespaces, not sockets in them
    for name in ("state words", "--port", "--pid", "--process glob", "--older-than", "-6"):
        assert QUERIES[name]().narrows, name


def test_the_kernel_part_comes_from_the_same_query() -> None:
    q = Query.build("state close-wait", ports=[8080])
    assert q.kernel_filter().states == q.states == state_mask(TcpState.CLOSE_WAIT)
    assert q.kernel_filter().bytecode  # the port program
    assert q.kernel_filter(evidence=True).states == ALL_STATES_MASK  # the doctor sees all
    assert q.kernel_filter(evidence=True).bytecode == b""
    assert Query.build().kernel_filter().bytecode == b""


def test_the_scan_asks_the_kernel_what_kernel_filter_says() -> None:
    """inventory.dump_options derives the dump request from Query.kernel_filter alone:
    a query that decides its kernel part differently is dumped that way."""
    from sockdoctor.inventory import dump_options
    from sockdoctor.query import KernelFilter

    class Narrower(Query):
        def kernel_filter(self, evidence: bool = False) -> KernelFilter:
            return KernelFilter(state_mask(TcpState.LISTEN), b"program", frozenset({22}))

    opts = dump_options(Narrower(ports=frozenset({8080})))
    assert (opts.states, opts.bytecode, opts.ports) == (state_mask(TcpState.LISTEN),
                                                        b"program", frozenset({22}))
    q = Query.build("state close-wait", ports=[8080])
    opts = dump_options(q, evidence=True)  # the doctor's evidence: every socket, no program
    assert (opts.states, opts.bytecode, opts.ports) == (ALL_STATES_MASK, b"", frozenset())
    assert dump_options(q).ports == q.kernel_filter().ports == frozenset({8080})


def test_dead_fds_means_only_alone_and_also_with_states() -> None:
    assert dead_fds_mode(False, Query.build("state close-wait")) == "no"
    assert dead_fds_mode(True, Query.build(pids=[10])) == "only"
    assert dead_fds_mode(True, None) == "only"
    assert dead_fds_mode(True, Query.build(states=["close-wait"])) == "also"
    assert dead_fds_mode(True, Query.build("state fin-wait-2")) == "also"


def test_a_kill_policy_holds_one_query_and_copies_keep_it() -> None:
    p = KillPolicy(where=Query.build(ports=[8080]), states=ALL_STATES_MASK,
                   older_than_ms=60_000)
    assert p.query.states == ALL_STATES_MASK and p.query.older_than_ms == 60_000
    copy = dataclasses.replace(p, max_count=5)
    assert copy.query == p.query and copy.state_mask == ALL_STATES_MASK
    escalate = dataclasses.replace(p, where=Query(states=1 << TcpState.LAST_ACK))
    assert escalate.state_mask == 1 << TcpState.LAST_ACK  # the copy's own query wins
    assert KillPolicy().state_mask == DEFAULT_STATES  # CLOSE-WAIT unless states are named
    named = KillPolicy(where=Query.build("state established"))
    assert named.state_mask == state_mask(TcpState.ESTABLISHED)


# Where the per-socket matchers may be called, and why. Anything else that calls them
# is a second selection path: use Query.select (or Query.selects for a non-snapshot).
ALLOWED = {
    "query.py": "defines them",
    "inventory.py": "the scan collects only what the query asks (owners, ages)",
    "watch/trace.py": "events are not a snapshot: Query.selects on each",
    "remedy/plan.py": "dead descriptors are matched by their holder (match_owner)",
    "leakguard.py": "an allow rule is a filter over one leaked socket",
}
MATCHERS = {"match_socket", "match_owner", "selects"}


def test_no_second_selection_path_in_the_source() -> None:
    src = Path(__file__).resolve().parents[2] / "src" / "sockdoctor"
    offenders = []
    for path in sorted(src.rglob("*.py")):
        name = path.relative_to(src).as_posix()
        if name in ALLOWED:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                    and node.func.attr in MATCHERS:
                offenders.append(f"{name}:{node.lineno} calls .{node.func.attr}()")
            if isinstance(node, ast.FunctionDef) and node.name == "narrows":
                offenders.append(f"{name}:{node.lineno} defines narrows() again")
    assert offenders == [], textwrap.indent("\n".join(offenders), "  ")


def test_build_takes_the_named_flags_and_refuses_a_misspelt_one() -> None:
    q = Query.build("state close-wait", ports=[8080], pids=[10], process="php*",
                    older_than="10m", netns="web", family=socket.AF_INET)
    assert (q.ports, q.pids, q.process, q.older_than_ms, q.netns) == (
        {8080}, {10}, "php*", 600_000, "web")
    with pytest.raises(TypeError, match="'port'"):
        Query.build(port=[8080])  # type: ignore[call-arg]
