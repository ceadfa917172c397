"""The image, for real: the C fast path is in it, and the exporter in one container
attributes the stuck sockets of another container to it.

As node_exporter runs in a container: the host's network and pid namespaces
(so /proc is the host's, and every container's network namespace is reachable
through /proc/PID/ns/net), read-only, with the DaemonSet's three capabilities
and nothing else. The leaking server runs in a second container with a network
namespace of its own (`--network none`: loopback only), so every socket it
leaks is inside it, and nothing of the host's is touched.
"""

from __future__ import annotations

import json
import re
import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from podmanlab import REPO, Podman

LEAKED = 3
LEAK = f"""
import socket, time
lst = socket.socket(); lst.bind(("127.0.0.1", 8000)); lst.listen(16)
clients = [socket.create_connection(("127.0.0.1", 8000)) for _ in range({LEAKED})]
held = [lst.accept()[0] for _ in range({LEAKED})]
for c in clients: c.close()
print("leaking", flush=True)
time.sleep(3600)
"""


def caps() -> list[str]:
    """The DaemonSet's capabilities: the container gets exactly those."""
    docs = yaml.safe_load_all((REPO / "deploy" / "kubernetes" / "daemonset.yaml").read_text())
    ds = next(d for d in docs if d["kind"] == "DaemonSet")
    return ds["spec"]["template"]["spec"]["containers"][0]["securityContext"][
        "capabilities"]["add"]


def exporter_args() -> list[str]:
    """`podman run` options of the exporter container (docs/exporter.md, "Container")."""
    return ["--network", "host", "--pid", "host", "--read-only", "--cap-drop", "all",
            "--cap-add", ",".join(caps())]


@pytest.fixture(scope="module")
def leak(podman: Podman, image: str) -> Iterator[str]:
    """A container holding LEAKED CLOSE-WAIT sockets on port 8000; its full id."""
    cid = podman("run", "--detach", "--network", "none", "--entrypoint",
                 "/opt/sockdoctor/bin/python", image, "-c", LEAK).stdout.strip()
    try:
        deadline = time.monotonic() + 30
        while "leaking" not in podman("logs", cid).stdout:
            assert time.monotonic() < deadline, podman("logs", cid).stderr
            time.sleep(0.2)
        yield cid
    finally:
        podman("rm", "--force", "--time", "0", cid, check=False)


def parse(text: str) -> list[tuple[str, dict[str, str], float]]:
    rows = []
    for name, labels, value in re.findall(r"^(\w+)\{(.*)\} (\S+)$", text, re.M):
        rows.append((name, dict(re.findall(r'(\w+)="([^"]*)"', labels)), float(value)))
    return rows


def test_the_image_uses_the_c_extension(podman: Podman, image: str) -> None:
    done = podman("run", "--rm", image, "--version")
    assert "fast path: C extension (sockdoctor._fast)" in done.stdout, done.stdout
    assert podman("run", "--rm", "--entrypoint", "sh", image, "-c",
                  "command -v gcc cc || echo none").stdout.strip() == "none"


def test_the_exporter_names_the_other_containers_sockets(podman: Podman, image: str,
                                                         leak: str) -> None:
    """Over HTTP, scanning every namespace, as the DaemonSet runs it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exporter = podman("run", "--detach", *exporter_args(), image, "exporter",
                      f"--listen=127.0.0.1:{port}", "--interval=1s").stdout.strip()
    try:
        text = scrape(podman, exporter, port)
    finally:
        podman("rm", "--force", "--time", "0", exporter, check=False)
    short = leak[:12]
    mine = [(labels, v) for name, labels, v in parse(text)
            if name == "sockdoctor_close_wait_sockets" and labels.get("container") == short]
    assert mine, text[-3000:]
    assert {labels["netns"] for labels, _ in mine} == {f"container:{short}"}
    assert sum(v for _, v in mine) == LEAKED
    assert {(labels["port"], labels["side"]) for labels, _ in mine} == {("8000", "server")}


def scrape(podman: Podman, exporter: str, port: int) -> str:
    """/metrics once the first sample is in."""
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                text = r.read().decode()
            if "sockdoctor_close_wait_sockets{" in text:
                return text
        except OSError:
            pass
        assert time.monotonic() < deadline, podman("logs", exporter).stderr[-3000:]
        time.sleep(0.5)


@pytest.mark.parametrize("digits", [6, 12, 64])
def test_netns_container_id_selects_it(podman: Podman, image: str, leak: str,
                                       digits: int) -> None:
    done = podman("run", "--rm", *exporter_args(), image, "exporter", "--once",
                  "--netns", f"container:{leak[:digits]}")
    rows = parse(done.stdout)
    netns = {labels["netns"] for name, labels, _ in rows if name == "sockdoctor_netns_info"}
    assert netns == {f"container:{leak[:12]}"}, done.stdout[-2000:]
    states = {labels["state"]: v for name, labels, v in rows if name == "sockdoctor_tcp_sockets"}
    assert states["close_wait"] == LEAKED and states["listen"] == 1


def test_ls_as_json_names_the_container(podman: Podman, image: str, leak: str) -> None:
    done = podman("run", "--rm", *exporter_args(), image, "ls", "--json", "--netns",
                  f"container:{leak[:12]}", "state", "close-wait")
    listing = json.loads(done.stdout)
    assert listing["namespaces"] == [{"inode": listing["namespaces"][0]["inode"],
                                      "name": f"container:{leak[:12]}", "kind": "container"}]
    assert listing["count"] == LEAKED
    assert {sk["netns"] for sk in listing["sockets"]} == {f"container:{leak[:12]}"}


def test_the_documented_commands_are_the_tested_ones() -> None:
    """docs/exporter.md's container block runs the exporter as these tests do."""
    text = (REPO / "docs" / "exporter.md").read_text()
    block = re.search(r"<!-- deploy-container -->\n```sh\n(.*?)```", text, re.S)
    assert block is not None
    run = next(line for line in block.group(1).splitlines() if "--detach" in line)
    assert " ".join(exporter_args()) in run
    assert "podman build -f deploy/Dockerfile -t sockdoctor:0.1.0 ." in block.group(1)


def test_recorded_cgroup_matches_this_runtime(podman: Podman, leak: str) -> None:
    """The podman cgroupfs layout in tests/unit/test_containers.py is what podman does here."""
    pid = podman("inspect", "--format", "{{.State.Pid}}", leak).stdout.strip()
    text = Path(f"/proc/{pid}/cgroup").read_text()
    assert f"/libpod_parent/libpod-{leak}" in text or f"libpod-{leak}.scope" in text, text
