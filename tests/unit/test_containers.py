"""Container attribution from /proc/PID/cgroup, for every runtime's layout.

Each case is a whole /proc/PID/cgroup as the runtime leaves it for a process
inside the container (cgroup v2, v1, or the hybrid layout with both), seen
from the host. The podman cgroupfs case on the v1 hybrid layout is the one
this machine gives (tests/integration/test_image.py runs it for real).
"""

from __future__ import annotations

import pytest

from sockdoctor.linux.netns import NsRef
from sockdoctor.linux.procfs import cgroup_path, container_id, pod_uid
from sockdoctor.selectors import select_netns

ID = "4f3c2b1a09e8d7c6b5a49382716059e4d3c2b1a09e8d7c6b5a49382716059e4d"
SHORT = ID[:12]
POD = "0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b"
POD_ = POD.replace("-", "_")

V1_CONTROLLERS = ("12:pids", "11:memory", "10:cpu,cpuacct", "9:blkio", "8:devices",
                  "7:freezer", "6:net_cls,net_prio", "5:cpuset", "4:perf_event",
                  "3:hugetlb", "2:rdma")


def v2(path: str) -> str:
    return f"0::{path}\n"


def v1(path: str, systemd: str | None = None) -> str:
    lines = [f"{c}:{path}" for c in V1_CONTROLLERS]
    return "\n".join([*lines, f"1:name=systemd:{systemd or path}"]) + "\n"


def hybrid(path: str, unified: str = "/") -> str:
    return v1(path) + f"0::{unified}\n"


CASES = {
    "docker cgroupfs v1": v1(f"/docker/{ID}"),
    "docker cgroupfs v2": v2(f"/docker/{ID}"),
    "docker systemd v2": v2(f"/system.slice/docker-{ID}.scope"),
    "docker systemd v1": v1(f"/system.slice/docker-{ID}.scope"),
    "containerd CRI systemd v2": v2(
        f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{POD_}.slice/"
        f"cri-containerd-{ID}.scope"),
    "containerd CRI cgroupfs v1": v1(f"/kubepods/burstable/pod{POD}/{ID}"),
    "containerd CRI cgroupfs v2 guaranteed": v2(f"/kubepods/pod{POD}/{ID}"),
    "containerd CRI systemd v1 besteffort": v1(
        f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{POD_}.slice/"
        f"cri-containerd-{ID}.scope"),
    "CRI-O systemd v2": v2(
        f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{POD_}.slice/"
        f"crio-{ID}.scope"),
    "CRI-O cgroupfs v1": v1(f"/kubepods/burstable/pod{POD}/crio-{ID}"),
    "podman systemd v2": v2(f"/machine.slice/libpod-{ID}.scope"),
    "podman systemd v2 split": v2(f"/machine.slice/libpod-{ID}.scope/container"),
    "podman rootless v2": v2(
        f"/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope"),
    "podman cgroupfs v1 hybrid": hybrid(f"/libpod_parent/libpod-{ID}"),
    "podman cgroupfs v2": v2(f"/libpod_parent/libpod-{ID}"),
    "podman systemd v1": v1(f"/machine.slice/libpod-{ID}.scope"),
}
# Recorded on this machine (podman 4.3, runc, cgroupfs, cgroup v1 hybrid):
# a container's process, and its conmon beside it.
RECORDED_ID = "74645b8f3da53b48c12fb4eed4d455d938043c71cf155d1145b66783754c819c"
RECORDED = f"""\
9:name=systemd:/libpod_parent/libpod-{RECORDED_ID}
8:pids:/libpod_parent/libpod-{RECORDED_ID}
7:blkio:/libpod_parent/libpod-{RECORDED_ID}
6:freezer:/libpod_parent/libpod-{RECORDED_ID}
5:devices:/libpod_parent/libpod-{RECORDED_ID}
4:memory:/libpod_parent/libpod-{RECORDED_ID}
3:cpuset:/libpod_parent/libpod-{RECORDED_ID}
2:cpuacct:/libpod_parent/libpod-{RECORDED_ID}
1:cpu:/libpod_parent/libpod-{RECORDED_ID}
0::/libpod_parent/libpod-{RECORDED_ID}
"""
RECORDED_CONMON = """\
9:name=systemd:/
8:pids:/libpod_parent/conmon
7:blkio:/libpod_parent/conmon
6:freezer:/libpod_parent/conmon
5:devices:/libpod_parent/conmon
4:memory:/libpod_parent/conmon
3:cpuset:/libpod_parent/conmon
2:cpuacct:/libpod_parent/conmon
1:cpu:/libpod_parent/conmon
0::/
"""
KUBERNETES = {name for name in CASES if "CRI" in name}


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_runtime_layout_names_the_container(name: str) -> None:
    path = cgroup_path(CASES[name])
    assert container_id(path) == SHORT, path
    assert pod_uid(path) == (POD if name in KUBERNETES else "")


@pytest.mark.parametrize("text", [
    v2(f"/machine.slice/libpod-conmon-{ID}.scope"),   # podman's monitor, beside it
    hybrid("/libpod_parent/conmon", unified="/"),
    v2(f"/kubepods.slice/kubepods-pod{POD_}.slice/crio-conmon-{ID}.scope"),
    v2("/system.slice/sshd.service"), v2("/user.slice/user-1000.slice/session-3.scope"),
    v2("/"), hybrid("/"), v2(f"/kubepods.slice/kubepods-pod{POD_}.slice"),
    v2("/system.slice/docker.service"), v2(f"/system.slice/{ID[:40]}.service"),
    "",
])
def test_what_is_not_a_container_is_not_named_one(text: str) -> None:
    assert container_id(cgroup_path(text)) == ""


def test_recorded_podman_cgroupfs_hybrid() -> None:
    assert container_id(cgroup_path(RECORDED)) == RECORDED_ID[:12]
    assert container_id(cgroup_path(RECORDED_CONMON)) == ""


def test_the_innermost_container_wins() -> None:
    inner = "ab" * 32
    assert container_id(f"/docker/{ID}/docker/{inner}") == inner[:12]


def test_the_hybrid_layout_prefers_the_line_that_names_it() -> None:
    """Here the v2 line stays "/" and the v1 lines name the container."""
    assert cgroup_path(hybrid(f"/libpod_parent/libpod-{ID}")) == f"/libpod_parent/libpod-{ID}"
    assert cgroup_path(hybrid("/user.slice", unified="/init.scope")) == "/init.scope"
    assert cgroup_path(v1("/", systemd="/system.slice/cron.service")) == \
        "/system.slice/cron.service"


def test_older_short_ids_still_count() -> None:
    assert container_id("/lxc/0123456789ab") == "0123456789ab"
    assert container_id("/docker/0123456789abcdef") == "0123456789ab"


def test_netns_container_id_is_a_prefix_match() -> None:
    other = "9" * 64
    nss = [NsRef(1, "host", "host", "/proc/1/ns/net", 1),
           NsRef(2, f"container:{SHORT}", "container", "/proc/5/ns/net", 5),
           NsRef(3, f"container:{other[:12]}", "container", "/proc/6/ns/net", 6)]
    for given in (ID, SHORT, ID[:6], f"container:{ID}", f"container:{ID[:4]}"):
        got = select_netns(nss, given, own=None, netns_of_pid=lambda _pid: None)
        assert [ns.inode for ns in got] == [2], given
    assert select_netns(nss, "container:0000", own=None,
                        netns_of_pid=lambda _pid: None) == []
