"""Which engine runs: SOCKDOCTOR_ENGINE, SOCKDOCTOR_PURE, and what --version says."""

from __future__ import annotations

import pytest

from sockdoctor.linux import bpf, native


@pytest.mark.parametrize(("env", "engine", "pure"), [
    ({}, "", False),
    ({"SOCKDOCTOR_ENGINE": "bpf"}, "bpf", False),
    ({"SOCKDOCTOR_ENGINE": " C "}, "c", False),
    ({"SOCKDOCTOR_ENGINE": "pure"}, "pure", True),
    ({"SOCKDOCTOR_PURE": "1"}, "pure", True),
    ({"SOCKDOCTOR_PURE": "0"}, "", False),
    ({"SOCKDOCTOR_PURE": "1", "SOCKDOCTOR_ENGINE": "c"}, "c", False),  # the explicit one wins
    ({"SOCKDOCTOR_ENGINE": "gpu"}, "", False),  # unknown: the automatic choice
])
def test_the_environment_chooses(monkeypatch: pytest.MonkeyPatch, env: dict[str, str],
                                 engine: str, pure: bool) -> None:
    for name in ("SOCKDOCTOR_ENGINE", "SOCKDOCTOR_PURE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert bpf.requested() == engine
    assert native.pure_requested() is pure
    assert bpf.wanted() is (engine in ("", "bpf"))


@pytest.mark.parametrize("engine", ["c", "pure"])
def test_forced_off_version_says_so_without_loading_anything(
        monkeypatch: pytest.MonkeyPatch, engine: str) -> None:
    monkeypatch.setenv("SOCKDOCTOR_ENGINE", engine)
    monkeypatch.setattr(bpf, "_probe", lambda: pytest.fail("tried to load a program"))
    assert bpf.describe() == f"kernel engine: BPF not in use: off (SOCKDOCTOR_ENGINE={engine})"
    assert not bpf.available()


def test_a_reason_from_the_probe_is_the_version_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SOCKDOCTOR_ENGINE", raising=False)
    monkeypatch.delenv("SOCKDOCTOR_PURE", raising=False)
    monkeypatch.setattr(bpf, "_probe", lambda: "the kernel has no BTF (/sys/kernel/btf/vmlinux)")
    assert bpf.describe() == ("kernel engine: BPF not in use: the kernel has no BTF "
                              "(/sys/kernel/btf/vmlinux)")
    assert not bpf.available()


def test_owner_records_decode_into_the_walks_arrays() -> None:
    """owners.bpf.c's records: sockets (fd >= 0) and per-process counts (fd -1)."""
    import struct

    from sockdoctor.linux.bpf import owners

    records = [(10, 3, 1001), (10, 7, 1002), (10, -1, 12), (11, 0, 1001), (11, -1, 1),
               (12, -1, 40)]
    data = b"".join(struct.pack("=iiQ", *r) for r in records) + b"\0" * 5  # a torn tail
    walk = owners.decode(data)
    assert list(zip(walk.pids, walk.fds, walk.inodes, strict=True)) == [
        (10, 3, 1001), (10, 7, 1002), (11, 0, 1001)]
    assert dict(zip(walk.count_pids, walk.counts, strict=True)) == {10: 12, 11: 1, 12: 40}
    owner_map = walk.to_map()
    assert sorted((o.pid, o.fd) for o in owner_map.by_inode[1001]) == [(10, 3), (11, 0)]
    part = owners.subset(walk, {11, 12})
    assert list(part.pids) == [11] and list(part.count_pids) == [11, 12]
