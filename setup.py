"""Build sockdoctor's optional C extension (see src/sockdoctor/_fast.c).

`optional=True`: when there is no working C compiler the build of the
extension fails, setuptools says so, and the package installs without it;
sockdoctor then runs its pure Python implementation of the same code.
Everything else about the package is declared in pyproject.toml.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("sockdoctor._fast", ["src/sockdoctor/_fast.c"], optional=True,
                             extra_compile_args=["-Wall", "-Wextra", "-Wno-unused-parameter"])])
