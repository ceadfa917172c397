"""The image of deploy/Dockerfile, built for real with podman, without a registry.

The base is Debian bookworm made with mmdebstrap from the Debian archive and
`podman import`ed; podman runs with a configuration written here (runc,
cgroupfs, file events, ulimits within this process's) and its own storage in
a temporary directory, so nothing of the host's podman is touched. pip inside
the build gets the host's pip configuration (`pip config list`: files and
PIP_* variables) and the files it names (CA bundle, constraints, local
indexes), mounted read-only.

Run by .ci/image-checks (SOCKDOCTOR_IMAGE_TESTS=1); skipped where podman
cannot run, except under CI=true, where that is a failure.
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TAG = "localhost/sockdoctor:test"
BASE = "localhost/sockdoctor-base:bookworm"
MIRROR = "http://deb.debian.org/debian"


def unavailable(why: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"the image tests must run in CI: {why}")
    pytest.skip(why)


@dataclass
class Podman:
    env: dict[str, str]
    work: Path

    def __call__(self, *args: str, timeout: float = 120, check: bool = True
                 ) -> subprocess.CompletedProcess:
        done = subprocess.run(["podman", *args], env=self.env, capture_output=True,
                              text=True, timeout=timeout)
        if check:
            assert done.returncode == 0, (args[:2], done.stdout[-1500:], done.stderr[-1500:])
        return done


def write_config(work: Path) -> dict[str, str]:
    """containers.conf and storage.conf for this machine, and the environment naming them."""
    # Without CAP_SYS_RESOURCE no limit may rise: podman's defaults (a million
    # files, four million processes) make runc fail with EPERM. Stay well below
    # ours (a limit equal to the hard one is refused too, for processes).
    files = min(16384, *(n for n in resource.getrlimit(resource.RLIMIT_NOFILE) if n > 0))
    procs = min(4096, *(n for n in resource.getrlimit(resource.RLIMIT_NPROC) if n > 0))
    (work / "containers.conf").write_text(
        "[containers]\n"
        f'default_ulimits = ["nofile={files}:{files}", "nproc={procs}:{procs}"]\n'
        "[engine]\n"
        'runtime = "runc"\n'  # crun refuses the cgroup v1 hybrid layout
        'cgroup_manager = "cgroupfs"\n'  # no systemd to ask for scopes
        'events_logger = "file"\n'
        f'tmp_dir = "{work}/tmp"\n')  # not /run/libpod: another podman user's
    (work / "storage.conf").write_text(
        f'[storage]\ndriver = "overlay"\ngraphroot = "{work}/storage"\n'
        f'runroot = "{work}/run"\n')
    return {**os.environ, "CONTAINERS_CONF": str(work / "containers.conf"),
            "CONTAINERS_STORAGE_CONF": str(work / "storage.conf")}


def pip_config(work: Path) -> list[str]:
    """`--volume` options giving pip in the build the host's configuration.

    The effective settings (files and PIP_* variables) become one pip.conf at
    /etc/pip.conf. What a setting names on the local disk is mounted read-only:
    a local index or wheel directory at its own path (a file:// index with its
    parent, where its pages point: simple/../files), a file from /etc (the CA
    bundle, constraints) under /run/host-pip, as the build's /etc is its own.
    """
    listed = subprocess.run([sys.executable, "-m", "pip", "config", "list"],
                            capture_output=True, text=True, timeout=60).stdout
    settings: dict[str, str] = {}
    for key, value in re.findall(r"^[^.\s]*\.([\w-]+)='(.*)'$", listed, re.M):
        settings[key] = value  # files first, then :env: (later lines win, as in pip)
    mounts: dict[str, str] = {}
    lines = ["[global]"]
    for key, value in settings.items():
        words = [_mounted(word, mounts) for word in value.split()]
        if any(words):
            lines.append(f"{key} = {' '.join(w for w in words if w)}")
    (work / "pip.conf").write_text("\n".join(lines) + "\n")
    volumes = [f"--volume={src}:{dst}:ro" for src, dst in mounts.items()]
    return [*volumes, f"--volume={work / 'pip.conf'}:/etc/pip.conf:ro"]


def _mounted(word: str, mounts: dict[str, str]) -> str:
    """The setting's word as the build sees it ('' if it names a path that is not here)."""
    path = word.removeprefix("file://")
    if not path.startswith("/"):
        return word  # a URL, a number, a flag
    if not os.path.exists(path):
        return ""
    if not path.startswith("/etc/"):
        top = os.path.dirname(path.rstrip("/")) if word.startswith("file://") else path
        mounts.setdefault(top, top)
        return word
    inside = f"/run/host-pip/{len(mounts)}/{os.path.basename(path)}"
    mounts[path] = inside
    return word.replace(path, inside)


def base_tarball(work: Path) -> Path:
    """Debian bookworm, minbase, from the archive; reused within one CI run."""
    cached = os.environ.get("SOCKDOCTOR_BASE_TARBALL")
    tarball = Path(cached) if cached else work / "base.tar"
    if tarball.exists():
        return tarball
    suite = "bookworm"
    sources = [f"deb {MIRROR} {suite} main", f"deb {MIRROR} {suite}-updates main",
               f"deb {MIRROR}-security {suite}-security main"]
    partial = tarball.with_suffix(".partial.tar")
    done = subprocess.run(["mmdebstrap", "--variant=minbase", "--quiet", suite, str(partial),
                           *sources], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    partial.rename(tarball)
    return tarball


@pytest.fixture(scope="session")
def podman(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Podman]:
    if os.geteuid() != 0:
        unavailable("podman runs here as root only")
    for tool in ("podman", "runc", "mmdebstrap"):
        if shutil.which(tool) is None:
            unavailable(f"{tool} is not installed (apt install podman runc mmdebstrap)")
    work = tmp_path_factory.mktemp("podman")
    pod = Podman(write_config(work), work)
    info = pod("info", "--format", "{{.Host.OCIRuntime.Name}}", check=False)
    if info.returncode != 0 or info.stdout.strip() != "runc":
        unavailable(f"podman cannot run here: {info.stderr.strip()[-500:]}")
    try:
        yield pod
    finally:
        pod("rm", "--all", "--force", "--time", "0", check=False)
        pod("rmi", "--all", "--force", check=False, timeout=300)
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="session")
def image(podman: Podman) -> str:
    """deploy/Dockerfile built on the imported base; the build time is printed."""
    started = time.monotonic()
    tarball = base_tarball(podman.work)
    made = time.monotonic()
    podman("import", "--quiet", str(tarball), BASE, timeout=300)
    imported = time.monotonic()
    podman("build", "--network", "host", "--build-arg", f"BASE={BASE}",
           *pip_config(podman.work), "--file", str(REPO / "deploy" / "Dockerfile"),
           "--tag", TAG, str(REPO), timeout=1800)
    built = time.monotonic()
    sys.stderr.write(f"\nimage: base {made - started:.1f} s, import {imported - made:.1f} s, "
                     f"build {built - imported:.1f} s\n")
    return TAG
