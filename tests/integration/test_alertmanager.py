"""The example Alertmanager configuration: amtool checks it, routes each severity,
and a real Alertmanager inhibits so that one problem pages once."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_prometheus import free_port, stop

CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "alertmanager.yml"
AMTOOL = shutil.which("amtool") or "/usr/bin/amtool"
ALERTMANAGER = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
FINDING = {"alertname": "SockdoctorFinding", "job": "sockdoctor", "instance": "host1:19808",
           "netns": "web", "rule": "accept-queue-not-drained", "process": "et-server",
           "port": "8080"}


def amtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([AMTOOL, *args], capture_output=True, text=True, timeout=60)


def test_amtool_accepts_the_config() -> None:
    done = amtool("check-config", str(CONFIG))
    assert done.returncode == 0 and "SUCCESS" in done.stdout, done.stdout + done.stderr


@pytest.mark.parametrize(("labels", "receiver"), [
    ({"severity": "critical", "alertname": "SockdoctorFinding"}, "pager"),
    ({"severity": "warning", "alertname": "SockdoctorFinding"}, "chat"),
    ({"severity": "info", "alertname": "SockdoctorScanIncomplete"}, "tickets"),
    ({"alertname": "SockdoctorSomethingNew"}, "tickets"),
])
def test_each_severity_is_routed_to_its_receiver(labels: dict[str, str], receiver: str) -> None:
    words = [f"{k}={v}" for k, v in labels.items()]
    done = amtool("config", "routes", "test", f"--config.file={CONFIG}",
                  f"--verify.receivers={receiver}", *words)
    assert done.returncode == 0, done.stdout + done.stderr
    wrong = amtool("config", "routes", "test", f"--config.file={CONFIG}",
                   "--verify.receivers=nobody", *words)
    assert wrong.returncode != 0  # the check can fail


@pytest.fixture(scope="module")
def alertmanager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if ALERTMANAGER is None:
        pytest.skip("no Alertmanager binary (Debian: prometheus-alertmanager)")
    data = tmp_path_factory.mktemp("alertmanager")
    for _attempt in range(5):  # the port may be taken between finding it and binding it
        port = free_port()
        proc = subprocess.Popen(
            [ALERTMANAGER, f"--config.file={CONFIG}", f"--storage.path={data}",
             f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 30
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=2):
                    try:
                        yield f"http://127.0.0.1:{port}/api/v2"
                    finally:
                        stop(proc)
                    return
            except OSError:
                time.sleep(0.2)
        stop(proc)
    raise AssertionError("Alertmanager did not start")


def post(api: str, alerts: list[dict[str, str]]) -> None:
    body = json.dumps([{"labels": a} for a in alerts]).encode()
    req = urllib.request.Request(f"{api}/alerts", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as reply:
        assert reply.status == 200


def states(api: str) -> dict[tuple[str, str, str], str]:
    """(alertname, severity, process) -> active / suppressed."""
    with urllib.request.urlopen(f"{api}/alerts", timeout=10) as reply:
        alerts = json.load(reply)
    return {(a["labels"]["alertname"], a["labels"].get("severity", ""),
             a["labels"].get("process", "")): a["status"]["state"] for a in alerts}


def test_one_problem_pages_once(alertmanager: str) -> None:
    """A finding that turned critical: its warning alert, and the raw CLOSE-WAIT alert
    of the same process and port, are inhibited; another process's warning is not."""
    other = FINDING | {"process": "worker", "port": "5432", "rule": "no-keepalive"}
    leak = {k: v for k, v in FINDING.items() if k != "rule"} | {
        "alertname": "SockdoctorCloseWaitLeak", "side": "server"}
    post(alertmanager, [FINDING | {"severity": "warning"}, FINDING | {"severity": "critical"},
                        other | {"severity": "warning"}, leak | {"severity": "warning"}])
    deadline = time.monotonic() + 20
    want = {("SockdoctorFinding", "critical", "et-server"): "active",
            ("SockdoctorFinding", "warning", "et-server"): "suppressed",
            ("SockdoctorFinding", "warning", "worker"): "active",
            ("SockdoctorCloseWaitLeak", "warning", "et-server"): "suppressed"}
    while (got := states(alertmanager)) != want:
        assert time.monotonic() < deadline, got
        time.sleep(0.5)
