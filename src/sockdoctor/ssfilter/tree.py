"""The parsed expression: one class per condition and connective, rendering, walking.

`render()` writes the canonical ss text of a node (escaped, fully spaced,
groups in parentheses); parsing that text again gives the same tree.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from .operands import HostCond
from .tokens import SRC


@dataclass(frozen=True)
class Addr:
    """`src X`, `dst X`, `sport = X`, `dport = X` (ss's SCOND/DCOND)."""

    side: str  # "src" or "dst"
    cond: HostCond
    text: str  # the operand as written
    is_port: bool = False

    def render(self) -> str:
        if self.is_port:
            return f"{'sport' if self.side == SRC else 'dport'} = {_escape(self.text)}"
        return f"{self.side} {_escape(self.text)}"


@dataclass(frozen=True)
class PortCmp:
    """`sport >= N` style comparisons; `>` and `<` are ss's NOT of `<=` and `>=`."""

    side: str
    op: str  # GEQ or LEQ
    port: int
    text: str

    def render(self) -> str:
        return f"{'sport' if self.side == SRC else 'dport'} {self.op} {_escape(self.text)}"


@dataclass(frozen=True)
class Dev:
    """`dev X`, `dev = X`: the socket's interface index is X's."""

    ifindex: int
    text: str

    def render(self) -> str:
        return f"dev = {_escape(self.text)}"


@dataclass(frozen=True)
class Autobound:
    """`autobound`: a local port the kernel picked (leaves.py: how each verdict judges it)."""

    def render(self) -> str:
        return "autobound"


@dataclass(frozen=True)
class Not:
    """`not X` (also how `!=`, `>` and `<` are stored)."""

    item: Node

    def render(self) -> str:
        return f"! {_group(self.item)}"


@dataclass(frozen=True)
class And:
    """`X and Y ...`: a run of one connective; a change of connective groups to the left."""

    items: tuple[Node, ...]

    def render(self) -> str:
        return " & ".join(_group(i) for i in self.items)


@dataclass(frozen=True)
class Or:
    """`X or Y ...`: a run of one connective; a change of connective groups to the left."""

    items: tuple[Node, ...]

    def render(self) -> str:
        return " | ".join(_group(i) for i in self.items)


Node = Addr | PortCmp | Dev | Autobound | Not | And | Or


def _group(node: Node) -> str:
    text = node.render()
    return f"( {text} )" if isinstance(node, And | Or) else text


def _escape(text: str) -> str:
    return re.sub(r"([\\ \t])", r"\\\1", text)


def walk(node: Node) -> Iterator[Node]:
    """The node and all nodes below it, depth first."""
    yield node
    if isinstance(node, Not):
        yield from walk(node.item)
    elif isinstance(node, And | Or):
        for item in node.items:
            yield from walk(item)
