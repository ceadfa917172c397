"""Installing sockdoctor builds the C fast path when it can, and still works when it cannot.

Each case builds a wheel from a clean copy of this source tree with pip, the
way `pip install .` does, installs it into a directory of its own and asks
the installed copy for `--version`, which names the implementation in use.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import sockdoctor

ROOT = Path(__file__).resolve().parents[2]
SKIP = shutil.ignore_patterns("build", "dist", "*.so", "*.egg-info", "__pycache__", ".git",
                              ".hypothesis", ".pytest_cache", ".ruff_cache", ".venv")

pytestmark = pytest.mark.slow


def build_and_ask(tmp: Path, env: dict[str, str]) -> tuple[list[str], str]:
    """Files of the built wheel under sockdoctor/, and `sockdoctor --version` of the install."""
    source, wheels, target = tmp / "src", tmp / "wheels", tmp / "site"
    shutil.copytree(ROOT, source, ignore=SKIP)
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
                            "-w", str(wheels), str(source)],
                           env={**os.environ, **env}, capture_output=True, text=True,
                           timeout=600)
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = wheels.glob("sockdoctor-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                    str(target), str(wheel)], check=True, capture_output=True, timeout=300)
    env_run = {**os.environ, "PYTHONPATH": str(target)}
    env_run.pop("SOCKDOCTOR_PURE", None)
    version = subprocess.run([sys.executable, "-m", "sockdoctor", "--version"], env=env_run,
                             cwd=tmp, capture_output=True, text=True, timeout=60, check=True)
    return names, version.stdout


def test_with_a_compiler_the_extension_is_built_and_used(tmp_path: Path) -> None:
    names, version = build_and_ask(tmp_path, {})
    assert any(n.startswith("sockdoctor/_fast.") and n.endswith(".so") for n in names)
    assert not any(n.endswith(".c") for n in names)
    assert "fast path: C extension" in version
    if shutil.which("clang"):  # the BPF programs too (the engine's own tests say if it loads)
        assert "sockdoctor/linux/bpf/owners.bpf.o" in names
        assert "kernel engine: BPF" in version


@pytest.mark.parametrize("no_compiler", [{"CC": "/bin/false"}, {"PATH": "/nonexistent"}],
                         ids=["CC=false", "no-compiler-on-PATH"])
def test_without_a_compiler_the_install_works_in_pure_python(tmp_path: Path,
                                                             no_compiler: dict[str, str]) -> None:
    names, version = build_and_ask(tmp_path, no_compiler)
    assert not any(n.endswith(".so") for n in names)
    assert "sockdoctor/cli/__init__.py" in names
    assert version.splitlines()[:2] == [f"sockdoctor, version {sockdoctor.__version__}",
                                        "fast path: not installed (sockdoctor._fast was not "
                                        "built: no C compiler at install time?), pure Python "
                                        "in use"]
    if "PATH" in no_compiler:  # no clang either: no BPF programs, and --version says so
        assert not any(n.endswith(".bpf.o") for n in names)
        assert version.splitlines()[2] == ("kernel engine: BPF not in use: its programs were "
                                           "not built (no clang at install time?)")
