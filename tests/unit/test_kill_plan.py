"""plan_kill on synthetic snapshots (no root, no kernel): selection, methods, guards, values.

Which sockets a policy selects (CLOSE-WAIT unless told otherwise), which
method each gets (by state, ownership, what the host allows and the order
the policy gives), why, and what the program and the peer are told they
will see; the guards; --max; dead descriptors; that planning reads nothing
and changes nothing, not even its input; the exit codes of a plan and of a
report.
"""

from __future__ import annotations

import builtins
import os
import socket

import msgspec
import pytest

from sockdoctor.doctor.synth import SnapshotBuilder
from sockdoctor.errors import (
    EXIT_FINDINGS,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_PERMISSION,
    EXIT_UNSUPPORTED,
    UsageError,
)
from sockdoctor.linux.host import NO_NET_ADMIN, Host
from sockdoctor.model import ALL_STATES_MASK, Snapshot, Socket, TcpState, state_mask
from sockdoctor.query import Query
from sockdoctor.remedy import KillPolicy, KillReport, Plan, PlanItem, apply_plan, plan_kill
from sockdoctor.remedy.policy import parse_rate
from sockdoctor.remedy.verify import Outcome

APP = 4242  # the owning program
SERVER = "10.0.0.1:8080"
CLIENT = "10.0.0.2"
HOST = Host(gathered=True, destroy=True)  # a host where everything works
ALL = KillPolicy(states=ALL_STATES_MASK)


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

    def plan(self, sk: Socket, method: str = "auto", host: Host = HOST,
             **kw: object) -> PlanItem:
        """The item for `sk` in a plan over every socket of the scene."""
        policy = KillPolicy(states=ALL_STATES_MASK, methods=(method,), **kw)  # type: ignore[arg-type]
        plan = plan_kill(self.b.build(), policy, host=host)
        (item,) = [i for i in plan.items if i.socket is not None and i.socket.cookie == sk.cookie]
        return item


@pytest.fixture
def scene() -> Scene:
    return Scene()


# --- what is selected -------------------------------------------------------------

def test_with_no_states_only_close_wait_is_planned_and_the_input_is_unchanged() -> None:
    b = SnapshotBuilder()
    b.process(APP, "app")
    b.sockets(3, "established", SERVER, CLIENT, pid=APP)
    waits = b.sockets(2, "close-wait", SERVER, CLIENT, pid=APP)
    b.listener(8080, pid=APP)
    snap = b.build()
    before = msgspec.json.encode(snap)
    plan = plan_kill(snap, host=HOST)
    assert [i.socket.cookie for i in plan.items] == [sk.cookie for sk in waits]  # type: ignore[union-attr]
    assert plan.count_by_method() == {"fin": 2}
    assert msgspec.json.encode(snap) == before
    assert all(i.socket in snap.sockets for i in plan.items)  # the model's own sockets


def test_states_age_and_a_filter_select_together() -> None:
    b = SnapshotBuilder()
    b.process(APP, "app")
    old = b.socket("established", SERVER, CLIENT, pid=APP, age_ms=600_000)
    b.socket("established", SERVER, CLIENT, pid=APP, age_ms=1_000)  # too young
    b.socket("established", "10.0.0.1:9090", CLIENT, pid=APP, age_ms=600_000)  # other port
    b.socket("close-wait", SERVER, CLIENT, pid=APP, age_ms=600_000)  # other state
    policy = KillPolicy(states=state_mask(TcpState.ESTABLISHED), older_than_ms=300_000,
                        where=Query.build("sport = :8080"))
    plan = plan_kill(b.build(), policy, host=HOST)
    assert [i.socket.cookie for i in plan.items] == [old.cookie]  # type: ignore[union-attr]


def test_pid_process_and_netns_in_the_filter() -> None:
    b = SnapshotBuilder()
    b.process(1, "billing", netns="web")
    b.process(2, "other", netns="web")
    mine = b.socket("close-wait", SERVER, CLIENT, pid=1, netns="web")
    b.socket("close-wait", SERVER, CLIENT, pid=2, netns="web")
    b.socket("close-wait", SERVER, CLIENT, pid=1)  # host namespace
    snap = b.build()
    for where in (Query.build(process="billing", netns="web"), Query.build(pids=[1], netns="web")):
        plan = plan_kill(snap, KillPolicy(where=where), host=HOST)
        assert [i.socket.cookie for i in plan.items] == [mine.cookie]  # type: ignore[union-attr]
    assert len(plan_kill(snap, KillPolicy(where=Query.build(netns="nosuch")), host=HOST).items) == 0


def test_planning_reads_nothing_from_the_system(scene: Scene) -> None:
    snap = scene.b.build()

    def forbidden(*_a: object, **_k: object) -> None:
        raise AssertionError("plan_kill did I/O")

    with pytest.MonkeyPatch.context() as mp:  # only around the call: pytest itself reads files
        for module, name in ((builtins, "open"), (os, "open"), (os, "readlink"),
                             (os, "listdir"), (os, "stat"), (socket, "socket")):
            mp.setattr(module, name, forbidden)
        plan = plan_kill(snap, ALL, host=HOST)
    assert len(plan.items) == 9 and plan.actions


# --- auto: the safest method that works ------------------------------------------

@pytest.mark.parametrize(("name", "method", "because"), [
    ("owned_cw", "fin", "still has to send its FIN"),
    ("owned_est", "fin", "still has to send its FIN"),
    ("queued_cw", "drain", "never accept()ed"),
    ("owned_fw2", "destroy", "our FIN is already out (FIN-WAIT-2): kernel SOCK_DESTROY"),
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
    b.queued(1, "close-wait", SERVER, CLIENT, lst)
    (item,) = plan_kill(b.build(), host=HOST).items
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
    b.queued(1, "close-wait", SERVER, CLIENT, exact)
    (item,) = plan_kill(b.build(), host=HOST).items
    assert item.method == "drain" and item.listener is not None and item.listener.pid == 2


def test_drain_is_not_chosen_while_its_queue_holds_connections_not_in_the_plan() -> None:
    """accept() hands out the oldest first: with live connections in the queue, draining
    could end one of them, so auto destroys the planned one and says why."""
    b = SnapshotBuilder()
    b.process(1, "app")
    listener = b.listener(8080, pid=1, addr="10.0.0.1")
    b.queued(2, "established", SERVER, CLIENT, listener)  # live, not selected
    b.queued(1, "close-wait", SERVER, CLIENT, listener)
    (item,) = plan_kill(b.build(), host=HOST).items
    assert item.method == "destroy"
    assert "its accept queue holds 2 connections not in the plan" in item.why
    (asked,) = plan_kill(b.build(), KillPolicy(methods=("drain",)), host=HOST).items
    assert (asked.method, asked.unable) == ("", "unsafe")
    assert plan_kill(b.build(), KillPolicy(methods=("drain",)), host=HOST).exit_code == 1


def test_drain_is_not_chosen_where_two_listeners_share_the_address() -> None:
    b = SnapshotBuilder()
    b.process(1, "app")
    first = b.listener(8080, pid=1, addr="10.0.0.1")
    b.listener(8080, pid=1, addr="10.0.0.1")  # SO_REUSEPORT: which queue is whose?
    b.queued(1, "close-wait", SERVER, CLIENT, first)
    (item,) = plan_kill(b.build(), host=HOST).items
    assert item.method == "destroy" and "2 listening sockets share" in item.why


def test_drain_needs_ptrace_to_hold_the_listeners_owner_still() -> None:
    b = SnapshotBuilder()
    b.process(1, "app")
    b.queued(1, "close-wait", SERVER, CLIENT, b.listener(8080, pid=1, addr="10.0.0.1"))
    host = msgspec.structs.replace(HOST, ptrace=False)
    (item,) = plan_kill(b.build(), host=host).items
    assert item.method == "destroy"


# --- an order of methods (the reaper's escalation ladder) --------------------------

@pytest.mark.parametrize(("order", "name", "method"), [
    (("fin", "destroy"), "owned_cw", "fin"),
    (("fin", "destroy"), "owned_fw2", "destroy"),
    (("fin", "destroy"), "queued_cw", "destroy"),
    (("destroy", "fin"), "owned_cw", "destroy"),
    (("fin", "close"), "owned_fw2", "close"),
    (("fin", "drain"), "time_wait", ""),
])
def test_the_first_method_of_the_order_that_applies_is_chosen(
        scene: Scene, order: tuple[str, ...], name: str, method: str) -> None:
    policy = KillPolicy(states=ALL_STATES_MASK, methods=order)
    plan = plan_kill(scene.b.build(), policy, host=HOST)
    sk = getattr(scene, name)
    (item,) = [i for i in plan.items if i.socket and i.socket.cookie == sk.cookie]
    assert item.method == method, item.why
    if not method:
        assert "fin, drain cannot end it" in item.why and plan.method == "fin,drain"


# --- when the kernel or our privileges say no --------------------------------------

def test_auto_falls_back_to_rst_without_socket_destroy(scene: Scene) -> None:
    no_destroy = Host(gathered=True, destroy=False,
                      destroy_note="this kernel was built without socket destroy support")
    for sk in (scene.orphan_fw2, scene.time_wait, scene.queued_cw):
        item = scene.plan(sk, host=Host(gathered=True, destroy=False, pidfd=False))
        assert item.method == "rst", item.why
    item = scene.plan(scene.time_wait, host=no_destroy)
    assert "built without socket destroy support: forged RST" in item.why
    assert scene.plan(scene.owned_cw, host=no_destroy).method == "fin"  # fin needs no destroy


def test_auto_with_nothing_available_is_not_permitted(scene: Scene) -> None:
    host = Host(gathered=True, destroy=False, net_raw=False, net_admin=False,
                destroy_note=NO_NET_ADMIN)
    item = scene.plan(scene.time_wait, host=host)
    assert (item.method, item.unable) == ("", "not-permitted")
    assert "CAP_NET_ADMIN" in item.why and "CAP_NET_RAW" in item.why


def test_auto_without_pidfd_getfd_destroys_owned_sockets(scene: Scene) -> None:
    item = scene.plan(scene.owned_cw, host=Host(gathered=True, destroy=True, pidfd=False))
    assert item.method == "destroy" and "pidfd_getfd" in item.why


@pytest.mark.parametrize(("method", "host", "unable", "words"), [
    ("destroy", Host(destroy=False, destroy_note="built without it"), "unsupported",
     "built without it"),
    ("destroy", Host(destroy=False, net_admin=False, destroy_note="needs root"),
     "not-permitted", "needs root"),
    ("fin", Host(pidfd=False), "unsupported", "Linux >= 5.6"),
    ("close", Host(ptrace=False), "unsupported", "x86_64"),
    ("rst", Host(net_raw=False), "not-permitted", "CAP_NET_RAW"),
])
def test_an_explicit_method_the_kernel_or_privileges_forbid(
        scene: Scene, method: str, host: Host, unable: str, words: str) -> None:
    item = scene.plan(scene.owned_cw, method, host)
    assert (item.method, item.unable) == ("", unable)
    assert words in item.why and not item.program_sees


def test_destroy_not_known_yet_is_planned_with_a_note_and_nothing_is_tried(
        scene: Scene, monkeypatch: pytest.MonkeyPatch) -> None:
    from sockdoctor.linux import host as hostmod

    monkeypatch.setattr(hostmod, "probe_destroy", lambda: pytest.fail("probed on a dry run"))
    plan = plan_kill(scene.b.build(), ALL, host=Host(gathered=True, destroy=None))
    assert "destroy" in plan.count_by_method()
    assert any(n.startswith("socket destroy: not verified yet") for n in plan.notes)


# --- explicit methods: where they apply and why not ---------------------------------------

@pytest.mark.parametrize(("name", "method", "applies", "words"), [
    ("owned_cw", "fin", True, "graceful shutdown"),
    ("owned_est", "fin", True, "graceful shutdown"),
    ("queued_cw", "fin", False, "none does (try drain or destroy)"),
    ("orphan_fw2", "fin", False, "none does (try destroy)"),
    ("owned_fw2", "fin", False, "our FIN was already sent"),
    ("owned_cw", "drain", False, "only applies to connections waiting in an accept queue"),
    ("queued_cw", "drain", True, "accept it from the listener's queue"),
    ("owned_fw2", "close", True, "swapped for a placeholder"),
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
    ("owned_est", "close", "never reused behind its back", "its read returns EOF"),
    ("owned_fw2", "close", "stays taken by a placeholder", "our FIN went out already"),
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


def test_a_bare_close_is_a_choice_and_says_the_number_may_be_reused(scene: Scene) -> None:
    item = scene.plan(scene.owned_est, "close", bare_close=True)
    assert "the number is freed" in item.why
    assert "may later reuse that number" in item.program_sees


def test_fin_says_the_descriptors_stay_open_and_how_to_release_them(scene: Scene) -> None:
    plan = plan_kill(scene.b.build(), host=HOST)
    (note,) = [n for n in plan.notes if n.startswith("fin leaves")]
    assert "--method close" in note and f"--dead-fds --pid {APP}" in note


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
    mine = Host(gathered=True, destroy=True, protected=frozenset({scene.owned_cw.inode}))
    item = scene.plan(scene.owned_cw, host=mine)
    assert item.method == "" and "held by sockdoctor" in item.skipped
    assert scene.plan(scene.owned_cw, host=mine, force=True).method


@pytest.mark.parametrize("addr", ["10.0.0.1", "::ffff:10.0.0.1"])
def test_the_ssh_connection_of_the_caller_is_refused(addr: str) -> None:
    b = SnapshotBuilder()
    b.process(APP, "sshd")
    peer = "10.0.0.2" if ":" not in addr else "::ffff:10.0.0.2"
    ssh = b.socket("established", f"[{addr}]:22" if ":" in addr else f"{addr}:22",
                   f"[{peer}]:50022" if ":" in peer else f"{peer}:50022", pid=APP)
    b.socket("established", "10.0.0.1:22", "10.0.0.2:50023", pid=APP)
    host = Host(gathered=True, ssh=frozenset({("10.0.0.1", 22, "10.0.0.2", 50022)}))
    items = plan_kill(b.build(), KillPolicy(states=state_mask(TcpState.ESTABLISHED)),
                      host=host).items
    assert items[0].socket.cookie == ssh.cookie  # type: ignore[union-attr]
    assert "SSH" in items[0].skipped and items[0].method == ""
    assert items[1].method == "fin"


def test_protected_inodes_and_ssh_come_from_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    from sockdoctor.linux import host as hostmod

    with socket.socket() as mine:  # held by this very process
        assert os.fstat(mine.fileno()).st_ino in hostmod.protected_inodes()
    monkeypatch.setenv("SSH_CONNECTION", "10.0.0.2 50022 10.0.0.1 22")
    assert hostmod.ssh_endpoints() == {("10.0.0.1", 22, "10.0.0.2", 50022)}
    for value in ("", "garbage", "10.0.0.2 x 10.0.0.1 22"):
        monkeypatch.setenv("SSH_CONNECTION", value)
        assert hostmod.ssh_endpoints() == set()


# --- --max ------------------------------------------------------------------------------

def close_waits(n: int) -> Snapshot:
    b = SnapshotBuilder()
    b.process(APP, "app")
    b.sockets(n, "close-wait", SERVER, CLIENT, pid=APP)
    return b.build()


def test_max_refuses_the_whole_plan_or_defers_the_rest() -> None:
    with pytest.raises(UsageError, match=r"act on 5 sockets, more than --max 2") as err:
        plan_kill(close_waits(5), KillPolicy(max_count=2), host=HOST)
    assert err.value.exit_code == 2
    assert len(plan_kill(close_waits(5), KillPolicy(max_count=5), host=HOST).actions) == 5
    deferred = plan_kill(close_waits(5), KillPolicy(max_count=2, over_max="defer"), host=HOST)
    assert [i.method for i in deferred.items] == ["fin", "fin", "", "", ""]
    assert all("left for later" in i.skipped for i in deferred.items[2:])
    assert all(i.why.startswith("deferred: ") and not i.program_sees for i in deferred.items[2:])


def test_a_plan_is_a_value_nobody_can_change() -> None:
    """What was shown and confirmed is what gets applied: no field can be set afterwards."""
    plan = plan_kill(close_waits(3), KillPolicy(max_count=1, over_max="defer"), host=HOST)
    item = plan.items[0]
    with pytest.raises(AttributeError):
        item.method = "destroy"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        plan.items = ()  # type: ignore[misc]
    assert isinstance(plan.items, tuple) and isinstance(plan.notes, tuple)
    assert isinstance(item.owners, tuple) and isinstance(item.listener_pids, tuple)
    # the JSON form (`kill --json`) is the same as before: arrays
    doc = msgspec.json.decode(msgspec.json.encode(plan))
    assert isinstance(doc["items"], list) and isinstance(doc["items"][0]["owners"], list)


@pytest.mark.parametrize("bad", [dict(methods=("nuke",)), dict(max_count=0), dict(rate=-1.0),
                                 dict(over_max="maybe"), dict(dead_fds="some")])
def test_a_bad_policy_is_a_usage_error(bad: dict) -> None:
    with pytest.raises(UsageError):
        KillPolicy(**bad)


# --- dead descriptors -----------------------------------------------------------------------

def test_dead_descriptors_only_also_or_not(scene: Scene) -> None:
    scene.b.process(99, "other", netns="web")
    scene.b.dead_fd(APP, 2)
    scene.b.dead_fd(99, 1)
    snap = scene.b.build()
    only = plan_kill(snap, KillPolicy(dead_fds="only", where=Query.build(pids=[APP])), host=HOST)
    assert [i.socket for i in only.items] == [None, None]
    assert {i.method for i in only.items} == {"close"} and all(i.dead_inode for i in only.items)
    assert only.items[0].label.startswith("dead fd ") and "app(4242)" in only.items[0].label
    also = plan_kill(snap, KillPolicy(dead_fds="also"), host=HOST)
    assert len(also.items) == 3 + 3  # 3 CLOSE-WAIT, 3 dead fds, numbered on
    assert [i.index for i in also.items] == list(range(1, 7))
    other = also.items[-1]
    assert (other.netns_name, other.owners[0].pid) == ("web", 99)  # the process's namespace
    assert len(plan_kill(snap, host=HOST).items) == 3
    no_ptrace = plan_kill(snap, KillPolicy(dead_fds="only"), host=Host(gathered=True,
                                                                         ptrace=False))
    assert {(i.method, i.unable) for i in no_ptrace.items} == {("", "unsupported")}


# --- exit codes ------------------------------------------------------------------------------

def item(index: int, method: str = "fin", unable: str = "", skipped: str = "") -> PlanItem:
    return PlanItem(index=index, socket=None, netns_name="", netns_inode=0, owners=[],
                    method=method, why="", unable=unable, skipped=skipped)


@pytest.mark.parametrize(("items", "code"), [
    ([], EXIT_OK),
    ([item(1), item(2)], EXIT_OK),
    ([item(1), item(2, "", skipped="a listening socket")], EXIT_FINDINGS),
    ([item(1, "")], EXIT_FINDINGS),  # nothing applies: the plan can end none
    ([item(1, "", "not-permitted"), item(2, "", "not-permitted")], EXIT_PERMISSION),
    ([item(1), item(2, "", "unsupported")], EXIT_UNSUPPORTED),
])
def test_a_plan_that_cannot_end_every_socket_is_not_exit_0(items: list[PlanItem],
                                                           code: int) -> None:
    plan = Plan(items=items, method="auto", host=HOST)
    assert plan.exit_code == code
    assert KillReport(plan=plan, applied=False).exit_code == code


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
    (["not-tried"], EXIT_FINDINGS),
    (["not-permitted", "not-permitted"], EXIT_PERMISSION),
    (["closed", "not-permitted"], EXIT_PERMISSION),
    (["unsupported"], EXIT_UNSUPPORTED),
    (["closed", "unsupported"], EXIT_UNSUPPORTED),
    (["unsupported", "not-permitted"], EXIT_FINDINGS),
    (["unsupported", "failed"], EXIT_FINDINGS),
])
def test_report_exit_codes(names: list[str], code: int) -> None:
    plan = Plan(items=[], method="auto", host=HOST)
    report = KillReport(plan=plan, applied=True,
                        outcomes=[outcome(n, i) for i, n in enumerate(names)])
    assert report.exit_code == code
    interrupted = KillReport(plan=plan, applied=True, outcomes=report.outcomes,
                             interrupted=True)
    assert interrupted.exit_code == EXIT_INTERRUPTED


def test_a_plan_without_the_hosts_facts_can_be_read_but_not_applied(scene: Scene) -> None:
    plan = plan_kill(scene.b.build())
    assert plan.actions and not plan.host.gathered
    assert any("for reading, not for applying" in n for n in plan.notes)
    with pytest.raises(UsageError, match="host_facts"):
        apply_plan(plan, audit_log=None)


def test_applying_a_plan_with_nothing_to_do_returns_that_plan() -> None:
    plan = plan_kill(close_waits(2), KillPolicy(methods=("drain",)), host=HOST)
    assert not plan.actions
    report = apply_plan(plan, audit_log=None)
    assert report.plan is plan and report.applied
    assert {o.outcome for o in report.outcomes} == {"not-applicable"}
    assert report.exit_code == EXIT_FINDINGS


@pytest.mark.parametrize(("text", "rate"), [(None, 0.0), ("50/s", 50.0), ("2.5", 2.5)])
def test_rate(text: str | None, rate: float) -> None:
    assert parse_rate(text) == rate


@pytest.mark.parametrize("text", ["banana", "0/s", "-1", "inf"])
def test_bad_rate(text: str) -> None:
    with pytest.raises(UsageError, match="rate"):
        parse_rate(text)
