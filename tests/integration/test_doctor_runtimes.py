"""The doctor names the owner's runtime and library, and gives that fix first.

Real programs in a lab's client namespace talk to a real HTTP server in its
server namespace that closes keep-alive connections idle for 1 s (as a load
balancer or nginx does, only faster): each client then holds CLOSE-WAIT
sockets the way its runtime does, and the report must say which runtime,
which library, and that library's fix, not the catalogue.

- Go: response bodies never closed (the signature told apart from an idle pool;
  IdleConnTimeout explicitly not the fix).
- Node.js 20: responses never consumed, under the agent's 1 s keepalive probes,
  which keep tcp_info's last ACK young: still reported once stuck.
- Java: Apache HttpClient's pool keeping connections the server timed out.
- Python: a requests Session keeping its pooled connection.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sockdoctor.doctor import config_for, diagnose
from sockdoctor.doctor.finding import Finding
from sockdoctor.inventory import ScanOptions, scan
from sockdoctor.lab.netlab import SERVER_V4, Lab

pytestmark = pytest.mark.root

PORT = 8080
HERE = Path(__file__).parent / "runtimes"
JARS = ("/usr/share/java/httpclient.jar", "/usr/share/java/httpcore.jar",
        "/usr/share/java/commons-logging.jar")


def serve(lab: Lab, body: int) -> subprocess.Popen:
    """The HTTP server: keep-alive, idle connections closed after 1 s."""
    proc = lab.spawn(lab.server, [sys.executable, str(HERE / "idle_http_server.py"),
                                  str(PORT), str(body)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "listening"
    return proc


def run_client(lab: Lab, argv: list[str], cwd: Path) -> subprocess.Popen:
    url = f"http://{SERVER_V4}:{PORT}/"
    proc = lab.spawn(lab.client, [a.replace("URL", url) for a in argv], cwd=str(cwd),
                     stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def client_finding(lab: Lab, pid: int, at_least: int, settle: float = 3.5) -> Finding:
    """The doctor's CLOSE-WAIT finding for the client, once its sockets are stuck (2 s)."""
    deadline = time.monotonic() + settle + 10
    time.sleep(settle)
    while True:
        snap = scan(None, ScanOptions(age=True), netns=lab.client.netns, evidence=True)
        report = diagnose(snap, config=config_for("2s"))
        found = [f for f in report.findings if f.rule == "client-pool-dead-connections"
                 and pid in [p.pid for p in f.processes] and f.evidence["stuck"] >= at_least]
        if found or time.monotonic() > deadline:
            assert found, [f.title for f in report.findings] or report.notes
            return found[0]
        time.sleep(0.5)


def need(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (.ci/run installs it)")


def test_go_body_never_closed(lab: Lab, tmp_path: Path) -> None:
    need("go")
    binary = tmp_path / "bodyleak"
    subprocess.run(["go", "build", "-o", str(binary), str(HERE / "bodyleak.go")], check=True,
                   env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
                        "GOCACHE": str(tmp_path / "cache"), "GO111MODULE": "off"},
                   capture_output=True, timeout=240)
    serve(lab, body=100)
    client = run_client(lab, [str(binary), "URL"], tmp_path)
    f = client_finding(lab, client.pid, at_least=5)
    assert f.evidence["runtime"].startswith("Go 1.") and "net/http client" in f.evidence["runtime"]
    assert "owner: Go" in "\n".join(f.evidence_lines)
    assert f.evidence["signature"] == "go-body-not-closed"
    assert "never closed the response bodies" in f.title
    assert f.fix.startswith("Close every response body")
    assert "IdleConnTimeout is NOT the fix" in f.fix
    assert "HikariCP" not in f.fix and "OkHttp" not in f.fix  # no catalogue
    # Go arms a 15-30 s keepalive: no probe went out yet, so the age is exact (< 3 s of
    # idle + stuck), not the upper bound of the last data received.
    assert f.evidence["oldest_age_ms"] < 3400


def test_node_keepalive_probes_do_not_hide_the_leak(lab: Lab, tmp_path: Path) -> None:
    """Node's agent probes every second: the last ACK stays < 1 s, the leak is still seen."""
    need("node")
    serve(lab, body=200_000)  # larger than the stream's buffer: the socket pauses
    client = run_client(lab, ["node", str(HERE / "unconsumed.js"), "URL"], tmp_path)
    f = client_finding(lab, client.pid, at_least=3, settle=4.5)
    snap = scan(None, ScanOptions(age=True), netns=lab.client.netns)
    acks = [sk.age_ms for sk in snap.sockets if sk.state == 8]  # CLOSE-WAIT
    assert acks and max(a for a in acks if a is not None) < 2000, \
        "the probes should keep the last ACK young (the case being tested)"
    assert f.evidence["runtime"].startswith("Node.js")
    assert f.evidence["signature"] == "node-response-not-consumed"
    assert "under keepalive probes" in "\n".join(f.evidence_lines)
    assert f.fix.startswith("Consume every response")


def test_java_apache_httpclient_pool(lab: Lab, tmp_path: Path) -> None:
    need("java", "javac")
    if not all(Path(j).exists() for j in JARS):
        pytest.skip("libhttpclient-java not installed (.ci/run installs it)")
    cp = ":".join(JARS)
    subprocess.run(["javac", "-d", str(tmp_path), "-cp", cp, str(HERE / "Pool.java")],
                   check=True, capture_output=True, timeout=120)
    serve(lab, body=100)
    client = run_client(lab, ["java", "-cp", f"{cp}:{tmp_path}", "Pool", "URL"], tmp_path)
    f = client_finding(lab, client.pid, at_least=2)
    assert f.evidence["runtime"].startswith("Java ")
    assert "Apache HttpClient" in f.evidence["runtime"]
    assert f.fix.startswith("Apache HttpClient: HttpClientBuilder.evictIdleConnections(")
    assert "Go net/http" not in f.fix and "psycopg" not in f.fix


def test_python_requests_session(lab: Lab, tmp_path: Path) -> None:
    pytest.importorskip("requests")
    serve(lab, body=100)
    client = run_client(lab, [sys.executable, str(HERE / "session_client.py"), "URL"],
                        tmp_path)
    f = client_finding(lab, client.pid, at_least=1)
    assert f.evidence["runtime"].startswith(f"Python {sys.version_info[0]}.")
    assert "requests" in f.evidence["runtime"]
    assert f.fix.startswith("requests: close the Session")
