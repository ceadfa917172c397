"""Decoding tracefs ring-buffer pages and the event format, without a kernel."""

from __future__ import annotations

import os
import socket
import struct
from pathlib import Path

import pytest

from sockdoctor.errors import PermissionDeniedError, UnsupportedError
from sockdoctor.linux import ringbuf, tracefs

# The format file as Linux 6.x prints it for the tracepoint (kernel output).
FORMAT = """name: inet_sock_set_state
ID: 2287
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:int oldstate;\toffset:16;\tsize:4;\tsigned:1;
\tfield:int newstate;\toffset:20;\tsize:4;\tsigned:1;
\tfield:__u16 sport;\toffset:24;\tsize:2;\tsigned:0;
\tfield:__u16 dport;\toffset:26;\tsize:2;\tsigned:0;
\tfield:__u16 family;\toffset:28;\tsize:2;\tsigned:0;
\tfield:__u16 protocol;\toffset:30;\tsize:2;\tsigned:0;
\tfield:__u8 saddr[4];\toffset:32;\tsize:4;\tsigned:0;
\tfield:__u8 daddr[4];\toffset:36;\tsize:4;\tsigned:0;
\tfield:__u8 saddr_v6[16];\toffset:40;\tsize:16;\tsigned:0;
\tfield:__u8 daddr_v6[16];\toffset:56;\tsize:16;\tsigned:0;

print fmt: "family=%s ..."
"""
HEADER_PAGE = """\tfield: u64 timestamp;\toffset:0;\tsize:8;\tsigned:0;
\tfield: local_t commit;\toffset:8;\tsize:8;\tsigned:1;
\tfield: int overwrite;\toffset:8;\tsize:1;\tsigned:1;
\tfield: char data;\toffset:16;\tsize:4080;\tsigned:0;
"""
LAYOUT = ringbuf.PageLayout(commit_at=8, commit_size=8, data_at=16)


def payload(skaddr: int, old: int, new: int, sport: int, dport: int, v6: bool = False,
            pid: int = 42, flags: int = 0, event_id: int = 2287) -> bytes:
    family = socket.AF_INET6 if v6 else socket.AF_INET
    s4 = socket.inet_pton(socket.AF_INET, "10.0.0.1")
    d4 = socket.inet_pton(socket.AF_INET, "10.0.0.2")
    s6 = socket.inet_pton(socket.AF_INET6, "fd00::1") if v6 else b"\0" * 16
    d6 = socket.inet_pton(socket.AF_INET6, "fd00::2") if v6 else b"\0" * 16
    return struct.pack("<HBBiQiiHHHH4s4s16s16s", event_id, flags, 0, pid, skaddr, old, new,
                       sport, dport, family, 6, s4, d4, s6, d6)


def page(events: list[bytes], ts: int = 1_000_000, extra: bytes = b"") -> bytes:
    """A ring-buffer page: each event gets a small header with a 10 ns delta."""
    data = bytearray(extra)
    for body in events:
        data += struct.pack("<I", (10 << 5) | (len(body) // 4)) + body
    head = struct.pack("<Qq", ts, len(data))
    return (head + bytes(data)).ljust(4096, b"\0")


def test_event_layout_follows_the_format_file() -> None:
    layout = ringbuf.EventLayout(FORMAT)
    assert layout.event_id == 2287 and layout.size == 72
    fields = layout.unpack(payload(0xFFFF888812345678, 1, 8, 8000, 41064))
    assert (fields["skaddr"], fields["oldstate"], fields["newstate"]) == (
        0xFFFF888812345678, 1, 8)
    assert (fields["sport"], fields["dport"], fields["family"]) == (8000, 41064, 2)


def test_a_format_without_a_needed_field_is_unsupported() -> None:
    broken = FORMAT.replace("skaddr", "sk")
    with pytest.raises(UnsupportedError, match="skaddr"):
        ringbuf.EventLayout(broken)


def test_page_layout_is_read_from_header_page(tmp_path: Path) -> None:
    (tmp_path / "events").mkdir()
    (tmp_path / "events" / "header_page").write_text(HEADER_PAGE)
    assert ringbuf.page_layout(str(tmp_path)) == LAYOUT


def test_iter_page_walks_data_time_extends_and_padding() -> None:
    first, second = payload(1, 7, 2, 0, 80), payload(1, 2, 1, 5000, 80)
    extend = struct.pack("<II", ringbuf.TYPE_TIME_EXTEND | (3 << 5), 1)  # + (1 << 27) + 3
    discarded = struct.pack("<II", ringbuf.TYPE_PADDING | (1 << 5), 12) + b"\0" * 8  # 4 + 12
    long_event = struct.pack("<II", 0 | (5 << 5), len(first) + 4) + first  # type_len 0
    data = (struct.pack("<I", (10 << 5) | 18) + first + extend + discarded + long_event
            + struct.pack("<I", (2 << 5) | 18) + second)
    raw = (struct.pack("<Qq", 1000, len(data)) + data).ljust(4096, b"\0")
    got = [(ts, bytes(body)) for ts, body in ringbuf.iter_page(raw, LAYOUT)]
    t1 = 1000 + 10
    t2 = t1 + (1 << 27) + 3 + 5
    assert got == [(t1, first), (t2, first), (t2 + 2, second)]


def test_iter_page_stops_at_the_commit_and_at_end_padding() -> None:
    body = payload(1, 7, 2, 0, 80)
    raw = bytearray(page([body, body]))
    struct.pack_into("<q", raw, 8, 4 + len(body))  # only the first event is committed
    assert len(list(ringbuf.iter_page(bytes(raw), LAYOUT))) == 1
    end = page([body], extra=struct.pack("<I", ringbuf.TYPE_PADDING))  # delta 0: page end
    assert list(ringbuf.iter_page(end, LAYOUT)) == []


def test_commit_flags_of_missed_events_do_not_inflate_the_size() -> None:
    body = payload(1, 7, 2, 0, 80)
    raw = bytearray(page([body]))
    struct.pack_into("<Q", raw, 8, (1 << 31) | (1 << 30) | (4 + len(body)))
    assert len(list(ringbuf.iter_page(bytes(raw), LAYOUT))) == 1


class _Reader(tracefs.Reader):
    def __init__(self) -> None:  # no instance: only the decoder is tested
        self.event = ringbuf.EventLayout(FORMAT)
        self.page = LAYOUT


def test_decode_gives_state_changes_with_addresses_and_context() -> None:
    out: list[ringbuf.StateChange] = []
    raw = page([payload(0xABC, 1, 8, 8000, 41064, flags=0x10),
                payload(0xDEF, 8, 9, 9000, 1234, v6=True, pid=77),
                payload(0x123, 1, 8, 1, 2, event_id=999)])  # another event: skipped
    _Reader()._decode(raw, 1, out)
    assert [(e.skaddr, e.old, e.new, e.cpu) for e in out] == [(0xABC, 1, 8, 1),
                                                             (0xDEF, 8, 9, 1)]
    assert out[0].in_irq and not out[1].in_irq and out[1].task_pid == 77
    assert socket.inet_ntop(socket.AF_INET, out[0].saddr) == "10.0.0.1"
    assert socket.inet_ntop(socket.AF_INET6, out[1].daddr) == "fd00::2"


def test_find_mount_prefers_tracefs_and_knows_debugfs(tmp_path: Path) -> None:
    mounts = tmp_path / "mounts"
    mounts.write_text("sysfs /sys sysfs rw 0 0\nnodev /sys/kernel/tracing tracefs rw 0 0\n")
    assert tracefs.find_mount(str(mounts)) == "/sys/kernel/tracing"
    (tmp_path / "dbg" / "tracing" / "instances").mkdir(parents=True)
    mounts.write_text(f"debugfs {tmp_path}/dbg debugfs rw 0 0\n")
    assert tracefs.find_mount(str(mounts)) == f"{tmp_path}/dbg/tracing"
    mounts.write_text("proc /proc proc rw 0 0\n")
    assert tracefs.find_mount(str(mounts)) is None


def test_no_tracefs_in_the_kernel_is_unsupported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tracefs, "find_mount", lambda: None)
    monkeypatch.setattr(tracefs, "kernel_has_tracefs", lambda: False)
    with pytest.raises(UnsupportedError, match="no tracefs"):
        tracefs.Mount()


def test_a_tracefs_without_the_tracepoint_is_unsupported(tmp_path: Path) -> None:
    (tmp_path / "instances").mkdir()
    (tmp_path / "events").mkdir()
    with pytest.raises(UnsupportedError, match="inet_sock_set_state"):
        tracefs.Instance(str(tmp_path))


@pytest.mark.skipif(os.geteuid() != 0, reason="root is never refused by permissions")
def test_an_unreadable_tracefs_is_a_permission_problem(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "instances").mkdir()
    monkeypatch.setattr(tracefs.os, "access", lambda path, mode: False)
    with pytest.raises(PermissionDeniedError, match="root"):
        tracefs.Instance(str(tmp_path))


def test_stale_instances_of_dead_sockdoctors_are_removed(tmp_path: Path) -> None:
    inst = tmp_path / "instances"
    inst.mkdir()
    dead = 2 ** 22 + 12345  # above pid_max's default: no such process
    for name in (f"sockdoctor-{dead}-1", f"sockdoctor-{os.getpid()}-1", "someone-else"):
        (inst / name).mkdir()
    assert tracefs.remove_stale_instances(str(tmp_path)) == [f"sockdoctor-{dead}-1"]
    assert sorted(os.listdir(inst)) == [f"sockdoctor-{os.getpid()}-1", "someone-else"]


def test_lost_sums_overruns_and_drops_per_cpu(tmp_path: Path) -> None:
    inst = tracefs.Instance.__new__(tracefs.Instance)
    inst.path = str(tmp_path)
    for cpu, (overrun, dropped) in enumerate([(3, 0), (0, 7)]):
        d = tmp_path / "per_cpu" / f"cpu{cpu}"
        d.mkdir(parents=True)
        (d / "stats").write_text(f"entries: 99\noverrun: {overrun}\ncommit overrun: 1\n"
                                 f"bytes: 0\ndropped events: {dropped}\nread events: 5\n")
    assert inst.lost() == {0: 4, 1: 8}


def test_trace_on_a_kernel_without_tracefs_is_one_sentence_and_exit_5(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import signal
    import sys

    from sockdoctor.cli import _run

    monkeypatch.setattr(signal, "signal", lambda *args: None)  # keep pytest's handlers
    monkeypatch.setattr(tracefs, "find_mount", lambda: None)
    monkeypatch.setattr(tracefs, "kernel_has_tracefs", lambda: False)
    monkeypatch.setattr(sys, "argv", ["sockdoctor", "trace", "--duration", "1s"])
    assert _run() == 5
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no tracefs" in err and "Traceback" not in err
