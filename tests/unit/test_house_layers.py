"""The house's floors, checked by reading src/sockdoctor (AST, no import).

- the kernel lives behind linux/: no other module names a /proc or /sys path,
  makes a netlink, raw or packet socket, or imports ctypes;
- render/ is the top floor: only cli/ and render/ itself import it.
Every exception is listed below with its reason.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "sockdoctor"
KERNEL_WORDS = ("AF_NETLINK", "SOCK_RAW", "AF_PACKET", "NETLINK_SOCK_DIAG")
# Modules outside linux/ allowed to reach the kernel themselves, and why.
KERNEL_EXCEPTIONS: dict[str, str] = {
    "lab/programs/_common.py": "the lab's programs stand in for the user's buggy servers "
                               "and clients, run as their own processes; each names itself "
                               "with prctl(PR_SET_NAME) as a real server would. That is the "
                               "program under diagnosis, not sockdoctor reaching the kernel",
}


@cache
def modules() -> tuple[tuple[str, ast.Module], ...]:
    """Every module of the package, parsed once for all the tests here."""
    return tuple((path.relative_to(SRC).as_posix(), ast.parse(path.read_text()))
                 for path in sorted(SRC.rglob("*.py")))


def _docstrings(tree: ast.Module) -> set[int]:
    """ids of the docstring constants (prose may name /proc paths)."""
    found = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) \
                and isinstance(body[0].value, ast.Constant):
            found.add(id(body[0].value))
    return found


def kernel_uses(tree: ast.Module) -> Iterator[str]:
    """What in a module reaches the kernel directly: paths, sockets, ctypes."""
    skip = _docstrings(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                and id(node) not in skip and node.value.startswith(("/proc", "/sys/")):
            yield f"path {node.value!r} (line {node.lineno})"
        elif isinstance(node, ast.Attribute) and node.attr in KERNEL_WORDS:
            yield f"{node.attr} (line {node.lineno})"
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
            if any(n == "ctypes" or n.startswith("ctypes.") for n in names):
                yield f"import ctypes (line {node.lineno})"
            yield from (f"import {n} (line {node.lineno})" for n in names if n in KERNEL_WORDS)


def imports_of(rel: str, tree: ast.Module) -> Iterator[str]:
    """Every module a file imports, as a path under sockdoctor/ ('render/fmt')."""
    package = rel.split("/")[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                parts = [*base, *(node.module or "").split(".")] if node.module else base
            elif (node.module or "").startswith("sockdoctor"):
                parts = node.module.split(".")[1:]  # type: ignore[union-attr]
            else:
                continue
            for alias in node.names:
                yield "/".join([p for p in parts if p] + [alias.name])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("sockdoctor."):
                    yield alias.name.split(".", 1)[1].replace(".", "/")


def test_the_scan_sees_the_whole_house() -> None:
    found = dict(modules())
    assert "linux/procfs.py" in found and "cli/common.py" in found and len(found) > 100
    # and it would see a breach: the probe itself is checked here
    probe = ast.parse('import ctypes\nopen("/proc/1/comm")\nsocket.AF_NETLINK\n'
                      'from socket import SOCK_RAW\nfrom ..render import fmt\n')
    assert len(list(kernel_uses(probe))) == 4
    assert list(imports_of("doctor/x.py", probe)) == ["render/fmt"]


def test_only_linux_reaches_the_kernel() -> None:
    breaches = {rel: uses for rel, tree in modules()
                if not rel.startswith("linux/") and rel not in KERNEL_EXCEPTIONS
                and (uses := list(kernel_uses(tree)))}
    assert breaches == {}


@pytest.mark.parametrize("rel", sorted(KERNEL_EXCEPTIONS))
def test_each_kernel_exception_is_still_needed(rel: str) -> None:
    tree = ast.parse((SRC / rel).read_text())
    assert list(kernel_uses(tree)), f"{rel} no longer reaches the kernel: drop its exception"


def test_only_cli_and_render_import_render() -> None:
    breaches = {rel: hits for rel, tree in modules()
                if not rel.startswith(("cli/", "render/"))
                and (hits := [m for m in imports_of(rel, tree) if m.startswith("render")])}
    assert breaches == {}
