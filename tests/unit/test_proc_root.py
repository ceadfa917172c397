"""Every /proc path in linux/ goes through procfs.PROC: point it at a small tree, read it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sockdoctor import inventory
from sockdoctor.linux import netns, procfs, rawtcp, tracefs
from sockdoctor.query import Query


@pytest.fixture
def proc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fake /proc: two processes, two sysctls, the thread's counters, its namespace."""
    files = {
        "4242/comm": "fake-server\n",
        "4242/cmdline": "fake-server\0--port\08080\0",
        "4242/status": "Name:\tfake-server\nTgid:\t4242\n",
        "4243/comm": "fake-worker\n",
        "4243/cmdline": "",
        "4243/status": "Name:\tfake-worker\nTgid:\t4242\n",
        "sys/net/ipv4/ip_local_port_range": "20000\t20099\n",
        "sys/net/ipv4/tcp_fin_timeout": "17\n",
        "sys/fs/file-nr": "1234\t0\t9999\n",
        "thread-self/net/snmp": "Tcp: ActiveOpens CurrEstab\nTcp: 5 3\n",
        "thread-self/net/sockstat": "TCP: inuse 3 orphan 0 tw 1 alloc 4 mem 1\n",
        "thread-self/ns/net": "",
        "filesystems": "nodev\tsysfs\nnodev\ttracefs\n",
        "self/mounts": "tracefs /fake/tracing tracefs rw 0 0\n",
    }
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (tmp_path / "not-a-pid").mkdir()
    monkeypatch.setattr(procfs, "PROC", str(tmp_path))
    return tmp_path


def test_processes_are_read_under_the_root(proc: Path) -> None:
    assert sorted(procfs.list_pids()) == [4242, 4243]
    assert procfs.pid_exists(4242) and not procfs.pid_exists(os.getpid())
    assert procfs.comm(4242) == "fake-server"
    names = {p.pid: (p.comm, p.cmdline) for p in procfs.process_names()}
    assert names == {4242: ("fake-server", ["fake-server", "--port", "8080"]),
                     4243: ("fake-worker", [])}
    assert tracefs.thread_group(4243) == 4242


def test_sysctls_and_counters_are_read_under_the_root(proc: Path) -> None:
    assert procfs.read_sysctls(["net.ipv4.ip_local_port_range", "net.core.somaxconn"]) == {
        "net.ipv4.ip_local_port_range": "20000 20099"}
    assert procfs.open_files() == 1234
    assert rawtcp._sysctl("tcp_fin_timeout", 60) == 17
    counters = procfs.read_counters()
    assert counters["Tcp"] == {"ActiveOpens": 5, "CurrEstab": 3}
    assert counters["sockstat.TCP"]["tw"] == 1


def test_namespaces_and_tracefs_are_found_under_the_root(proc: Path) -> None:
    assert netns.current_inode() == (proc / "thread-self/ns/net").stat().st_ino
    assert tracefs.kernel_has_tracefs()
    assert tracefs.find_mount() == "/fake/tracing"


def test_a_query_naming_a_process_is_checked_against_the_root(proc: Path) -> None:
    inventory.check_selection(Query.build(process="fake-server", pids=[4243]))
