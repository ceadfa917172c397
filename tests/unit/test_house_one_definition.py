"""A public name of the house is defined in one module (AST, no import).

Two modules that each assign the same public constant or type alias (the
kernel's default port range, the sampler's 4-tuple key) drift apart the day
one of them changes. linux/ is left out: its modules mirror C headers one by
one (each names the kernel constants it uses, as the headers do); lab/ stands
in for the user's programs.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "sockdoctor"
OUTSIDE = ("linux/", "lab/")


def _public_assignments(tree: ast.Module) -> list[tuple[str, str]]:
    """(name, value as source) of each module-level public assignment."""
    out = []
    for node in tree.body:
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        else:
            continue
        for target in targets:
            if isinstance(target, ast.Name) and not target.id.startswith("_"):
                out.append((target.id, ast.dump(value)))
    return out


def test_a_public_name_with_one_value_is_defined_once() -> None:
    where: dict[tuple[str, str], list[str]] = defaultdict(list)
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        if rel.startswith(OUTSIDE):
            continue
        for name, value in _public_assignments(ast.parse(path.read_text())):
            where[(name, value)].append(rel)
    twice = {name: files for (name, _), files in where.items() if len(files) > 1}
    assert not twice, f"defined in more than one module (import it from one): {twice}"


def test_the_scan_above_it_sees_a_second_definition(tmp_path: Path) -> None:
    """The check itself finds a name assigned twice (it can fail)."""
    one = _public_assignments(ast.parse("RANGE = (1, 2)\n_private = 3\nKey = tuple[int]\n"))
    assert one == [("RANGE", ast.dump(ast.parse("(1, 2)", mode="eval").body)),
                   ("Key", ast.dump(ast.parse("tuple[int]", mode="eval").body))]
