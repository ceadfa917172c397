"""The house's measures of shape, checked on the source of src/sockdoctor.

No function longer than 50 lines; no function taking more than 7 parameters
(self and cls not counted), except click command functions, whose parameters
are the command's options. An options object reads better than a long list.
"""

from __future__ import annotations

import ast
import functools
import pathlib
import textwrap
from collections.abc import Iterator

import sockdoctor

MAX_LINES = 50
MAX_PARAMS = 7
PACKAGE = pathlib.Path(sockdoctor.__file__).parent

# Functions allowed to break a limit while they are being reshaped. Each entry
# must still break one (the test below says when it no longer does). Keep it
# empty; a new entry needs a reason beside it.
PENDING: frozenset[str] = frozenset()

Function = ast.FunctionDef | ast.AsyncFunctionDef


def functions(tree: ast.AST, prefix: str) -> Iterator[tuple[str, Function]]:
    """Every function and method, nested ones too, with its dotted name."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            name = f"{prefix}.{node.name}"
            yield name, node
            yield from functions(node, name)
        elif isinstance(node, ast.ClassDef):
            yield from functions(node, f"{prefix}.{node.name}")
        else:
            yield from functions(node, prefix)


def params(fn: Function) -> int:
    a = fn.args
    named = [p.arg for p in (*a.posonlyargs, *a.args, *a.kwonlyargs)]
    return len([n for n in named if n not in ("self", "cls")]) + bool(a.vararg) + bool(a.kwarg)


def is_command(fn: Function) -> bool:
    """Decorated with click's @X.command(...) or @X.group(...)."""
    for deco in fn.decorator_list:
        target = deco.func if isinstance(deco, ast.Call) else deco
        if isinstance(target, ast.Attribute) and target.attr in ("command", "group"):
            return True
    return False


def offences(source: str, module: str) -> dict[str, str]:
    """What breaks a limit in one module's source: {dotted name: why}."""
    found = {}
    for name, fn in functions(ast.parse(source), module):
        lines = (fn.end_lineno or fn.lineno) - fn.lineno + 1
        why = []
        if lines > MAX_LINES:
            why.append(f"{lines} lines")
        if params(fn) > MAX_PARAMS and not is_command(fn):
            why.append(f"{params(fn)} parameters")
        if why:
            found[name.removeprefix(".")] = ", ".join(why)
    return found


@functools.cache
def package_offences() -> dict[str, str]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found.update(offences(path.read_text(encoding="utf-8"), module))
    return found


def test_functions_are_short_and_take_few_parameters() -> None:
    found = package_offences()
    new = {name: why for name, why in found.items() if name not in PENDING}
    assert not new, "\n".join(f"{name}: {why}" for name, why in sorted(new.items()))


def test_pending_entries_still_break_a_limit() -> None:
    mended = PENDING - package_offences().keys()
    assert not mended, f"mended (remove them from PENDING): {sorted(mended)}"


def test_the_scan_sees_long_and_wide_functions_and_spares_commands() -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(50))
    source = textwrap.dedent('''
        import click

        class Thing:
            def wide(self, a, b, c, d, e, f, g, *, h): ...
            def fine(self, a, b, c, d, e, f, g): ...
            @classmethod
            def also_wide(cls, a, b, c, d, e, f, g, **more): ...

        @click.command("x")
        def cmd(a, b, c, d, e, f, g, h, i): ...

        def outer():
            def inner(a, b, c, d, e, f, g, h): ...
        ''') + "def long():\n" + body + "\n"
    assert offences(source, "m") == {
        "m.Thing.wide": "8 parameters",
        "m.Thing.also_wide": "8 parameters",
        "m.outer.inner": "8 parameters",
        "m.long": "51 lines",
    }
