"""What keeps a socket object alive once the test that made it is over.

Asked only for sockets a test left open (rarely more than a few per run), so
it may walk the garbage collector's objects: upwards from the socket through
gc.get_referrers, one level at a time, until it meets

- the value of a fixture broader than a test (a session `http` client the
  test used): the socket is that fixture's, judged when its scope ends;
- a module's or a class's namespace, with an object of an installed package
  on the way (urllib3's module-level PoolManager behind `urllib3.request()`):
  a pool that outlives tests by design;
- a module's namespace with nothing but plain containers on the way (a
  client kept in a test's global list): a leak.
"""

from __future__ import annotations

import gc
import sys
from dataclasses import dataclass
from types import FrameType, ModuleType
from typing import Any

from .socktrack import Maker

MAX_LEVELS = 14  # a pool's socket sits ~8 references below its module global
MAX_FRONTIER = 200


@dataclass(frozen=True)
class Holder:
    """Who holds a socket: kind "fixture" (maker set), "pool" (what), or "" (nobody known)."""

    kind: str = ""
    maker: Maker | None = None
    what: str = ""


def held_by(sock: object, fixtures: dict[int, Maker], installed: tuple[str, ...]) -> Holder:
    """See the module's docstring; `fixtures`: id() of a live fixture value -> its maker;
    `installed`: the directories of installed packages (not the standard library)."""
    namespaces = _namespaces()
    frontier: list[Any] = [sock]
    seen = {id(sock)}
    ours = {id(frontier), id(seen)}
    pool: object | None = None  # the outermost object of an installed package on the way
    in_class = ""  # a class attribute that holds it, if no module global is found
    roots: list[Any] = []  # module namespaces met on the way
    home: Any = None  # the namespace that holds the pool itself
    for _level in range(MAX_LEVELS):
        refs = gc.get_referrers(*frontier)
        ours.add(id(refs))
        step: list[Any] = []
        ours.add(id(step))
        for ref in refs:
            if id(ref) in seen or id(ref) in ours or isinstance(ref, FrameType) or \
                    _runner(ref):
                continue
            seen.add(id(ref))
            if id(ref) in fixtures:
                return Holder("fixture", fixtures[id(ref)])
            if isinstance(ref, type | ModuleType):
                if pool is not None and _through_namespace(ref, frontier) and not in_class:
                    in_class = _describe(pool, ref, namespaces, seen)
                continue  # a class only as every instance's type: not a holder
            if id(ref) in namespaces:
                roots.append(ref)  # a module's global: nothing above it is more telling
                if pool is not None and any(value is pool for value in dict(ref).values()):
                    home = ref  # the pool's own global; a fixture on this level still wins
                continue
            if _installed(ref, installed):
                pool = ref
            step.append(ref)
        del refs
        if home is not None:
            return Holder("pool", None, _describe(pool, home, namespaces, seen))
        frontier = step[:MAX_FRONTIER]
        ours.add(id(frontier))
        if not frontier:
            break
    if pool is not None and roots:
        return Holder("pool", None, _describe(pool, roots[-1], namespaces, seen))
    return Holder("pool", None, in_class) if in_class else Holder()


RUNNER = ("_pytest.", "pytest.", "pluggy.", "xdist.", "execnet.", "sockdoctor.")


def _runner(obj: object) -> bool:
    """pytest's own objects (fixture caches, reports, nodes): they hold a finished test's
    values only until pytest lets go, and are never what keeps a socket by design."""
    return f"{type(obj).__module__}.".startswith(RUNNER)


def _through_namespace(cls: object, frontier: list[Any]) -> bool:
    """Does the class hold one of `frontier` in its own namespace (a class attribute)?"""
    ids = {id(obj) for obj in frontier if isinstance(obj, dict)}
    return any(id(inner) in ids for inner in gc.get_referents(cls) if isinstance(inner, dict))


def _namespaces() -> dict[int, str]:
    """id() of every module's namespace -> the module's name."""
    return {id(module.__dict__): name for name, module in list(sys.modules.items())
            if isinstance(module, ModuleType)}


def _installed(obj: object, installed: tuple[str, ...]) -> bool:
    """An instance of a class from an installed package (not a plain container)."""
    cls = type(obj)
    module = sys.modules.get(cls.__module__)
    filename = getattr(module, "__file__", None) or ""
    return bool(filename) and (filename.startswith(installed) or "site-packages" in filename)


def _describe(pool: object, root: object, namespaces: dict[int, str], seen: set[int]) -> str:
    cls = type(pool)
    what = f"{cls.__module__}.{cls.__qualname__}"
    if id(root) in namespaces:
        names = [key for key, value in dict(root).items() if id(value) in seen]  # type: ignore[call-overload]
        place = namespaces[id(root)] + (f".{names[0]}" if names else "")
    else:
        place = f"{getattr(root, '__module__', '?')}.{getattr(root, '__qualname__', '?')}"
    return f"a {what} kept in {place}"
