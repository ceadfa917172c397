"""The exporter and the reaper run from the short Python script in docs/examples/.

The daemons are library objects (watch.exporter.serve_exporter/build_exporter,
reap.daemon.run); the CLI only parses. The script serves the exporter for a
lab namespace holding CLOSE-WAIT leaks and runs one dry-run reap cycle there.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from test_kill import build, make_scene
from test_reap import write_policy

from sockdoctor.lab.netlab import Lab
from sockdoctor.model import TcpState

pytestmark = pytest.mark.root

SCRIPT = Path(__file__).parents[2] / "docs" / "examples" / "daemons.py"


def test_the_documented_script_serves_metrics_and_reaps(lab: Lab, tmp_path: Path) -> None:
    scene = make_scene(lab, tmp_path)
    leaks = {sk.cookie for sk in build(scene, "close-wait")}
    policy = write_policy(tmp_path / "reap.toml", pid=scene.server.pid, older="1ms")
    run = subprocess.Popen([sys.executable, str(SCRIPT), scene.netns, str(policy), "4"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert run.stdout is not None
    first = run.stdout.readline()
    url = re.fullmatch(r"metrics at (http://127\.0\.0\.1:\d+/metrics)\n", first)
    assert url, first + run.stderr.read() if run.poll() is not None else first
    deadline = time.monotonic() + 10
    while True:
        body = urllib.request.urlopen(url.group(1), timeout=5).read().decode()
        if 'state="close_wait"' in body or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert re.search(r'sockdoctor_tcp_sockets\{[^}]*state="close_wait"\} [1-9]', body)
    out, err = run.communicate(timeout=60)
    assert run.returncode == 0, err
    assert "reap cycles: 1" in out
    assert "dry run" in out  # the reaper's first line: nothing acted on
    still = {sk.cookie for sk in scene.ours() if sk.state == TcpState.CLOSE_WAIT}
    assert leaks <= still  # a dry run ended nothing
