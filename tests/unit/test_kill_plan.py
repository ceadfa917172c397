"""The kill planner, its guards and its report, on synthetic snapshots (no root, no kernel).

Which method each socket gets (by state, ownership and what the kernel
allows), why, and what the program and the peer are told they will see;
the guards (listeners, sockdoctor's own session, $SSH_CONNECTION, --max);
the exit codes of a report; the pacing of --rate; the audit log; the text.
"""

from __future__ import annotations

import json
from pathlib import Path

import click
import pytest

from sockdoctor import remedy
from sockdoctor.cli.kill import _rate
from sockdoctor.doctor.synth import SnapshotBuilder
from sockdoctor.errors import (
    EXIT_FINDINGS,
    EXIT_OK,
    EXIT_PERMISSION,
    EXIT_UNSUPPORTED,
    PermissionDeniedError,
    UsageError,
)
from sockdoctor.model import Snapshot, Socket, TcpState
from sockdoctor.remedy import KillReport, audit, methods, text, verify
from sockdoctor.remedy.plan import Capabilities, Plan, PlanItem, build, dead_fd_items
from sockdoctor.remedy.verify import Outcome

APP = 4242  # the owning program
SERVER = "10.0.0.1:8080"
CLIENT = "10.0.0.2"


@pytest.fixture(autouse=True)
def no_ssh_session(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SSH_CONNECTION", raising=False)


class Scene:
    """One namespace with a server on :8080 (pid 4242) and a socket in every situation."""

    def __init__(self) -> None:
        b = self.b = SnapshotBuilder()
        b.process(APP, "app")
        self.listener = b.listener(8080, pid=APP)
        self.owned_cw = b.socket("close-wait", SERVER, CLIENT, pid=APP)
        self.owned_est = b.socket("established", SERVER, CLIENT, pid=APP)
        self.owned_fw2 = b.socket("fin-wait-2", SERVER, CLIENT, pid=APP)
        self.queued_cw = b.queued(1, "close-wait", SERVER, CLIENT, self.listener)[0]
        self.orphan_fw2 = b.socket("fin-wait-2", SERVER, CLIENT)
        self.orphan_last_ack = b.socket("last-ack", SERVER, CLIENT)
        self.time_wait = b.socket("time-wait", SERVER, CLIENT)
        self.hidden = b.socket("close-wait", SERVER, CLIENT, inode=777)  # owner not visible

    def plan(self, sk: Socket, method: str = "auto", caps: Capabilities | None = None,
             **kw: object) -> PlanItem:
        snap = self.b.build()
        (twin,) = [s for s in snap.sockets if s.cookie == sk.cookie]
        kw.setdefault("protected", set())
        return build(snap, [twin], method=method, caps=caps, **kw).items[0]  # type: ignore[arg-type]


@pytest.fixture
def scene() -> Scene:
    return Scene()


# --- auto: the safest method that works ------------------------------------------

@pytest.mark.parametrize(("name", "method", "because"), [
    ("owned_cw", "fin", "still has to send its FIN"),
    ("owned_est", "fin", "still has to send its FIN"),
    ("queued_cw", "drain", "never accept()ed"),
    ("owned_fw2", "destroy", "our FIN is already out (FIN-WAIT-2)"),
    ("orphan_fw2", "destroy", "no process holds it"),
    ("orphan_last_ack", "destroy", "no process holds it"),
    ("time_wait", "destroy", "no process holds it"),
    ("hidden", "destroy", "not visible here"),
])
def test_auto_picks_per_state_and_owner(scene: Scene, name: str, method: str,
                                        because: str) -> None:
    item = scene.plan(getattr(scene, name))
    assert item.method == method and because in item.why
    assert item.program_sees and item.peer_sees and not item.unable


def test_auto_without_a_visible_listener_owner_destroys_a_queued_socket() -> None:
    b = SnapshotBuilder()
    lst = b.listener(8080)  # nobody visible holds it
    sk = b.queued(1, "close-wait", SERVER, CLIENT, lst)[0]
    item = build(b.build(), [sk], protected=set()).items[0]
    assert item.method == "destroy" and item.listener is None


def test_a_queued_socket_gets_its_listeners_owner(scene: Scene) -> None:
    item = scene.plan(scene.queued_cw, "drain")
    assert item.listener is not None and (item.listener.pid, item.listener.comm) == (APP, "app")
    assert item.listener_inode == scene.listener.inode
    for orphan in (scene.orphan_fw2, scene.time_wait, scene.hidden):  # not in any queue
        assert scene.plan(orphan).listener is None


def test_the_listener_bound_to_the_exact_address_wins_over_a_wildcard() -> None:
    b = SnapshotBuilder()
    b.process(1, "wild")
    b.process(2, "exact")
    b.listener(8080, pid=1, addr="0.0.0.0")
    exact = b.listener(8080, pid=2, addr="10.0.0.1")
    sk = b.queued(1, "close-wait", SERVER, CLIENT, exact)[0]
    item = build(b.build(), [sk], protected=set()).items[0]
    assert item.method == "drain" and item.listener is not None and item.listener.pid == 2


# --- when the kernel or our privileges say no ------------------------------------------

def test_auto_falls_back_to_rst_without_socket_destroy(scene: Scene) -> None:
    caps = Capabilities(destroy=False, destroy_note="this kernel was built without socket "
                                                    "destroy support")
    for sk in (scene.orphan_fw2, scene.time_wait, scene.queued_cw):
        item = scene.plan(sk, caps=Capabilities(destroy=False, pidfd=False))
        assert item.method == "rst", item.why
    item = scene.plan(scene.time_wait, caps=caps)
    assert "built without socket destroy support: forged RST" in item.why
    assert scene.plan(scene.owned_cw, caps=caps).method == "fin"  # fin needs no destroy


def test_auto_with_nothing_available_is_not_permitted(scene: Scene) -> None:
    caps = Capabilities(destroy=False, raw=False, destroy_denied=True,
                        destroy_note="destroying sockets needs CAP_NET_ADMIN (run as root)")
    item = scene.plan(scene.time_wait, caps=caps)
    assert (item.method, item.unable) == ("", "not-permitted")
    assert "CAP_NET_ADMIN" in item.why and "CAP_NET_RAW" in item.why


def test_auto_without_pidfd_getfd_destroys_owned_sockets(scene: Scene) -> None:
    item = scene.plan(scene.owned_cw, caps=Capabilities(pidfd=False))
    assert item.method == "destroy" and "pidfd_getfd" in item.why


@pytest.mark.parametrize(("method", "caps", "unable", "words"), [
    ("destroy", Capabilities(destroy=False, destroy_note="built without it"), "unsupported",
     "built without it"),
    ("destroy", Capabilities(destroy=False, destroy_denied=True, destroy_note="needs root"),
     "not-permitted", "needs root"),
    ("fin", Capabilities(pidfd=False), "unsupported", "Linux >= 5.6"),
    ("close", Capabilities(ptrace_close=False), "unsupported", "x86_64"),
    ("rst", Capabilities(raw=False), "not-permitted", "CAP_NET_RAW"),
])
def test_an_explicit_method_the_kernel_or_privileges_forbid(
        scene: Scene, method: str, caps: Capabilities, unable: str, words: str) -> None:
    item = scene.plan(scene.owned_cw, method, caps)
    assert (item.method, item.unable) == ("", unable)
    assert words in item.why and not item.program_sees


# --- explicit methods: where they apply and why not ---------------------------------------

@pytest.mark.parametrize(("name", "method", "applies", "words"), [
    ("owned_cw", "fin", True, "graceful shutdown"),
    ("owned_est", "fin", True, "graceful shutdown"),
    ("queued_cw", "fin", False, "none does (try drain or destroy)"),
    ("orphan_fw2", "fin", False, "none does (try destroy)"),
    ("owned_fw2", "fin", False, "our FIN was already sent"),
    ("owned_cw", "drain", False, "only applies to connections waiting in an accept queue"),
    ("queued_cw", "drain", True, "accept it from the listener's queue"),
    ("owned_fw2", "close", True, "injected into the owner"),
    ("queued_cw", "close", False, "none does"),
    ("time_wait", "close", False, "none does"),
    ("queued_cw", "destroy", True, "accept-queue slot stays taken"),
    ("time_wait", "destroy", True, "SOCK_DESTROY"),
    ("time_wait", "rst", True, "tcp_rfc1337"),
    ("orphan_fw2", "rst", True, "forged RST"),
])
def test_explicit_methods(scene: Scene, name: str, method: str, applies: bool,
                          words: str) -> None:
    item = scene.plan(getattr(scene, name), method)
    assert item.method == (method if applies else "")
    assert words in item.why
    assert item.unable == ""  # where it does not apply, it is not for want of rights


def test_fin_and_close_on_a_socket_whose_owner_is_hidden_need_rights(scene: Scene) -> None:
    for method in ("fin", "close"):
        item = scene.plan(scene.hidden, method)
        assert (item.method, item.unable) == ("", "not-permitted")
        assert "run as root" in item.why


# --- what the program and the peer will see ------------------------------------------------

@pytest.mark.parametrize(("name", "method", "program", "peer"), [
    ("owned_cw", "fin", "descriptor stays open", "its read returns EOF"),
    ("owned_est", "destroy", "ECONNABORTED", "ECONNRESET"),
    ("owned_est", "close", "may later reuse that number", "its read returns EOF"),
    ("owned_fw2", "close", "descriptor is closed", "our FIN went out already"),
    ("owned_fw2", "destroy", "ECONNABORTED", "EPIPE"),
    ("orphan_fw2", "destroy", "no program holds it", "next write is answered with"),
    ("orphan_fw2", "rst", "no program holds it", "EPIPE"),
    ("orphan_last_ack", "destroy", "no program holds it", "closed its side already"),
    ("time_wait", "destroy", "no program holds it", "closed its side already"),
    ("time_wait", "rst", "no program holds it", "closed its side already"),
    ("queued_cw", "destroy", "accept() still hands it out later", "ECONNRESET"),
    ("queued_cw", "drain", "never accept()ed", "its read returns EOF"),
])
def test_what_each_side_will_see(scene: Scene, name: str, method: str, program: str,
                                 peer: str) -> None:
    item = scene.plan(getattr(scene, name), method)
    assert item.method == method
    assert program in item.program_sees and peer in item.peer_sees


# --- guards -----------------------------------------------------------------------------

def test_listeners_are_refused_unless_forced(scene: Scene) -> None:
    item = scene.plan(scene.listener)
    assert item.method == "" and "listening socket" in item.skipped
    assert item.why.startswith("refused: ")
    forced = scene.plan(scene.listener, force=True)
    assert forced.method == "destroy" and "a listening socket" in forced.why
    assert "stops listening" in forced.program_sees
    assert scene.plan(scene.listener, "fin", force=True).method == ""


def test_sockets_of_sockdoctor_and_its_ancestors_are_refused(scene: Scene) -> None:
    item = scene.plan(scene.owned_cw, protected={scene.owned_cw.inode})
    assert item.method == "" and "held by sockdoctor" in item.skipped
    assert scene.plan(scene.owned_cw, protected={scene.owned_cw.inode}, force=True).method


def test_own_ancestors_are_found_in_proc() -> None:
    import os
    import socket

    with socket.socket() as mine:  # held by this very process
        assert os.fstat(mine.fileno()).st_ino in remedy.plan.protected_inodes()


@pytest.mark.parametrize("addr", ["10.0.0.1", "::ffff:10.0.0.1"])
def test_the_ssh_connection_of_the_caller_is_refused(monkeypatch: pytest.MonkeyPatch,
                                                     addr: str) -> None:
    b = SnapshotBuilder()
    b.process(APP, "sshd")
    peer = "10.0.0.2" if ":" not in addr else "::ffff:10.0.0.2"
    ssh = b.socket("established", f"[{addr}]:22" if ":" in addr else f"{addr}:22",
                   f"[{peer}]:50022" if ":" in peer else f"{peer}:50022", pid=APP)
    other = b.socket("established", "10.0.0.1:22", "10.0.0.2:50023", pid=APP)
    monkeypatch.setenv("SSH_CONNECTION", "10.0.0.2 50022 10.0.0.1 22")
    items = build(b.build(), [ssh, other], protected=set()).items
    assert "SSH" in items[0].skipped and items[0].method == ""
    assert items[1].method == "fin"


@pytest.mark.parametrize("value", ["", "garbage", "10.0.0.2 x 10.0.0.1 22"])
def test_a_malformed_ssh_connection_guards_nothing(monkeypatch: pytest.MonkeyPatch,
                                                   value: str) -> None:
    monkeypatch.setenv("SSH_CONNECTION", value)
    assert remedy.plan.ssh_endpoints() == set()


# --- kill(): --max, dry run, applying a plan that has nothing to do -------------------------

@pytest.fixture
def no_kernel(monkeypatch: pytest.MonkeyPatch) -> dict[str, Capabilities]:
    """kill() without probing this kernel: the capabilities are what the test says."""
    state = {"caps": Capabilities()}
    monkeypatch.setattr(remedy, "probe", lambda need: state["caps"])
    monkeypatch.setattr(remedy.plan, "protected_inodes", lambda: set())
    return state


def close_waits(n: int) -> Snapshot:
    b = SnapshotBuilder()
    b.process(APP, "app")
    b.sockets(n, "close-wait", SERVER, CLIENT, pid=APP)
    return b.build()


def test_max_refuses_before_anything_is_planned_for_real(no_kernel: dict) -> None:
    with pytest.raises(UsageError, match=r"act on 5 sockets, more than --max 2") as err:
        remedy.kill(close_waits(5), max_count=2, dry_run=False, audit_log=None)
    assert err.value.exit_code == 2
    report = remedy.kill(close_waits(5), max_count=5)
    assert len(report.plan.actions) == 5


def test_a_dry_run_is_the_plan_and_exits_0(no_kernel: dict) -> None:
    report = remedy.kill(close_waits(3))
    assert not report.applied and report.outcomes == [] and report.exit_code == EXIT_OK
    assert report.plan.count_by_method() == {"fin": 3}


def test_unknown_method_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="unknown method 'nuke'"):
        remedy.kill([], method="nuke")


def test_applying_a_plan_with_nothing_to_do_says_why_for_each(no_kernel: dict,
                                                              tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    report = remedy.kill(close_waits(2), method="drain", dry_run=False, audit_log=str(log))
    assert report.applied and report.exit_code == EXIT_FINDINGS
    assert [o.outcome for o in report.outcomes] == ["not-applicable"] * 2
    assert all("accept queue" in o.detail for o in report.outcomes)
    assert not log.exists()  # nothing was done, so nothing to log

    no_kernel["caps"] = Capabilities(destroy=False, destroy_note="built without it")
    unsupported = remedy.kill(close_waits(2), method="destroy", dry_run=False, audit_log=None)
    assert [o.outcome for o in unsupported.outcomes] == ["unsupported"] * 2
    assert unsupported.exit_code == EXIT_UNSUPPORTED
    assert "socket destroy: built without it" in unsupported.plan.notes

    no_kernel["caps"] = Capabilities(raw=False)
    denied = remedy.kill(close_waits(1), method="rst", dry_run=False, audit_log=None)
    assert denied.exit_code == EXIT_PERMISSION


# --- exit codes ------------------------------------------------------------------------------

def outcome(name: str, index: int = 1) -> Outcome:
    return Outcome(index=index, label="x", netns="ns", method="destroy", outcome=name,
                   detail="")


@pytest.mark.parametrize(("names", "code"), [
    ([], EXIT_OK),
    (["closed", "closing", "already-gone"], EXIT_OK),
    (["closed", "survived"], EXIT_FINDINGS),
    (["half-closed"], EXIT_FINDINGS),
    (["skipped"], EXIT_FINDINGS),
    (["not-applicable", "closed"], EXIT_FINDINGS),
    (["identity-changed"], EXIT_FINDINGS),
    (["not-permitted", "not-permitted"], EXIT_PERMISSION),
    (["closed", "not-permitted"], EXIT_PERMISSION),
    (["unsupported"], EXIT_UNSUPPORTED),
    (["closed", "unsupported"], EXIT_UNSUPPORTED),
    (["unsupported", "not-permitted"], EXIT_FINDINGS),
    (["unsupported", "failed"], EXIT_FINDINGS),
])
def test_report_exit_codes(names: list[str], code: int) -> None:
    report = KillReport(plan=Plan(items=[], method="auto"), applied=True,
                        outcomes=[outcome(n, i) for i, n in enumerate(names)])
    assert report.exit_code == code
    assert KillReport(plan=report.plan, applied=False, outcomes=report.outcomes).exit_code == 0


# --- verification -----------------------------------------------------------------------------

@pytest.mark.parametrize(("state", "inode", "expected"), [
    (None, 0, "closed"),
    (TcpState.TIME_WAIT, 0, "closing"),
    (TcpState.LAST_ACK, 0, "closing"),
    (TcpState.FIN_WAIT1, 0, "closing"),
    (TcpState.FIN_WAIT2, 5, "half-closed"),
    (TcpState.LAST_ACK, 5, "survived"),
    (TcpState.CLOSE_WAIT, 5, "survived"),
])
def test_judging_the_socket_after_acting(scene: Scene, state: int | None, inode: int,
                                         expected: str) -> None:
    item = scene.plan(scene.owned_cw)
    now = None if state is None else Socket(0, 2, state, "10.0.0.1", 8080, "10.0.0.2", 1, inode,
                                            1, 0, 0, 0)
    assert verify._judge(item, now)[0] == expected


def test_items_not_acted_on_get_their_reason_as_outcome(scene: Scene) -> None:
    snap = scene.b.build()
    caps = Capabilities(raw=False)
    plan = build(snap, snap.sockets, method="rst", caps=caps, protected=set())
    result = verify.outcomes(plan.items, [], {})
    by_index = {o.index: o.outcome for o in result}
    assert by_index[1] == "skipped"  # the listener
    assert set(by_index.values()) == {"skipped", "not-permitted"}


# --- dead descriptors -----------------------------------------------------------------------

def test_dead_descriptors_are_closed_and_numbered_on(scene: Scene) -> None:
    scene.b.process(99, "other")
    scene.b.dead_fd(APP, 2)
    scene.b.dead_fd(99, 1)
    snap = scene.b.build()
    items = dead_fd_items(snap, 10, {APP}, Capabilities())
    assert [i.index for i in items] == [10, 11]
    assert {i.method for i in items} == {"close"} and all(i.dead_inode for i in items)
    assert items[0].label.startswith("dead fd ") and "app(4242)" in items[0].label
    every = dead_fd_items(snap, 1, None, Capabilities(ptrace_close=False))
    assert len(every) == 3 and {(i.method, i.unable) for i in every} == {("", "unsupported")}


# --- pacing, the audit log, the --rate option ---------------------------------------------------

class Clock:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(round(seconds, 6))
        self.now += seconds


def test_pacer_spaces_actions_and_batches_only_without_a_rate(
        monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    monkeypatch.setattr(methods.time, "monotonic", clock.monotonic)
    monkeypatch.setattr(methods.time, "sleep", clock.sleep)
    free = methods.Pacer(0)
    assert free.batch_size(256) == 256
    for _ in range(3):
        free.wait()
    assert clock.slept == []
    paced = methods.Pacer(4)  # 4 per second: 0.25 s apart
    assert paced.batch_size(256) == 1
    for _ in range(3):
        paced.wait()
    assert clock.slept == [0.25, 0.25]
    clock.now += 10  # idle for a while: no catching up in a burst
    paced.wait()
    paced.wait()
    assert clock.slept == [0.25, 0.25, 0.25]


@pytest.mark.parametrize(("text", "rate"), [(None, 0.0), ("50/s", 50.0), ("2.5", 2.5)])
def test_rate_option(text: str | None, rate: float) -> None:
    assert _rate(text) == rate


@pytest.mark.parametrize("text", ["fast", "0/s", "-1"])
def test_bad_rate_option(text: str) -> None:
    with pytest.raises(click.BadParameter):
        _rate(text)


def test_audit_log_appends_one_json_line_per_entry(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "audit.jsonl"
    for n in range(2):
        log = audit.AuditLog(str(path))
        log.write({"method": "fin", "n": n})
        log.close()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["n"] for line in lines] == [0, 1]
    assert all({"time", "user", "method"} <= set(line) for line in lines)
    audit.AuditLog(None).write({"ignored": True})  # no log asked for: nothing happens


def test_an_unwritable_audit_log_is_a_permission_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(PermissionDeniedError, match="cannot write the audit log") as err:
        audit.AuditLog(str(tmp_path / "file" / "audit.jsonl"))
    assert err.value.exit_code == EXIT_PERMISSION


def test_audit_entry_names_socket_owner_method_and_outcome(scene: Scene) -> None:
    item = scene.plan(scene.owned_cw)
    entry = remedy._audit_entry(item, outcome("closed"))
    sk = scene.owned_cw
    assert entry == {
        "netns": "host", "netns_inode": sk.netns, "method": "fin", "outcome": "closed",
        "detail": "", "pid": APP, "comm": "app", "fd": sk.owners[0].fd,
        "state": "CLOSE_WAIT", "local": "10.0.0.1:8080", "peer": f"10.0.0.2:{sk.peer_port}",
        "inode": sk.inode, "cookie": sk.cookie}


# --- text -------------------------------------------------------------------------------------

def test_plan_text_names_every_socket_method_reason_and_effects(scene: Scene) -> None:
    snap = scene.b.build()
    plan = build(snap, snap.sockets, protected=set())
    plan.notes.append("socket destroy: not verified")
    lines = list(text.render_plan(plan))
    body = "\n".join(lines)
    assert lines[0] == ("Plan: 8 of 9 selected sockets would be ended "
                        "(5 by destroy, 1 by drain, 2 by fin) in network namespace host.")
    assert "  note: socket destroy: not verified" in lines
    assert "#  SOCKET" in body and "METHOD" in body and "WHY" in body
    assert "CLOSE-WAIT 10.0.0.1:8080 -> 10.0.0.2:" in body
    assert "app(4242) fd" in body and "queue of app(4242)" in body
    assert "What each side will see:" in body
    assert "  fin: the program: its descriptor stays open" in body
    assert "destroy (" in body  # destroy reads differently per state: one line each
    assert "Left alone: 1" in body and "1 x refused: a listening socket" in body


def test_plan_text_is_cut_after_many_rows() -> None:
    b = SnapshotBuilder()
    b.process(APP, "app")
    socks = b.sockets(70, "close-wait", SERVER, CLIENT, pid=APP)
    plan = build(b.build(), socks, protected=set())
    lines = list(text.render_plan(plan))
    assert "... and 10 more (use --json for the full plan)" in lines
    assert sum(1 for line in lines if "CLOSE-WAIT" in line) == text.MAX_ROWS


def test_outcome_text_counts_and_lists_what_is_not_plainly_closed() -> None:
    outcomes = [outcome("closed", 1), outcome("closing", 2), outcome("not-permitted", 3)]
    outcomes[2].detail = "forged packets need CAP_NET_RAW"
    lines = list(text.render_outcomes(outcomes))
    assert lines[0] == "Result: 2 of 3 gone (1 closed, 1 closing, 1 not-permitted)."
    body = "\n".join(lines)
    assert "OUTCOME" in body and "not-permitted" in body and "CAP_NET_RAW" in body
    assert list(text.render_outcomes([outcome("closed")])) == [
        "Result: 1 of 1 gone (1 closed)."]
