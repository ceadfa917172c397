"""Runnable reproductions of the classic stuck-socket bugs, in private namespaces.

    from sockdoctor.lab import REGISTRY, run, clean
    run("forgot-close", duration=0)

Names are loaded lazily: the lab programs (sockdoctor.lab.programs) start
with `python -m` and must not pay for importing the scanner.
"""

from __future__ import annotations

from typing import Any

__all__ = ["REGISTRY", "RunInfo", "Scenario", "ScenarioError", "clean", "get", "run"]

_HOMES = {"REGISTRY": "scenarios", "RunInfo": "scenario", "Scenario": "scenario",
          "ScenarioError": "scenario", "clean": "runner", "get": "runner", "run": "runner"}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module
    return getattr(import_module(f".{_HOMES[name]}", __name__), name)
