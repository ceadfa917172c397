"""The counting program (linux/bpf/aggregate.py) leaves nothing behind.

Loaded, run and closed 200 times, and kept loaded by a counting Sampler
then closed with it: afterwards the kernel lists as many BPF programs and
maps as before (the bpf syscall, through `bpftool prog/map show`), none of
ours, and this process holds as many descriptors.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time

import pytest

from bpfengine import force_engine
from sockdoctor.lab.netlab import Lab
from sockdoctor.linux import netns
from sockdoctor.linux.bpf.aggregate import Aggregator
from sockdoctor.model import TcpState
from sockdoctor.watch.sampler import Sampler

pytestmark = [pytest.mark.root, pytest.mark.slow]
MAPS = {"emit_mask", "totals", "sd_aggre.bss"}


def ours() -> tuple[int, int]:
    """(programs, maps) of the counting program that the kernel holds now."""
    def show(kind: str) -> list[dict]:
        return json.loads(subprocess.run(["bpftool", "-j", kind, "show"], check=True,
                                         capture_output=True, text=True).stdout)
    return (sum(p.get("name") == "aggregate" for p in show("prog")),
            sum(m.get("name") in MAPS for m in show("map")))


def settled() -> tuple[int, int]:
    """ours() once closed objects are freed (after an RCU grace period)."""
    deadline = time.monotonic() + 10
    while (now := ours()) != (0, 0) and time.monotonic() < deadline:
        time.sleep(0.05)
    return now


def test_loading_and_unloading_leaves_nothing(solo: Lab, monkeypatch: pytest.MonkeyPatch
                                              ) -> None:
    force_engine(monkeypatch)
    if shutil.which("bpftool") is None:
        pytest.fail("bpftool is not installed (CI installs it)")
    fds = len(os.listdir("/proc/self/fd"))
    assert settled() == (0, 0)
    here = netns.current_inode()
    for _ in range(200):
        with Aggregator([TcpState.CLOSE_WAIT, TcpState.LISTEN]) as agg:
            found = agg.run(here)
            assert found.sockets >= len(found.emitted)
    sampler = Sampler(netns=solo.server.netns, interval=1, doctor=False).count_in_kernel()
    sampler.sample()
    assert sampler.sample().tallies is not None  # the counting program is loaded now
    assert ours()[0] == 1
    sampler.close()
    sampler = Sampler(netns=solo.server.netns, interval=1, doctor=False).count_in_kernel()
    sampler.sample()
    sampler.sample()
    del sampler  # never closed: unloaded when collected
    assert settled() == (0, 0)
    assert len(os.listdir("/proc/self/fd")) == fds
