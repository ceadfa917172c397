"""A real Prometheus scrapes the exporter; the alert rules and the dashboard run on it.

Both run on loopback: the exporter on a port the kernel picks, Prometheus on
a free port found the same way, with its own temporary data directory. The
exporter samples only the lab namespace this module makes (a leaking server),
so every value asserted is one the test caused.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import exporting
import pytest

from conftest import Remote, allow_stuck_sockets_in
from sockdoctor.lab.netlab import SERVER_V4, Lab

pytestmark = pytest.mark.root
DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
PORT = 7511
LEAKED = 4
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"


@dataclass
class Stack:
    lab: Lab
    exporter: exporting.Running
    api: str  # http://127.0.0.1:PORT/api/v1

    @property
    def ns(self) -> str:
        return self.lab.server.netns

    def query(self, promql: str) -> list[dict]:
        url = f"{self.api}/query?{urllib.parse.urlencode({'query': promql})}"
        with urllib.request.urlopen(url, timeout=10) as reply:
            body = json.load(reply)
        assert body["status"] == "success", body
        return body["data"]["result"]

    def wait_query(self, promql: str, limit: float = 60.0) -> list[dict]:
        deadline = time.monotonic() + limit
        while not (result := self.query(promql)):
            assert time.monotonic() < deadline, f"no data for {promql}"
            time.sleep(0.5)
        return result


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_prometheus(workdir: Path, target: str) -> tuple[subprocess.Popen, str]:
    shutil.copy(DEPLOY / "prometheus" / "alerts.yml", workdir / "alerts.yml")
    (workdir / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "rule_files: [alerts.yml]\n"
        "scrape_configs:\n"
        f"  - job_name: sockdoctor\n    static_configs: [{{targets: ['{target}']}}]\n")
    for _attempt in range(5):  # the port may be taken between finding it and binding it
        port = free_port()
        proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={workdir / 'prometheus.yml'}",
             f"--storage.tsdb.path={workdir / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 30
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=2):
                    return proc, f"http://127.0.0.1:{port}/api/v1"
            except OSError:
                time.sleep(0.2)
        stop(proc)
    raise AssertionError("Prometheus did not start")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory,
          request: pytest.FixtureRequest) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp(f"prometheus-{os.getpid()}")
    with Lab(f"prm{os.getpid() % 10000}") as lab:
        allow_stuck_sockets_in(request, lab)  # the module's tests: the leak is the point
        server = Remote(lab, lab.server, "sdt-leaker")
        server(f"""
            lst = socket.socket()
            lst.bind(("0.0.0.0", {PORT}))
            lst.listen(32)
            conns = []
        """)
        client = Remote(lab, lab.client, "sdt-client")
        client(f"cs = [socket.create_connection(('{SERVER_V4}', {PORT})) for _ in range({LEAKED})]")
        server(f"conns += [lst.accept()[0] for _ in range({LEAKED})]")
        client("for c in cs: c.close()")
        with exporting.running("--netns", lab.server.netns, "--interval", "1s",
                               "--stuck-after", "1s") as exporter:
            target = exporter.base.removeprefix("http://")
            prometheus, api = start_prometheus(workdir, target)
            try:
                yield Stack(lab, exporter, api)
            finally:
                stop(prometheus)


def test_prometheus_scrapes_the_leak_with_its_labels_and_value(stack: Stack) -> None:
    result = stack.wait_query(f'sockdoctor_close_wait_sockets{{netns="{stack.ns}"}}')
    assert len(result) == 1
    (series,) = result
    assert series["metric"] | {"instance": "", "job": ""} == {
        "__name__": "sockdoctor_close_wait_sockets", "netns": stack.ns, "process": "sdt-leaker",
        "side": "server", "port": str(PORT), "instance": "", "job": ""}
    assert series["metric"]["job"] == "sockdoctor"
    assert float(series["value"][1]) == LEAKED
    (up,) = stack.query('up{job="sockdoctor"}')
    assert up["value"][1] == "1"
    states = stack.query(f'sum by (state) (sockdoctor_tcp_sockets{{netns="{stack.ns}"}})')
    by_state = {s["metric"]["state"]: float(s["value"][1]) for s in states}
    assert by_state["close_wait"] == LEAKED and by_state["listen"] == 1
    assert len(by_state) == 11


def test_the_alert_rules_load_and_are_evaluated(stack: Stack) -> None:
    url = stack.api + "/rules"
    deadline = time.monotonic() + 30
    while True:
        with urllib.request.urlopen(url, timeout=10) as reply:
            rules = [r for g in json.load(reply)["data"]["groups"] for r in g["rules"]]
        if rules and all(r.get("lastEvaluation", "").startswith("20") for r in rules):
            break
        assert time.monotonic() < deadline, rules
        time.sleep(0.5)
    assert len(rules) == 11
    assert {r["health"] for r in rules} == {"ok"}, [r for r in rules if r["health"] != "ok"]


def dashboard_queries() -> list[tuple[str, str]]:
    dash = json.loads((DEPLOY / "grafana" / "sockdoctor.json").read_text())
    return [(p["title"], t["expr"]) for p in dash["panels"] for t in p.get("targets", ())]


def grafana_to_promql(expr: str) -> str:
    """What Grafana sends for the dashboard's variables set to "All"."""
    return (expr.replace("$instance", ".*").replace("$netns", ".*")
            .replace("$__rate_interval", "20s"))


def test_every_dashboard_query_returns_data(stack: Stack) -> None:
    stack.wait_query(f'sockdoctor_finding_sockets{{netns="{stack.ns}"}}')
    time.sleep(5)  # a few scrapes, so that rate() and deriv() have points
    empty = [(title, expr) for title, expr in dashboard_queries()
             if not stack.query(grafana_to_promql(expr))]
    assert not empty
    served = set(exporting.parse(stack.exporter.get()[1]))
    served |= {re.sub(r"_(sum|count|bucket|total)$", "", name) for name in served}
    used = {name for _, expr in dashboard_queries()
            for name in re.findall(r"\b(sockdoctor_[a-z_]+)\b", expr)}
    assert used and used <= served, used - served
    assert all("sockdoctor_" in expr for _, expr in dashboard_queries())


def test_a_finding_is_one_series_with_its_severity_as_a_value(stack: Stack) -> None:
    """No severity label (it changes as a leak ages); the severity is a gauge's value."""
    levels = stack.wait_query(f'sockdoctor_finding_severity{{netns="{stack.ns}"}}')
    sockets = stack.query(f'sockdoctor_finding_sockets{{netns="{stack.ns}"}}')

    def identities(series: list[dict]) -> set[frozenset]:
        return {frozenset((k, v) for k, v in s["metric"].items() if k != "__name__")
                for s in series}
    assert identities(levels) == identities(sockets)
    assert all("severity" not in s["metric"] for s in levels + sockets)
    assert {float(s["value"][1]) for s in levels} <= {1.0, 2.0, 3.0}


def test_the_dashboard_is_grafana_json_with_a_datasource_variable() -> None:
    dash = json.loads((DEPLOY / "grafana" / "sockdoctor.json").read_text())
    names = [v["name"] for v in dash["templating"]["list"]]
    assert names == ["datasource", "instance", "netns"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dash["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
            assert panel["targets"], panel["title"]


def test_promtool_checks_and_tests_the_rules() -> None:
    rules = DEPLOY / "prometheus"
    check = subprocess.run(["promtool", "check", "rules", str(rules / "alerts.yml")],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS: 11 rules found" in check.stdout
    test = subprocess.run(["promtool", "test", "rules", str(rules / "alerts_test.yml")],
                          capture_output=True, text=True, timeout=60)
    assert test.returncode == 0, test.stdout + test.stderr
