"""The doctor's rules, one module per family, in the order the engine runs them.

Listener rules run before the CLOSE-WAIT rules (which soften on a backlogged
port) and sysctl-audit runs last (it reads the other findings).
"""

from __future__ import annotations

from collections.abc import Callable

from ..context import Context
from ..finding import Finding
from . import closewait, closing, deadfds, fds, keepalive, listen, sysctl, timewait

Rule = Callable[[Context], list[Finding]]

PIPELINE: tuple[Rule, ...] = (
    listen.check,
    closewait.check,
    keepalive.check,
    closing.check,
    timewait.check,
    fds.check,
    deadfds.check,
    sysctl.check,
)
