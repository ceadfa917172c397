"""A parsed tree compiled to one closure that says whether `ss` would list a socket.

ss judges each socket twice: the kernel runs the filter compiled to inet_diag
bytecode, then ss walks the same tree in user space over what the kernel sent.
A socket is shown only when both say yes, and the two disagree in corners
(address families, ports truncated to 16 bits, `autobound`). So every condition
here answers with two bits, bit 0 for the kernel's verdict and bit 1 for ss's
own; `not` flips both, `and`/`or` combine them bitwise, and a socket matches
when both bits survive. A filter with `dev` has no bytecode (ss cannot compile
it), so only ss's own verdict counts there. Trees whose conditions cannot
disagree are compiled to plain booleans instead, which is faster.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from ..model import Netns, Socket
from .leaves import BOTH, Bool, PortRanges, Pred, leaf_bool, leaf_pair, negated_leaf
from .tree import Addr, And, Autobound, Dev, Node, Not, Or, PortCmp, walk


class Expr(Protocol):
    """Anything that can judge a socket; a Filter is one."""

    def match(self, sk: Socket) -> bool: ...

    def learn(self, namespaces: Iterable[Netns]) -> None: ...


class Filter:
    """A compiled expression; `match(sk)` says whether `ss` would list the socket."""

    def __init__(self, tree: Node, family: int = 0) -> None:
        self.tree = tree
        self.family = family
        # without bytecode (a `dev` anywhere) ss's own verdict is the only one
        self.kernel = not any(isinstance(n, Dev) for n in walk(tree))
        # `autobound` judges each socket by its own namespace's range (learn)
        self.port_ranges = ranges = PortRanges()
        exact: set[int] = set()
        self.exact = not self.kernel or _mark_exact(tree, exact)
        if self.exact:
            pred = _compile_bool(tree, ranges)
        else:
            paired = _compile_pair(tree, exact, ranges)
            pred = lambda sk: paired(sk) == BOTH  # noqa: E731
        if family:
            inner = pred
            pred = lambda sk: sk.family == family and inner(sk)  # noqa: E731
        self.match: Bool = pred  # type: ignore[assignment]

    def learn(self, namespaces: Iterable[Netns]) -> None:
        """Judge sockets of these namespaces by what their records say (port ranges)."""
        self.port_ranges.learn(namespaces)

    def __str__(self) -> str:
        return self.tree.render()

    def __repr__(self) -> str:
        return f"Filter({self.tree.render()!r})"


def _mark_exact(node: Node, exact: set[int]) -> bool:
    """Collect the ids of subtrees on which the kernel and ss cannot disagree."""
    if isinstance(node, Not):
        ok = _mark_exact(node.item, exact)
    elif isinstance(node, And | Or):
        ok = all([_mark_exact(i, exact) for i in node.items])
    else:
        ok = _exact(node)
    if ok:
        exact.add(id(node))
    return ok


def _exact(node: Node) -> bool:
    """Conditions on which the kernel and ss can never disagree."""
    if isinstance(node, Addr):
        return node.cond.any_address
    if isinstance(node, PortCmp):
        return 0 <= node.port <= 0xFFFF
    return not isinstance(node, Autobound)


def _compile_bool(node: Node, ranges: PortRanges) -> Bool:
    """ss's own verdict as a plain boolean (used when the kernel cannot differ)."""
    if isinstance(node, Not):
        negated = negated_leaf(node.item)
        if negated is not None:
            return negated
        inner = _compile_bool(node.item, ranges)
        return lambda sk: not inner(sk)
    if isinstance(node, And | Or):
        parts = [_compile_bool(i, ranges) for i in node.items]
        return _junction(parts, every=isinstance(node, And))
    return leaf_bool(node, ranges)


def _junction(parts: list[Bool], every: bool) -> Bool:
    """All of `parts` (every=True) or any of them, in order, stopping at the first that
    decides. Two and three parts (most filters) are unrolled into one lambda."""
    if len(parts) == 2:
        a, b = parts
        return (lambda sk: a(sk) and b(sk)) if every else (lambda sk: a(sk) or b(sk))
    if len(parts) == 3:
        a, b, c = parts
        return ((lambda sk: a(sk) and b(sk) and c(sk)) if every
                else (lambda sk: a(sk) or b(sk) or c(sk)))

    def loop(sk: Socket) -> bool:  # a loop: all() or any() over a generator is slower
        for p in parts:
            if (not p(sk)) is every:  # a false part ends `and`, a true one ends `or`
                return not every
        return every
    return loop


def _compile_pair(node: Node, exact: set[int], ranges: PortRanges) -> Pred:
    """Both verdicts at once: bit 0 the kernel's, bit 1 ss's own."""
    if id(node) in exact:
        same = _compile_bool(node, ranges)
        return lambda sk: BOTH if same(sk) else 0
    if isinstance(node, Not):
        inner = _compile_pair(node.item, exact, ranges)
        return lambda sk: inner(sk) ^ BOTH
    if isinstance(node, And):
        parts = [_compile_pair(i, exact, ranges) for i in node.items]
        if len(parts) == 2:
            a, b = parts
            return lambda sk: (r := a(sk)) and r & b(sk)

        def conj(sk: Socket) -> int:
            r = BOTH
            for p in parts:
                r &= p(sk)
                if not r:
                    break
            return r
        return conj
    if isinstance(node, Or):
        parts = [_compile_pair(i, exact, ranges) for i in node.items]
        if len(parts) == 2:
            a, b = parts
            return lambda sk: BOTH if (r := a(sk)) == BOTH else r | b(sk)

        def disj(sk: Socket) -> int:
            r = 0
            for p in parts:
                r |= p(sk)
                if r == BOTH:
                    break
            return r
        return disj
    return leaf_pair(node, ranges)
