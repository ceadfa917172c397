"""The kernel engine leaves nothing behind: no program, map, link or descriptor.

Every program is loaded, verified, run and closed within one call; nothing
is pinned. After 1,000 rounds the kernel holds as many BPF programs and maps
as before (`bpftool prog show` / `map show`), and this process as many open
descriptors.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time

import pytest

from bpfengine import force_engine
from sockdoctor.linux import sockdiag
from sockdoctor.linux.bpf import destroy, keepalive, owners, sockets
from sockdoctor.linux.bpf.libbpf import BpfObject

pytestmark = [pytest.mark.root, pytest.mark.slow]
OUR_PROGRAMS = {"socket_owners", "destroy_planned", "keepalive_plann",
                "dump_sockets"}  # 15 chars at most


def kernel_objects() -> tuple[int, int, int, int]:
    """(all programs, all maps, ours, ours) as bpftool lists them."""
    progs = json.loads(subprocess.run(["bpftool", "-j", "prog", "show"], check=True,
                                      capture_output=True, text=True).stdout)
    maps = json.loads(subprocess.run(["bpftool", "-j", "map", "show"], check=True,
                                     capture_output=True, text=True).stdout)
    mine_p = sum(p.get("name") in OUR_PROGRAMS for p in progs)
    mine_m = sum(m.get("name", "").startswith("sd_") or m.get("name") in
                 ("planned", "outcomes", "wanted", "config") for m in maps)
    return len(progs), len(maps), mine_p, mine_m


def settled() -> tuple[int, int, int, int]:
    """kernel_objects() once ours are gone: the kernel frees a closed program or map
    after an RCU grace period, so one closed a moment ago may still be listed."""
    deadline = time.monotonic() + 10
    while (now := kernel_objects())[2:] != (0, 0) and time.monotonic() < deadline:
        time.sleep(0.05)
    return now


def test_a_thousand_loads_leave_nothing_behind(monkeypatch: pytest.MonkeyPatch) -> None:
    force_engine(monkeypatch)
    if shutil.which("bpftool") is None:
        pytest.fail("bpftool is not installed (CI installs it)")
    fds = len(os.listdir("/proc/self/fd"))
    before = settled()
    with BpfObject("owners") as obj:  # while loaded, it is there to be counted
        during = kernel_objects()
        obj.run_iter("socket_owners")
    assert during[2] == before[2] + 1 and during[3] > before[3]
    for _ in range(1000):
        owners.walk()
    for name, program in (("destroy", "destroy_planned"), ("keepalive", "keepalive_planned")):
        for _ in range(50):
            with BpfObject(name, {"planned": 64, "outcomes": 64}) as obj:
                obj.run_iter(program)
    opts = sockdiag.DumpOptions(sockdiag.ALL_STATES, age=True)
    for _ in range(200):  # the socket source: loaded once per scan, an iterator per namespace
        with sockets.source(opts, (2, 10)) as dump:
            assert dump is not None
            dump(0)
            dump(0)
    assert destroy.usable() and keepalive.usable() and sockets.usable()  # none refused
    after = settled()
    assert after[2:] == before[2:] == (0, 0)
    assert after[:2] == before[:2]  # (nobody else loaded anything meanwhile, it seems)
    assert len(os.listdir("/proc/self/fd")) == fds
