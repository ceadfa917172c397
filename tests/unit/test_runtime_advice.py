"""The runtime-aware doctor on synthetic snapshots, and the Go build-info reader."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from sockdoctor.doctor import config_for, diagnose
from sockdoctor.doctor.context import keepalive_probed, probed_age
from sockdoctor.doctor.finding import Finding
from sockdoctor.doctor.runtimes import Unread, client_advice, describe, never_closed_fix
from sockdoctor.doctor.synth import SnapshotBuilder
from sockdoctor.linux import runtime
from sockdoctor.model import KEEPALIVE_TIMER, Runtime, Snapshot, TcpInfo

GO = Runtime(kind="go", version="go1.19.8", libraries=["net/http client"])
NODE = Runtime(kind="node", libraries=["http"])
HIKARI = Runtime(kind="java", version="17", libraries=["HikariCP", "PostgreSQL JDBC"])


def client_leak(rt: Runtime | None, *, port: int = 8080, recv_q: int = 1, live: int = 0,
                n: int = 5) -> Finding:
    b = SnapshotBuilder()
    b.process(900, "client").runtime = rt
    b.sockets(n, "close-wait", "10.0.0.2", f"10.0.0.9:{port}", pid=900, age_ms=60_000,
              recv_q=recv_q)
    b.sockets(live, "established", "10.0.0.2", f"10.0.0.9:{port}", pid=900, age_ms=100)
    report = diagnose(b.build(), config=config_for("10s"))
    return next(f for f in report.findings if f.rule == "client-pool-dead-connections")


def test_describe() -> None:
    assert describe(GO) == "Go 1.19.8 binary, net/http client"
    assert describe(HIKARI) == "Java 17, HikariCP, PostgreSQL JDBC"
    assert describe(Runtime(kind="python", version="3.11", program="gunicorn")) \
        == "Python 3.11 (gunicorn)"
    assert describe(Runtime(kind="native", program="nginx")) == "native program nginx"


def test_go_body_leak_is_not_an_idle_pool() -> None:
    f = client_leak(GO)
    assert f.evidence["signature"] == "go-body-not-closed"
    assert "owner: Go 1.19.8 binary, net/http client" in f.evidence_lines
    assert "never closed the response bodies" in f.title
    assert "IdleConnTimeout is NOT the fix" in f.fix
    assert "most likely parked in a connection pool" not in f.explanation


def test_go_eof_already_read_is_not_the_body_signature() -> None:
    f = client_leak(GO, recv_q=0)
    assert "signature" not in f.evidence
    assert f.fix.startswith("net/http: close every response body")


def test_unknown_runtime_gets_the_catalogue() -> None:
    f = client_leak(None)
    assert "Go net/http" in f.fix and "OkHttp" in f.fix and "owner:" not in str(f.evidence_lines)


def test_the_runtime_library_fix_comes_first() -> None:
    f = client_leak(HIKARI, port=5432)
    assert f.fix.startswith("HikariCP: maxLifetime and idleTimeout")
    assert "SQLAlchemy" not in f.fix and "database/sql" not in f.fix


def test_node_unconsumed_needs_data_unread() -> None:
    assert client_leak(NODE, recv_q=70_000).evidence["signature"] == "node-response-not-consumed"
    idle = client_leak(NODE, recv_q=1)  # only the EOF unread: an idle pooled socket
    assert "signature" not in idle.evidence and idle.fix.startswith("Node.js http.Agent")


@pytest.mark.parametrize(("rt", "head"), [
    (Runtime(kind="python"), "Python: close the connection"),
    (Runtime(kind="go"), "Go: `defer conn.Close()`"),
    (Runtime(kind="java"), "Java: try-with-resources"),
    (Runtime(kind="node"), "Node.js: end the socket"),
    (None, None), (Runtime(kind="native", program="nginx"), None)])
def test_never_closed_fix_by_runtime(rt: Runtime | None, head: str | None) -> None:
    fix = never_closed_fix(rt)
    assert fix is None if head is None else fix.startswith(head)


def test_client_advice_unknown_library_is_none() -> None:
    assert client_advice(Runtime(kind="python", libraries=[]), 5432, Unread(3, 3, 0)) is None


# --- ages under keepalive probes ---------------------------------------------------

def probed_socket(ack_ms: int, data_ms: int, expires_ms: int, timer: int = KEEPALIVE_TIMER):
    b = SnapshotBuilder()
    sk = b.socket("close-wait", "10.0.0.2", "10.0.0.9:80", pid=1, age_ms=ack_ms,
                  timer=timer, expires_ms=expires_ms, recv_q=1)
    sk.info = TcpInfo(last_data_recv=data_ms, last_ack_recv=ack_ms)
    return sk


def test_probes_reset_the_ack_age_and_data_is_used() -> None:
    # 1 s keepalive: last ACK 400 ms, next probe in 600 ms -> K = 1 s; data 12 s ago.
    sk = probed_socket(400, 12_000, 600)
    assert keepalive_probed(sk) and probed_age(sk, 400) == 12_000


def test_no_probe_yet_keeps_the_exact_ack_age() -> None:
    # Go's 30 s keepalive: FIN 2 s ago (last ACK), data 3 s ago, next probe in 28 s.
    sk = probed_socket(2_000, 3_000, 28_000)
    assert not keepalive_probed(sk) and probed_age(sk, 2_000) == 2_000
    assert not keepalive_probed(probed_socket(400, 12_000, 600, timer=0))


def test_a_probed_leak_is_reported_like_any_other() -> None:
    b = SnapshotBuilder()
    b.process(900, "node").runtime = NODE
    for _ in range(6):
        sk = b.socket("close-wait", "10.0.0.2", "10.0.0.9:80", pid=900, age_ms=300,
                      timer=KEEPALIVE_TIMER, expires_ms=700, recv_q=70_000)
        sk.info = TcpInfo(last_data_recv=12_000, last_ack_recv=300)
    report = diagnose(b.build(), config=config_for("10s"))
    f = next(f for f in report.findings if f.rule == "client-pool-dead-connections")
    assert f.evidence["stuck"] == 6 and f.evidence["oldest_age_ms"] == 12_000
    assert "6 under keepalive probes" in f.evidence_lines[0]


def test_runtime_survives_the_snapshot_round_trip() -> None:
    b = SnapshotBuilder()
    b.process(900, "client").runtime = GO
    snap = b.build()
    again = msgspec.json.decode(msgspec.json.encode(snap), type=Snapshot)
    assert again.processes[900].runtime == GO


# --- the Go build-info reader ------------------------------------------------------

def _uvarint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    return bytes(out + bytes([n]))


def fake_go_binary(path: Path, version: str, modinfo: str, *markers: bytes) -> Path:
    header = b"\xff Go buildinf:" + bytes([8, 2]) + b"\0" * 16
    body = b"".join(_uvarint(len(s.encode())) + s.encode() for s in (version, modinfo))
    path.write_bytes(b"\x7fELF" + b"\0" * 60 + header + body + b"\0" * 8 + b"".join(markers))
    return path


def test_go_buildinfo_version_modules_and_std_packages(tmp_path: Path) -> None:
    mod = ("path\texample.com/app\nmod\texample.com/app\t(devel)\t\n"
           "dep\tgithub.com/jackc/pgx/v5\tv5.5.0\th1:abc=\n"
           "dep\tgithub.com/redis/go-redis/v9\tv9.3.0\th1:def=\n")
    exe = fake_go_binary(tmp_path / "app", "go1.21.5", mod,
                         b"net/http.(*Transport).roundTrip", b"database/sql.(*DB).conn")
    st = exe.stat()
    version, libs = runtime._go_binary(str(exe), st.st_dev, st.st_ino, st.st_mtime_ns)
    assert version == "go1.21.5"
    assert libs == ["net/http client", "database/sql", "pgx", "go-redis"]


def test_not_go_and_not_elf(tmp_path: Path) -> None:
    (tmp_path / "c").write_bytes(b"\x7fELF" + b"\0" * 4096)
    (tmp_path / "sh").write_bytes(b"#!/bin/sh\n")
    for name in ("c", "sh"):
        st = (tmp_path / name).stat()
        assert runtime._go_binary(str(tmp_path / name), st.st_dev, st.st_ino,
                                  st.st_mtime_ns) is None


def test_runtime_of_this_python() -> None:
    import os
    import sys
    rt = runtime.runtime_of(os.getpid())
    assert rt is not None and rt.kind == "python"
    assert rt.version in (f"{sys.version_info[0]}.{sys.version_info[1]}", "3", "")
