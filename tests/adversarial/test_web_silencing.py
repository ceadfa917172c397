"""Nobody who can reach the exporter (or `reap --listen`) can silence it.

Each test runs the real command on loopback (sampling only a namespace it
made), attacks it with a bounded number of idle, byte-at-a-time or
concurrent clients, and requires every scrape to be answered meanwhile;
the attackers are cut after the request timeout (5 s) and logged as a
summary, never a traceback. The figures are printed (run with -s) and
written in docs/reliability.md.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import webload

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
import exporting

from sockdoctor.lab.netlab import Lab

pytestmark = [pytest.mark.root, pytest.mark.slow]
HELD = 300  # idle + slow connections held open during scrapes


def test_300_idle_and_slow_connections_are_cut_and_scrapes_go_on(solo: Lab) -> None:
    with exporting.running("--netns", solo.server.netns, "--interval", "1s") as exporter:
        with webload.attacking(exporter.url, idle=HELD // 2, slow=HELD // 2) as attack:
            during = webload.scrapes_during(exporter.url, seconds=4)
            threads = webload.tasks_of(exporter.proc.pid)
            time.sleep(3)  # past the 5 s request timeout for every attacker
            cut = attack.closed_by_server()
            after = webload.scrapes_during(exporter.url, seconds=1)
        print(f"\n{HELD} held: {len(during) + len(after)} scrapes, all 200; {cut} cut; "
              f"{threads} tasks; slowest scrape {max(t for _, t in during):.2f}s")
        assert [s for s, _ in during + after] == [200] * len(during + after)
        assert cut == HELD  # idle and byte-at-a-time alike, after the request timeout
        assert threads <= 12
    log = "\n".join(exporter.stderr)
    assert "Traceback" not in log
    cut_lines = [line for line in exporter.stderr if "http: cut" in line]
    assert cut_lines and len(cut_lines) <= 3
    assert "sent no complete request in time" in log


def listen_backlog(url: str) -> int:
    """The backlog of the listener at `url`, as the kernel holds it (ss's Send-Q)."""
    port = webload.split_url(url)[1]
    line = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True,
                          text=True, check=True, timeout=30).stdout.split()
    return int(line[2])


def test_1000_concurrent_scrapes_are_all_answered(solo: Lab) -> None:
    with exporting.running("--netns", solo.server.netns, "--interval", "1s") as exporter:
        somaxconn = int(Path("/proc/sys/net/core/somaxconn").read_text())
        assert listen_backlog(exporter.url) == min(4096, somaxconn)  # was 5
        t0 = time.monotonic()
        answered = webload.concurrent_scrapes(exporter.url, 1000, timeout=90)
        took = time.monotonic() - t0
        print(f"\n1000 concurrent scrapes: {answered} answered in {took:.1f}s")
        assert answered == 1000
        assert exporter.get("/healthz")[0] == 200
    assert not any("Traceback" in line for line in exporter.stderr)


def test_in_a_32_task_pids_cgroup_idle_clients_do_not_silence_it(solo: Lab) -> None:
    if webload.pids_root() is None:
        pytest.skip("no pids cgroup controller (v1 or v2) on this machine")
    name = f"sockdoctor-test-{os.getpid()}"
    with webload.pids_cgroup(name, 32) as group:
        with exporting.running("--netns", solo.server.netns, "--interval", "1s",
                               prefix=group.prefix()) as exporter:
            assert str(exporter.proc.pid) in group.read("cgroup.procs").split()
            with webload.attacking(exporter.url, idle=HELD, slow=0):
                during = webload.scrapes_during(exporter.url, seconds=3)
                current = int(group.read("pids.current"))
            concurrent = webload.concurrent_scrapes(exporter.url, 200, timeout=60)
            peak = group.read("pids.peak") if (group.path / "pids.peak").exists() else "?"
            events = group.read("pids.events")
        print(f"\npids.max 32: {HELD} idle held, {len(during)} scrapes all 200, then "
              f"200 concurrent: {concurrent}; tasks {current}, peak {peak}; {events}")
        assert [s for s, _ in during] == [200] * len(during)
        assert concurrent == 200
        assert current <= 32 and events.endswith(" 0")  # never refused a fork or thread
    assert not any("Traceback" in line for line in exporter.stderr)


def test_reap_listen_keeps_answering_under_idle_and_slow_clients(solo: Lab,
                                                                 tmp_path: Path) -> None:
    policy = tmp_path / "reap.toml"
    policy.write_text('interval = "1s"\n\n[[rule]]\nname = "nothing of ours"\n'
                      'state = "close-wait"\nport = 1\nmethods = ["fin"]\n')
    proc = subprocess.Popen(
        [sys.executable, "-m", "sockdoctor", "reap", "--policy", str(policy), "--netns",
         solo.server.netns, "--audit-log", str(tmp_path / "audit.jsonl"),
         "--web.listen-address", "127.0.0.1:0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        first = proc.stdout.readline()  # type: ignore[union-attr]
        url = first.split("metrics on ")[1].split(";")[0].strip()
        with webload.attacking(url, idle=HELD // 2, slow=HELD // 2) as attack:
            during = webload.scrapes_during(url, seconds=3)
            threads = webload.tasks_of(proc.pid)
            time.sleep(4)
            cut = attack.closed_by_server()
        assert [s for s, _ in during] == [200] * len(during)
        assert cut == HELD and threads <= 12
        assert webload.scrape(url.replace("/metrics", "/other")) == 404
    finally:
        proc.terminate()
        _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "http: cut" in err


def test_behind_tls_and_basic_auth_idle_handshakes_are_cut_too(solo: Lab,
                                                               tmp_path: Path) -> None:
    """Clients that never start (or never finish) the TLS handshake hold no slot for long."""
    import bcrypt
    import test_web_tls as tls

    tls.openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj",
                "/CN=test CA", cwd=tmp_path)
    tls.make_cert(tmp_path, "server", "serverAuth")
    hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(10)).decode()
    (tmp_path / "web.yml").write_text("tls_server_config: {cert_file: server.crt, key_file: "
                                      f"server.key}}\nbasic_auth_users: {{p: '{hashed}'}}\n")
    with exporting.running("--netns", solo.server.netns, "--web.config.file",
                           str(tmp_path / "web.yml")) as exporter:
        ctx = tls.context(tmp_path, client_cert=False)
        with webload.attacking(exporter.url, idle=HELD // 2, slow=HELD // 2) as attack:
            statuses = []
            deadline = time.monotonic() + 4
            while time.monotonic() < deadline:
                statuses.append(tls.get(exporter.url, ctx, "p", "pw"))
                time.sleep(0.3)
            time.sleep(3.5)
            cut = attack.closed_by_server()
        print(f"\nTLS + basic auth, {HELD} held: {len(statuses)} scrapes {set(statuses)}; "
              f"{cut} cut")
        assert statuses == [200] * len(statuses)
        assert tls.get(exporter.url, ctx) == 401
        assert cut == HELD
    assert not any("Traceback" in line for line in exporter.stderr)
