"""plan_keepalive on synthetic snapshots: what is armed, what is left alone and why."""

from __future__ import annotations

import msgspec
import pytest

from sockdoctor.doctor.synth import SnapshotBuilder
from sockdoctor.errors import EXIT_FINDINGS, EXIT_OK, EXIT_PERMISSION, UsageError
from sockdoctor.linux.host import Host
from sockdoctor.model import TcpState, state_mask
from sockdoctor.remedy import text
from sockdoctor.remedy.keepalive import Keepalive, KeepaliveReport, plan_keepalive

HOST = Host(gathered=True)
FAST = Keepalive(idle_s=2, interval_s=1, count=2)


def scene() -> SnapshotBuilder:
    b = SnapshotBuilder()
    b.process(7, "idle-server")
    b.listener(5000, pid=7)
    b.sockets(2, "established", "10.0.0.1:5000", "10.0.0.2", pid=7)
    b.socket("established", "10.0.0.1:5000", "10.0.0.3", pid=7, timer=2)  # armed already
    b.socket("close-wait", "10.0.0.1:5000", "10.0.0.2", pid=7)
    b.socket("established", "10.0.0.1:5000", "10.0.0.4", inode=99)  # owner not visible
    return b


def test_established_sockets_are_armed_by_default_and_the_input_is_untouched() -> None:
    snap = scene().build()
    before = msgspec.json.encode(snap)
    plan = plan_keepalive(snap, FAST, host=HOST)
    assert msgspec.json.encode(snap) == before
    assert [i.socket.state for i in plan.items] == [TcpState.ESTABLISHED] * 4  # type: ignore[union-attr]
    assert [i.method for i in plan.items] == ["keepalive"] * 3 + [""]
    assert "no keepalive yet" in plan.items[0].why
    assert "already running: new timings" in plan.items[2].why
    assert "ETIMEDOUT" in plan.items[0].program_sees and "probe" in plan.items[0].peer_sees
    hidden = plan.items[3]
    assert hidden.unable == "not-permitted" and "run as root" in hidden.why
    assert plan.exit_code == EXIT_PERMISSION


def test_other_states_when_asked_and_listeners_refused() -> None:
    snap = scene().build()
    states = state_mask(TcpState.CLOSE_WAIT, TcpState.LISTEN)
    plan = plan_keepalive(snap, FAST, states=states, host=HOST)
    by_state = {i.socket.state: i for i in plan.items}  # type: ignore[union-attr]
    assert by_state[TcpState.CLOSE_WAIT].method == "keepalive"
    assert "listening socket" in by_state[TcpState.LISTEN].skipped
    assert plan.exit_code == EXIT_FINDINGS
    mine = Host(gathered=True, protected=frozenset(
        {i.socket.inode for i in plan.items if i.socket}))  # type: ignore[union-attr]
    assert not plan_keepalive(snap, FAST, states=states, host=mine).actions


def test_max_and_the_kernels_limits() -> None:
    with pytest.raises(UsageError, match="more than --max 2"):
        plan_keepalive(scene().build(), FAST, max_count=2, host=HOST)
    for bad in (dict(idle_s=0), dict(interval_s=40000), dict(count=128)):
        with pytest.raises(UsageError, match="between 1 and"):
            Keepalive(**{"idle_s": 2, "interval_s": 1, "count": 2, **bad})  # type: ignore[arg-type]
    assert FAST.dead_after_s == 4 and FAST.text() == "idle 2s, interval 1s, count 2"


def test_the_plan_text() -> None:
    b = SnapshotBuilder()
    b.process(7, "idle-server")
    b.sockets(2, "established", "10.0.0.1:5000", "10.0.0.2", pid=7)
    plan = plan_keepalive(b.build(), FAST, host=HOST)
    lines = list(text.render_keepalive_plan(plan))
    assert lines[0] == ("Plan: keepalive (idle 2s, interval 1s, count 2) on 2 of 2 selected "
                        "sockets: would be armed in network namespace host.")
    assert "noticed at most 4s after it last spoke" in lines[1]
    assert any("idle-server(7) fd" in line for line in lines)
    assert KeepaliveReport(plan=plan, applied=False).exit_code == EXIT_OK


def test_keepalive_selects_as_a_kill_does_with_its_own_default(monkeypatch: pytest.MonkeyPatch
                                                               ) -> None:
    """One meaning of "states named" (KillPolicy's): states named in the query itself
    (--state, the filter's state words, a -F file) are used as given, in the scan and
    in the plan alike; only a query naming none gets ESTABLISHED."""
    import sockdoctor.inventory
    from sockdoctor.query import Query
    from sockdoctor.remedy.keepalive import keepalive_policy, scan_for_keepalive
    from sockdoctor.remedy.policy import KillPolicy

    close_wait = Query.build(states=["close-wait"])
    plan = plan_keepalive(scene().build(), FAST, where=close_wait, host=HOST)
    assert [i.socket.state for i in plan.items] == [TcpState.CLOSE_WAIT]  # type: ignore[union-attr]
    assert plan.actions
    scanned: list[Query] = []
    monkeypatch.setattr(sockdoctor.inventory, "scan",
                        lambda query, **kw: scanned.append(query) or scene().build())
    scan_for_keepalive(close_wait)
    scan_for_keepalive(Query.build(ports=[5000]))
    assert [q.states for q in scanned] == [state_mask(TcpState.CLOSE_WAIT),
                                           state_mask(TcpState.ESTABLISHED)]
    policy = keepalive_policy(Query.build("state all"), force=True)
    assert isinstance(policy, KillPolicy) and policy.force
    assert policy.query.states == Query.build("state all").states  # named: all, as asked
    assert keepalive_policy(states=state_mask(TcpState.LISTEN)).query.states == \
        state_mask(TcpState.LISTEN)
    assert KillPolicy().query.states == state_mask(TcpState.CLOSE_WAIT)  # a kill's default
