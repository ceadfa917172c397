"""Build sockdoctor's optional compiled parts: the C extension and the BPF programs.

`optional=True`: when there is no working C compiler the build of the
extension fails, setuptools says so, and the package installs without it;
sockdoctor then runs its pure Python implementation of the same code.

The BPF programs (src/sockdoctor/linux/bpf/*.bpf.c, see docs/design.md) are
compiled by clang into `<name>.bpf.o` beside their source when clang is
there; without it, or if it fails, the package installs without them and
the kernel engine says so in `sockdoctor --version`.
Everything else about the package is declared in pyproject.toml.
"""

import os
import shutil
import subprocess
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

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


setup(cmdclass={"build_ext": BuildExt},
      ext_modules=[Extension("sockdoctor._fast", ["src/sockdoctor/_fast.c"], optional=True,
                             extra_compile_args=["-Wall", "-Wextra",
                                                 "-Wno-unused-parameter"])])
