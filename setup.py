"""Build sockdoctor's optional compiled parts (the C extension and the BPF programs) and REVISION.

`optional=True`: when there is no working C compiler the build of the
extension fails, setuptools says so, and the package installs without it;
sockdoctor then runs its pure Python implementation of the same code.

The BPF programs (src/sockdoctor/linux/bpf/*.bpf.c, see docs/design.md) are
compiled by clang into `<name>.bpf.o` beside their source when clang is
there; without it, or if it fails, the package installs without them and
the kernel engine says so in `sockdoctor --version`.

REVISION (the exporter's build_info revision): $SOCKDOCTOR_REVISION at build
time, else the git commit when built from a checkout, else no file ("unknown").
Everything else about the package is declared in pyproject.toml.
"""

import os
import shutil
import subprocess
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

BPF_SRC = Path("src/sockdoctor/linux/bpf")


def build_bpf(out_dir: Path) -> None:
    """clang -target bpf each program; CO-RE (-g: BTF for the relocations), -O2."""
    clang = os.environ.get("BPF_CLANG") or shutil.which("clang")
    if not clang:
        print("sockdoctor: no clang: the BPF engine is not built (sockdoctor still works)")
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    for source in sorted(BPF_SRC.glob("*.bpf.c")):
        target = out_dir / (source.name[:-2] + ".o")
        cmd = [clang, "-g", "-O2", "-target", "bpf", "-D__TARGET_ARCH_x86", "-Wall",
               f"-I{BPF_SRC}", "-c", str(source), "-o", str(target)]
        try:
            subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=300)
        except (OSError, subprocess.SubprocessError) as exc:
            detail = getattr(exc, "stderr", "") or exc
            print(f"sockdoctor: building {source.name} failed, BPF engine without it: {detail}")
            target.unlink(missing_ok=True)


class BuildExt(build_ext):
    def run(self) -> None:
        super().run()
        out = BPF_SRC if self.inplace else Path(self.build_lib) / "sockdoctor/linux/bpf"
        build_bpf(out)


def revision() -> str:
    given = os.environ.get("SOCKDOCTOR_REVISION", "").strip()
    if given:
        return given
    try:
        done = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True,
                              text=True, timeout=10, cwd=os.path.dirname(os.path.abspath(__file__)))
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


class BuildWithRevision(build_py):
    def run(self) -> None:
        super().run()
        found = revision()
        if found and not self.dry_run:
            with open(os.path.join(self.build_lib, "sockdoctor", "REVISION"), "w") as f:
                f.write(found[:100] + "\n")


setup(cmdclass={"build_ext": BuildExt, "build_py": BuildWithRevision},
      ext_modules=[Extension("sockdoctor._fast", ["src/sockdoctor/_fast.c"], optional=True,
                             extra_compile_args=["-Wall", "-Wextra", "-Wno-unused-parameter"])])
