"""The parts of applying a plan that need no kernel: pacing and stopping, the audit log
(and what it refuses to write through), the text an operator reads, option errors.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import stat
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

from sockdoctor import jsontext
from sockdoctor.cli import cli
from sockdoctor.doctor.synth import SnapshotBuilder
from sockdoctor.errors import EXIT_PERMISSION, EXIT_WRITE, PermissionDeniedError, WriteError
from sockdoctor.linux.host import Host
from sockdoctor.model import ALL_STATES_MASK
from sockdoctor.remedy import KillPolicy, KillReport, plan_kill, stop_on_signals, text
from sockdoctor.remedy import audit as audit_mod
from sockdoctor.remedy.methods import Pacer, base
from sockdoctor.remedy.verify import Outcome

APP = 4242
HOST = Host(gathered=True, destroy=True)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def wait(self, seconds: float) -> bool:
        self.slept.append(round(seconds, 6))
        self.now += seconds
        return False


def test_pacer_spaces_actions_and_batches_only_without_a_rate(
        monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    monkeypatch.setattr(base.time, "monotonic", clock.monotonic)
    stop = threading.Event()
    monkeypatch.setattr(stop, "wait", clock.wait)
    free = Pacer(0, stop)
    assert free.batch_size(256) == 256
    assert all(free.wait() for _ in range(3)) and clock.slept == []
    paced = Pacer(4, stop)  # 4 per second: 0.25 s apart
    assert paced.batch_size(256) == 1
    for _ in range(3):
        paced.wait()
    assert clock.slept == [0.25, 0.25]
    clock.now += 10  # idle for a while: no catching up in a burst
    paced.wait()
    paced.wait()
    assert clock.slept == [0.25, 0.25, 0.25]


def test_a_stop_ends_the_wait_at_once() -> None:
    stop = threading.Event()
    pacer = Pacer(0.1, stop)  # one action every 10 s
    assert pacer.wait()
    threading.Timer(0.05, stop.set).start()
    assert pacer.wait() is False  # woke up by the stop, not after 10 s


def test_signals_set_the_stop_event_and_are_restored() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with stop_on_signals() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.wait(2)
    assert signal.getsignal(signal.SIGTERM) is before


# --- the audit log ------------------------------------------------------------------

def test_audit_log_appends_json_lines_one_write_per_batch(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "audit.jsonl"
    for n in range(2):
        with audit_mod.AuditLog(str(path)) as log:
            assert log.write_many([{"event": "act", "n": n}, {"event": "act", "n": n + 10}])
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["n"] for line in lines] == [0, 10, 1, 11]
    assert all({"time", "user", "event"} <= set(line) for line in lines)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert audit_mod.AuditLog(None).write({"ignored": True})  # no log asked for


def test_audit_lines_start_on_a_line_of_their_own_and_a_failed_write_leaves_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_bytes(b'{"event": "earlier"}\n{"event": "cut sho')  # someone's partial line
    with audit_mod.AuditLog(str(path)) as log:
        assert log.write({"event": "a"})
        real_write = os.write

        def short_then_full(fd: int, data: bytes) -> int:  # a disk that fills mid-write
            if real_write(fd, bytes(data[:10])) == 10:
                raise OSError(errno.ENOSPC, "No space left on device")
            return 0

        monkeypatch.setattr(audit_mod.os, "write", short_then_full)
        assert not log.write_many([{"event": "b"}, {"event": "c"}], sync=True)
        assert "No space left on device" in log.error
    lines = path.read_bytes().split(b"\n")
    assert lines[:2] == [b'{"event": "earlier"}', b'{"event": "cut sho']
    assert json.loads(lines[2])["event"] == "a" and lines[3:] == [b""]  # b, c: cut off


def test_an_unwritable_audit_log_is_a_write_error_and_a_forbidden_one_a_permission_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(WriteError, match="file is not a directory") as err:
        audit_mod.AuditLog(str(tmp_path / "file" / "audit.jsonl"))
    assert err.value.exit_code == EXIT_WRITE

    class Forbidding:  # audit's view of os: what a user without rights on the directory gets
        def __init__(self, euid: int) -> None:
            self.euid = euid

        def open(self, *_args: object) -> int:
            raise PermissionError(13, "Permission denied")

        def geteuid(self) -> int:
            return self.euid

        def __getattr__(self, name: str) -> object:
            return getattr(os, name)

    monkeypatch.setattr(audit_mod, "os", Forbidding(1000))
    with pytest.raises(PermissionDeniedError, match="run as root") as err:
        audit_mod.AuditLog(str(tmp_path / "audit.jsonl"))
    assert err.value.exit_code == EXIT_PERMISSION
    monkeypatch.setattr(audit_mod, "os", Forbidding(0))  # root: an immutable file, an LSM
    with pytest.raises(WriteError) as err:
        audit_mod.AuditLog(str(tmp_path / "audit.jsonl"))
    assert err.value.exit_code == EXIT_WRITE and "run as root" not in str(err.value)


def test_the_audit_log_is_not_written_through_a_planted_symlink(tmp_path: Path) -> None:
    victim = tmp_path / "shadow"
    victim.write_text("precious\n")
    link = tmp_path / "audit.jsonl"
    link.symlink_to(victim)
    with pytest.raises(WriteError, match="it is a symbolic link") as err:
        audit_mod.AuditLog(str(link))
    assert err.value.exit_code == EXIT_WRITE
    assert victim.read_text() == "precious\n" and link.is_symlink()


@pytest.mark.parametrize("kind", ["fifo", "directory", "device"])
def test_the_audit_log_must_be_a_regular_file(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "audit.jsonl"
    if kind == "fifo":
        os.mkfifo(path)
        threading.Thread(target=lambda: open(path, "rb").close(), daemon=True).start()
    elif kind == "directory":
        path.mkdir()
    else:
        if os.geteuid() != 0:
            pytest.skip("making a device node needs root")
        os.mknod(path, 0o600 | stat.S_IFCHR, os.makedev(1, 3))  # our own /dev/null twin
    with pytest.raises(WriteError, match="refusing to write the audit log") as err:
        audit_mod.AuditLog(str(path))
    assert err.value.exit_code == EXIT_WRITE  # the README's "output file refused"
    assert path.exists() and not path.is_file()


def test_audit_identity_names_socket_owner_and_namespace() -> None:
    b = SnapshotBuilder()
    b.process(APP, "app", netns="web")
    sk = b.socket("close-wait", "10.0.0.1:8080", "10.0.0.2", pid=APP, netns="web")
    b.dead_fd(APP)
    plan = plan_kill(b.build(), KillPolicy(dead_fds="also"), host=HOST)
    entry = audit_mod.identity(plan.items[0])
    assert entry == {
        "netns": "web", "netns_inode": sk.netns, "method": "fin", "pid": APP, "comm": "app",
        "fd": sk.owners[0].fd, "state": "CLOSE-WAIT", "local": "10.0.0.1:8080",
        "peer": f"10.0.0.2:{sk.peer_port}", "inode": sk.inode, "cookie": sk.cookie}
    dead = audit_mod.identity(plan.items[1])
    assert (dead["netns"], dead["netns_inode"], dead["state"]) == ("web", sk.netns, "dead-fd")


@pytest.mark.parametrize("comm", ["app", "ap\udcffp", ""])
def test_audit_lines_are_identity_and_fields_whatever_the_fast_path(
        tmp_path: Path, comm: str) -> None:
    """The spliced lines (identity encoded once, fields once per distinct value) are the
    JSON of identity(item) plus the fields; a name that is not UTF-8 stays byte-exact."""
    b = SnapshotBuilder()
    b.process(APP, comm, netns="web")
    b.sockets(3, "close-wait", "10.0.0.1:8080", "10.0.0.2", pid=APP, netns="web")
    b.socket("close-wait", "10.0.0.1:8080", "10.0.0.3", netns="web")  # no owner
    b.dead_fd(APP)
    plan = plan_kill(b.build(), KillPolicy(dead_fds="also"), host=HOST)
    fields = audit_mod.FieldCache("outcome", "detail", settings={"idle_s": 5})
    with audit_mod.AuditLog(str(tmp_path / "a.jsonl")) as log:
        assert log.write_event("act", [(audit_mod.identity_json(item), fields(
            "done", f"#{item.index % 2}")) for item in plan.items], sync=True)
        log.write({"event": "interrupted", "ended": 1})
    lines = (tmp_path / "a.jsonl").read_bytes().splitlines()
    assert len(lines) == len(plan.items) + 1 == 6
    for line, item in zip(lines, plan.items, strict=False):
        got = jsontext.restore(json.loads(line))
        assert got.pop("time") and got.pop("user")
        assert got == {"event": "act", **audit_mod.identity(item), "outcome": "done",
                       "detail": f"#{item.index % 2}", "settings": {"idle_s": 5}}
    assert b'"comm":[97,112,255,112]' in lines[0] if comm == "ap\udcffp" else True
    assert json.loads(lines[-1])["event"] == "interrupted"


# --- text ---------------------------------------------------------------------------

def scene_plan(comm: str = "app") -> KillReport:
    b = SnapshotBuilder()
    b.process(APP, comm)
    lst = b.listener(8080, pid=APP)
    b.sockets(2, "close-wait", "10.0.0.1:8080", "10.0.0.2", pid=APP)
    b.queued(1, "close-wait", "10.0.0.1:8080", "10.0.0.2", lst)
    b.sockets(5, "time-wait", "10.0.0.1:8080", "10.0.0.2")
    plan = plan_kill(b.build(), KillPolicy(states=ALL_STATES_MASK), host=HOST)
    return KillReport(plan=plan, applied=False)


def test_plan_text_names_every_socket_method_reason_and_effects() -> None:
    plan = scene_plan().plan
    lines = list(text.render_plan(plan))
    body = "\n".join(lines)
    assert lines[0] == ("Plan: 8 of 9 selected sockets would be ended "
                        "(5 by destroy, 1 by drain, 2 by fin) in network namespace host.")
    assert next(iter(text.render_plan(plan, applying=True))).startswith(
        "Plan: 8 of 9 selected sockets will be ended (")
    assert "  note: fin leaves each descriptor open" in body
    assert "#  SOCKET" in body and "METHOD" in body and "WHY" in body
    assert "CLOSE-WAIT 10.0.0.1:8080 -> 10.0.0.2:" in body
    assert "app(4242) fd" in body and "queue of app(4242)" in body
    assert "  fin: the program: its descriptor stays open" in body
    assert "Left alone: 1" in body and "1 x refused: a listening socket" in body


def test_a_hostile_process_name_reaches_the_terminal_escaped() -> None:
    plan = scene_plan("\x1b[31mRED\nx").plan
    body = "\n".join(text.render_plan(plan))
    assert "\x1b" not in body and "\\x1b[31mRED\\nx(4242) fd" in body
    assert all("RED" not in line or "\\n" in line for line in body.splitlines())


def test_plan_text_is_cut_after_many_rows() -> None:
    b = SnapshotBuilder()
    b.process(APP, "app")
    b.sockets(70, "close-wait", "10.0.0.1:8080", "10.0.0.2", pid=APP)
    lines = list(text.render_plan(plan_kill(b.build(), host=HOST)))
    assert "... and 10 more (use --json for the full plan)" in lines
    assert sum(1 for line in lines if "CLOSE-WAIT" in line) == text.MAX_ROWS


def outcome(name: str, index: int = 1) -> Outcome:
    return Outcome(index=index, label="x", netns="ns", method="destroy", outcome=name,
                   detail="")


def test_outcome_text_counts_and_lists_what_is_not_plainly_closed() -> None:
    outcomes = [outcome("closed", 1), outcome("closing", 2), outcome("not-permitted", 3)]
    outcomes[2].detail = "forged packets need CAP_NET_RAW"
    lines = list(text.render_outcomes(outcomes))
    assert lines[0] == "Result: 2 of 3 gone (1 closed, 1 closing, 1 not-permitted)."
    body = "\n".join(lines)
    assert "OUTCOME" in body and "not-permitted" in body and "CAP_NET_RAW" in body
    assert list(text.render_outcomes([outcome("closed")])) == [
        "Result: 1 of 1 gone (1 closed)."]


def test_an_interrupted_report_says_what_was_ended_left_and_not_tried() -> None:
    report = KillReport(plan=scene_plan().plan, applied=True, interrupted=True,
                        outcomes=[outcome("closed", 1), outcome("skipped", 2),
                                  outcome("not-tried", 3), outcome("not-tried", 4)])
    assert report.counts() == {"ended": 1, "left": 1, "not_tried": 2}
    first = next(iter(text.render_report(report)))
    assert first == "Interrupted: 1 ended, 1 left, 2 not tried (written to the audit log)."


def test_a_bad_rate_names_the_option() -> None:
    result = CliRunner().invoke(cli, ["kill", "--rate", "banana"])
    assert result.exit_code == 2
    assert "'--rate'" in result.output and "50/s" in result.output


def test_a_plan_over_several_namespaces_names_each_in_its_header() -> None:
    b = SnapshotBuilder()
    b.netns("blue")
    b.netns("green")
    b.process(APP, "app")
    b.process(APP + 1, "app")
    b.sockets(2, "close-wait", "10.0.0.1:8080", "10.0.0.2", pid=APP, netns="blue")
    b.sockets(1, "close-wait", "10.0.0.1:8080", "10.0.0.3", pid=APP + 1, netns="green")
    plan = plan_kill(b.build(), host=HOST)
    header = next(iter(text.render_plan(plan)))
    # acting in more than one namespace is visible before --yes (and printed before acting)
    assert header.endswith("in 2 network namespaces: blue, green."), header
    assert next(iter(text.render_plan(plan, applying=True))).endswith(
        "in 2 network namespaces: blue, green.")


def test_the_actors_lock_makes_a_second_actor_wait_and_a_stop_ends_the_wait(
        tmp_path: Path) -> None:
    from sockdoctor.linux import host as hostmod

    path = str(tmp_path / "run" / "act.lock")
    stop = threading.Event()
    with hostmod.acting(stop, path) as first:
        assert first and stat.S_IMODE(os.stat(path).st_mode) == 0o644  # flock needs read
        got: list[bool] = []
        waiter = threading.Thread(target=lambda: got.append(_try_lock(stop, path)))
        waiter.start()
        waiter.join(0.3)
        assert waiter.is_alive() and not got  # waits while another actor acts
        stop.set()
        waiter.join(5)
    assert got == [False]  # told to stop while waiting: nothing may be done
    with hostmod.acting(None, path) as again:
        assert again


def _try_lock(stop: threading.Event, path: str) -> bool:
    from sockdoctor.linux import host as hostmod

    with hostmod.acting(stop, path) as held:
        return held
