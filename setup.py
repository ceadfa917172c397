"""Build sockdoctor's optional C extension (see src/sockdoctor/_fast.c), and its REVISION.

`optional=True`: when there is no working C compiler the build of the
extension fails, setuptools says so, and the package installs without it;
sockdoctor then runs its pure Python implementation of the same code.
REVISION (the exporter's build_info revision): $SOCKDOCTOR_REVISION at build
time, else the git commit when built from a checkout, else no file ("unknown").
Everything else about the package is declared in pyproject.toml.
"""

import os
import subprocess

from setuptools import Extension, setup
from setuptools.command.build_py import build_py


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


setup(cmdclass={"build_py": BuildWithRevision},
      ext_modules=[Extension("sockdoctor._fast", ["src/sockdoctor/_fast.c"], optional=True,
                             extra_compile_args=["-Wall", "-Wextra", "-Wno-unused-parameter"])])
