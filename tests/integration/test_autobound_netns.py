"""`autobound` judged by each socket's own namespace's port range, live and from a file.

The lab's namespace gets net.ipv4.ip_local_port_range 20000-20099 (the host's
is another); a client there connects to a listener on a fixed port of that
namespace, so its local port is one the kernel picked from 20000-20099 and
the accepted end's is not. Judged by the host's range, `autobound` would find
neither.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import msgspec
import pytest

from conftest import Remote
from sockdoctor import inventory, snapshot_io
from sockdoctor.lab.netlab import Lab
from sockdoctor.model import Snapshot
from sockdoctor.query import Query
from sockdoctor.sides import PORT_RANGE_SYSCTL

pytestmark = pytest.mark.root

RANGE = (20000, 20099)
SOCKDOCTOR = str(Path(sys.executable).parent / "sockdoctor")


@dataclass
class Scene:
    ns: str
    client_port: int


@pytest.fixture(scope="module")
def scene() -> Iterator[Scene]:
    with Lab("autobound", pair=False) as lab:
        ns = lab.server.netns
        subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-qw",
                        f"{PORT_RANGE_SYSCTL}={RANGE[0]} {RANGE[1]}"], check=True, timeout=30)
        remote = Remote(lab, lab.server, "sdt-autobound")
        port = remote("""
            lst = socket.socket()
            lst.bind(("127.0.0.1", 7603))  # a fixed port inside the lab's own namespace
            lst.listen(4)
            cli = socket.create_connection(("127.0.0.1", 7603))
            conn, _ = lst.accept()
            result = cli.getsockname()[1]
        """)
        assert RANGE[0] <= port <= RANGE[1]
        yield Scene(ns, port)


def autobound(snapshot: Snapshot) -> set[int]:
    return {sk.local_port for sk in Query.build("autobound").apply(snapshot).sockets}


def test_a_live_scan_judges_by_the_namespace_range(scene: Scene) -> None:
    snap = inventory.scan("autobound", netns=scene.ns, owners=False)
    assert {sk.local_port for sk in snap.sockets} == {scene.client_port}
    assert snap.namespaces[0].sysctls[PORT_RANGE_SYSCTL] == f"{RANGE[0]} {RANGE[1]}"


def test_a_saved_snapshot_is_judged_by_the_recorded_range(scene: Scene, tmp_path: Path
                                                           ) -> None:
    path = tmp_path / "snap.json"
    done = subprocess.run([SOCKDOCTOR, "snapshot", "-N", scene.ns, "-o", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    done = subprocess.run([SOCKDOCTOR, "ls", "--from", str(path), "--json", "autobound"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert [s["local_port"] for s in json.loads(done.stdout)["sockets"]] == [scene.client_port]

    # the same file as if another host with another range had saved it
    snap = snapshot_io.load(str(path))
    ns = snap.namespaces[0]
    ns.sysctls[PORT_RANGE_SYSCTL] = f"{scene.client_port + 1} 20099"
    assert autobound(snap) == set()
    ns.sysctls[PORT_RANGE_SYSCTL] = f"7603 {scene.client_port}"
    assert autobound(snap) == {7603, scene.client_port}


def test_a_file_without_the_range_falls_back_to_the_kernel_default(scene: Scene) -> None:
    snap = inventory.scan(netns=scene.ns, owners=False)
    older = msgspec.structs.replace(snap, namespaces=[
        msgspec.structs.replace(ns, sysctls={}) for ns in snap.namespaces])
    back = snapshot_io.loads(snapshot_io.dumps(older))
    assert autobound(back) == set()  # 200xx is outside 32768-60999
    assert autobound(snap) == {scene.client_port}
