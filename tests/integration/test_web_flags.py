"""node_exporter's flags on `sockdoctor exporter` and `reap`: addresses, path, collectors.

Run for real on loopback, sampling only a namespace made here.
"""

from __future__ import annotations

import base64
import os
import platform
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import bcrypt
import exporting
import pytest

import sockdoctor
from sockdoctor import __version__
from sockdoctor.lab.netlab import Lab
from sockdoctor.linux import native

pytestmark = pytest.mark.root


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sockdoctor", *args], capture_output=True,
                          text=True, timeout=60)


def built_revision() -> str:
    """What setup.py wrote at build time (a wheel install), else unknown (editable)."""
    written = Path(sockdoctor.__file__).parent / "REVISION"
    return written.read_text().strip() if written.exists() else "unknown"


def test_path_addresses_collectors_and_build_info(solo: Lab) -> None:
    with exporting.running("--netns", solo.server.netns, "--interval", "1s",
                           "--web.listen-address", "127.0.0.2:0",
                           "--web.telemetry-path", "/probe", "--no-collector.doctor",
                           "--no-collector.listen_queue", "--no-collector.netns_info",
                           "--web.disable-exporter-metrics") as exporter:
        assert exporter.url.endswith("/probe")
        assert exporter.get("/metrics")[0] == 404
        second = exporter.stderr[-1].split(", ")[1]
        assert second.startswith("http://127.0.0.2:") and second.endswith("/probe")
        with urllib.request.urlopen(second, timeout=10) as reply:
            assert reply.status == 200
        status, text = exporter.get("/probe")
        got = exporting.parse(text)
        assert status == 200
        families = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")}
        assert {"sockdoctor_tcp_sockets", "sockdoctor_close_wait_sockets",
                "sockdoctor_process_open_fds", "sockdoctor_ephemeral_ports_used_ratio"
                } <= families  # still on
        assert not families & {
            "sockdoctor_listen_queue_length", "sockdoctor_listen_queue_limit",
            "sockdoctor_netns_info", "process_cpu_seconds", "python_info",
            "sockdoctor_finding_sockets", "sockdoctor_doctor_last_run_timestamp_seconds"}
        ((labels, one),) = got["sockdoctor_build_info"].items()
        assert one == 1 and dict(labels) == {
            "version": __version__, "python_version": platform.python_version(),
            "engine": "C" if native.fast is not None else "pure", "revision": built_revision()}
        assert exporter.get("/")[1].count("href='probe'") == 1


def test_the_revision_comes_from_the_environment(solo: Lab) -> None:
    env = {**os.environ, "SOCKDOCTOR_REVISION": "abc1234"}
    with exporting.running("--netns", solo.server.netns, env=env) as exporter:
        (labels,) = exporter.scrape()["sockdoctor_build_info"]
        assert dict(labels)["revision"] == "abc1234"


def test_old_flags_are_aliases(solo: Lab) -> None:
    """--listen (given by exporting.start) and --no-doctor still work."""
    with exporting.running("--netns", solo.server.netns, "--no-doctor") as exporter:
        assert exporter.url.endswith("/metrics")
        text = exporter.get()[1]
        assert "sockdoctor_tcp_sockets" in text and "sockdoctor_finding_sockets" not in text


@pytest.mark.parametrize(("args", "code", "words"), [
    (("--web.telemetry-path", "/healthz"), 2, "--web.telemetry-path /healthz"),
    (("--web.config.file", "/nonexistent/web.yml"), 3, "no such file"),
])
def test_reap_takes_the_same_web_options(tmp_path: Path, args: tuple[str, ...], code: int,
                                         words: str) -> None:
    policy = tmp_path / "reap.toml"
    policy.write_text('[[rule]]\nstate = "close-wait"\nport = 1\nmethods = ["fin"]\n')
    done = run_cli("reap", "--policy", str(policy), "--once", "--web.listen-address",
                   "127.0.0.1:0", *args)
    assert done.returncode == code, done.stderr
    assert words in done.stderr and "Traceback" not in done.stderr


def test_reap_listen_with_basic_auth(solo: Lab, tmp_path: Path) -> None:
    policy = tmp_path / "reap.toml"
    policy.write_text('interval = "1s"\n\n[[rule]]\nstate = "close-wait"\nport = 1\n'
                      'methods = ["fin"]\n')
    hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(4)).decode()
    (tmp_path / "web.yml").write_text(f"basic_auth_users:\n  prom: '{hashed}'\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "sockdoctor", "reap", "--policy", str(policy), "--netns",
         solo.server.netns, "--audit-log", str(tmp_path / "audit.jsonl"),
         "--web.listen-address", "127.0.0.1:0", "--web.telemetry-path", "/reaped",
         "--web.config.file", str(tmp_path / "web.yml")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        url = proc.stdout.readline().split("metrics on ")[1].split(";")[0].strip()  # type: ignore[union-attr]
        assert url.endswith("/reaped")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url, timeout=10)
        assert refused.value.code == 401
        token = base64.b64encode(b"prom:pw").decode()
        request = urllib.request.Request(url, headers={"Authorization": f"Basic {token}"})
        with urllib.request.urlopen(request, timeout=10) as reply:
            assert b"sockdoctor_reap_cycles_total" in reply.read()
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
    assert proc.returncode == 0


def test_a_bad_web_config_ends_the_exporter_before_it_serves(tmp_path: Path) -> None:
    (tmp_path / "web.yml").write_text("tls_server_config:\n  cert_file: [\n")
    done = run_cli("exporter", "--web.listen-address", "127.0.0.1:0", "--web.config.file",
                   str(tmp_path / "web.yml"))
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "not valid YAML (line 3: " in done.stderr
    assert "Traceback" not in done.stderr
