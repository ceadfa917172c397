"""`sockdoctor exporter` on real leaks in namespaces made here, scraped over HTTP.

Each test builds its own lab (server and client namespaces joined by a veth
pair, or one namespace with loopback), runs the exporter on loopback with
`--netns` naming only that lab's namespace, and checks what /metrics says
against what the test made. Every exporter is stopped with a signal and must
exit 0.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import exporting
import pytest
from exporting import pick, value

from conftest import SETPRIV, Remote, Script, Unprivileged
from sockdoctor.lab.netlab import SERVER_V4, Lab

pytestmark = pytest.mark.root
PORT = 7411
FAST = ("--interval", "0.5s", "--stuck-after", "1s")


def leaking_server(lab: Lab) -> Remote:
    return exporting.keeping_server(lab, PORT)


def leak(server: Remote, client: Remote, n: int, port: int = PORT) -> float:
    """n connections the server keeps and the client closes: n server-side CLOSE-WAIT."""
    client(f"cs = [socket.create_connection(('{SERVER_V4}', {port})) for _ in range({n})]")
    server(f"conns += [lst.accept()[0] for _ in range({n})]")
    client("for c in cs: c.close()")
    return time.time()


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sockdoctor", *args], capture_output=True,
                          text=True, timeout=120)


def test_a_leak_shows_with_its_namespace_process_side_port_count_and_age_until_killed(
        lab: Lab) -> None:
    server = leaking_server(lab)
    client = Remote(lab, lab.client, "sdt-client")
    closed = leak(server, client, 5)
    ns = lab.server.netns
    with exporting.running("--netns", ns, *FAST) as exporter:
        got = exporter.wait_for(lambda m: (value(m.get("sockdoctor_close_wait_oldest_seconds",
                                                       {}), netns=ns) or 0) >= 2.0)
        mine = dict(netns=ns, process="sdt-leaker", side="server", port=str(PORT))
        assert value(got["sockdoctor_close_wait_sockets"], **mine) == 5
        assert len(got["sockdoctor_close_wait_sockets"]) == 1
        oldest = value(got["sockdoctor_close_wait_oldest_seconds"], **mine)
        assert 2.0 <= oldest <= time.time() - closed + 0.5
        assert value(got["sockdoctor_tcp_sockets"], netns=ns, state="close_wait") == 5
        assert value(got["sockdoctor_tcp_sockets"], netns=ns, state="listen") == 1
        assert value(got["sockdoctor_listen_queue_limit"], netns=ns, port=str(PORT),
                     process="sdt-leaker") == 64
        assert value(got["sockdoctor_process_open_fds"], netns=ns, process="sdt-leaker") >= 6
        assert value(got["sockdoctor_process_max_fds"], netns=ns, process="sdt-leaker") > 0
        finding = pick(got["sockdoctor_finding_sockets"], netns=ns, rule="never-closed")
        assert list(finding.values()) == [5.0]
        assert dict(next(iter(finding)))["process"] == "sdt-leaker"
        severity = pick(got["sockdoctor_finding_severity"], netns=ns, rule="never-closed")
        assert set(severity) == set(finding) and set(severity.values()) <= {2.0, 3.0}
        assert value(got["sockdoctor_up"]) == 1
        kill = run_cli("kill", "--netns", ns, "--port", str(PORT), "--state", "close-wait",
                       "--yes")
        assert kill.returncode == 0, kill.stderr
        after = exporter.wait_for(
            lambda m: value(m["sockdoctor_tcp_sockets"], netns=ns, state="close_wait") == 0)
        assert pick(after.get("sockdoctor_close_wait_sockets", {}), netns=ns) == {}
        assert pick(after.get("sockdoctor_finding_sockets", {}), rule="never-closed") == {}
        assert pick(after.get("sockdoctor_finding_severity", {}), rule="never-closed") == {}


def test_a_client_that_leaks_is_labelled_client_with_the_remote_services_port(lab: Lab) -> None:
    server = Remote(lab, lab.server, "sdt-server")
    server(f"""
        lst = socket.socket()
        lst.bind(("0.0.0.0", {PORT}))
        lst.listen(8)
    """)
    client = Remote(lab, lab.client, "sdt-pool")
    client(f"cs = [socket.create_connection(('{SERVER_V4}', {PORT})) for _ in range(3)]")
    server("for _ in range(3): lst.accept()[0].close()")  # the server hangs up on each
    with exporting.running("--netns", lab.client.netns, *FAST,
                           stop_signal=signal.SIGINT) as exporter:
        got = exporter.wait_for(lambda m: "sockdoctor_close_wait_sockets" in m
                                and bool(m["sockdoctor_close_wait_sockets"]))
        assert got["sockdoctor_close_wait_sockets"] == {
            (("container", ""), ("netns", lab.client.netns), ("pod_uid", ""),
             ("port", str(PORT)), ("process", "sdt-pool"), ("side", "client")): 3.0}
        assert value(got["sockdoctor_ephemeral_ports_used_ratio"],
                     netns=lab.client.netns) > 0


FORKER = """
import ctypes
libc = ctypes.CDLL(None)
lst = socket.socket()
lst.bind(("127.0.0.1", {port}))
lst.listen(1024)
peers = []
for i in range({n}):
    held = []
    for _ in range(1 + i % 4):  # process i holds 1 + i % 4 sockets
        peers.append(socket.create_connection(("127.0.0.1", {port})))
        held.append(lst.accept()[0])
    if os.fork() == 0:
        for s in (*peers, lst):  # the clients' ends belong to the parent alone
            s.close()
        libc.prctl(15, b"sdt-leak-%03d" % i, 0, 0, 0)  # PR_SET_NAME
        while True:
            time.sleep(60)
    for s in held:
        s.close()  # the child's copy stays: it is the only holder
for p in peers:
    p.close()
emit({{"total": sum(1 + i % 4 for i in range({n}))}})
wait()
"""


def test_150_leaking_processes_and_max_series_50_give_51_series_with_an_exact_sum(
        solo: Lab) -> None:
    lab = solo
    script = Script(lab, lab.server, FORKER.format(port=PORT, n=150))
    total = script.read(timeout=60)["total"]  # type: ignore[index]
    ns = lab.server.netns
    with exporting.running("--netns", ns, "--max-series", "50", *FAST) as exporter:
        got = exporter.wait_for(lambda m: sum(
            pick(m.get("sockdoctor_close_wait_sockets", {}), netns=ns).values()) == total)
        series = got["sockdoctor_close_wait_sockets"]
        assert len(series) == 51
        other = pick(series, process="other")
        assert len(other) == 1
        # the 50 kept are the biggest (4 sockets each: 37 processes; then 3s)
        kept = sorted((v for k, v in series.items() if k not in other), reverse=True)
        assert kept[:37] == [4.0] * 37 and kept[37:] == [3.0] * 13
        assert sum(series.values()) == total == 373
        assert value(got["sockdoctor_series_dropped"],
                     metric="sockdoctor_close_wait_sockets") == 100
        assert len(got["sockdoctor_close_wait_oldest_seconds"]) == 51
        assert len(got["sockdoctor_process_open_fds"]) <= 51


def test_textfile_mode_writes_a_file_the_prometheus_parser_reads(lab: Lab,
                                                                 tmp_path: Path) -> None:
    server = leaking_server(lab)
    leak(server, Remote(lab, lab.client, "sdt-client"), 2)
    once = run_cli("exporter", "--once", "--textfile", str(tmp_path),
                   "--netns", lab.server.netns)
    assert once.returncode == 0, once.stderr
    assert sorted(os.listdir(tmp_path)) == ["sockdoctor.prom"]  # no temporary file left
    parsed = exporting.parse((tmp_path / "sockdoctor.prom").read_text())
    assert value(parsed["sockdoctor_close_wait_sockets"], netns=lab.server.netns,
                 process="sdt-leaker") == 2
    assert "process_cpu_seconds_total" not in parsed  # node_exporter has its own
    assert (tmp_path / "sockdoctor.prom").stat().st_mode & 0o777 == 0o644
    # continuous: the file is replaced after every sample, and no HTTP port is opened
    proc = subprocess.Popen([sys.executable, "-m", "sockdoctor", "exporter", "--textfile",
                             str(tmp_path), "--interval", "0.3s", "--netns", lab.server.netns],
                            stderr=subprocess.PIPE, text=True)
    try:
        inode = (tmp_path / "sockdoctor.prom").stat().st_ino
        deadline = time.monotonic() + 20
        while (tmp_path / "sockdoctor.prom").stat().st_ino == inode:
            assert time.monotonic() < deadline, "the textfile was never replaced"
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, proc.stderr.read()  # type: ignore[union-attr]
    assert "http://" not in proc.stderr.read()  # type: ignore[union-attr]
    assert sorted(os.listdir(tmp_path)) == ["sockdoctor.prom"]


def test_once_prints_the_metrics_and_the_endpoints_answer(lab: Lab) -> None:
    once = run_cli("exporter", "--once", "--netns", lab.server.netns)
    assert once.returncode == 0, once.stderr
    assert value(exporting.parse(once.stdout)["sockdoctor_up"]) == 1
    with exporting.running("--netns", lab.server.netns, *FAST,
                           stop_signal=signal.SIGINT) as exporter:
        exporter.wait_for(lambda m: m["sockdoctor_samples_total"][()] >= 2)
        status, text = exporter.get("/healthz")
        words = re.fullmatch(r"ok: sample \d+, (\d+) (sockets?)\s*", text)
        assert status == 200 and words, text
        assert (words[2] == "socket") == (words[1] == "1")  # "1 socket", "0 sockets"
        status, page = exporter.get("/")
        assert status == 200 and "href='metrics'" in page
        assert exporter.get("/nothing-here")[0] == 404
    assert exporter.stderr[-1].endswith("stopped")


@pytest.mark.parametrize(("args", "code", "words"), [
    (("--netns", "sdlab-no-such-namespace"), 3, "no network namespace"),
    (("--listen", "localhost:http"), 2, "--listen"),
    (("--interval", "0s"), 2, "--interval"),
    (("--textfile", "/nonexistent/dir"), 3, "no such directory"),
    (("state", "bogus-state"), 2, "bogus"),
])
def test_mistakes_end_in_one_sentence_and_their_exit_code(args: tuple[str, ...], code: int,
                                                          words: str) -> None:
    done = run_cli("exporter", "--once", *args) if "--listen" not in args else \
        run_cli("exporter", *args)
    assert done.returncode == code, done.stderr
    assert words in done.stderr and "Traceback" not in done.stderr


def test_a_port_already_taken_is_a_clear_error(lab: Lab) -> None:
    import socket

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        done = run_cli("exporter", "--listen", f"127.0.0.1:{taken.getsockname()[1]}",
                       "--netns", lab.server.netns)
    finally:
        taken.close()
    assert done.returncode == 2
    assert "cannot listen on 127.0.0.1" in done.stderr and "Traceback" not in done.stderr


def test_without_root_it_exports_what_it_may_see_and_says_what_is_missing(
        lab: Lab, unprivileged: Unprivileged) -> None:
    server = leaking_server(lab)  # a root program: nobody cannot see its descriptors
    leak(server, Remote(lab, lab.client, "sdt-client"), 3)
    done = subprocess.run(["ip", "netns", "exec", lab.server.netns, *SETPRIV,
                           unprivileged.python, "-m", "sockdoctor", "exporter", "--once"],
                          env=unprivileged.env, cwd="/", capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    got = exporting.parse(done.stdout)
    assert value(got["sockdoctor_up"]) == 1
    assert value(got["sockdoctor_scan_incomplete"],
                 reason="other_namespaces_not_scanned") == 1
    assert value(got["sockdoctor_scan_incomplete"], reason="processes_unreadable") >= 1
    assert value(got["sockdoctor_close_wait_sockets"], process="unknown", side="server",
                 port=str(PORT)) == 3
    assert "not root" in done.stderr
