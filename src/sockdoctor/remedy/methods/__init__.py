"""The kill methods, one class per module; adding a method means adding a class here.

BY_NAME maps a method name to its (stateless) instance; APPLY_ORDER is the
order apply_plan takes them in (the per-process ones first, so a socket a
program holds is handled while its holder is known).
"""

from __future__ import annotations

from .base import Choice, Method, Pacer, Runtime, Target
from .close import Close
from .destroy import Destroy
from .drain import Drain
from .fin import Fin
from .rst import Rst

__all__ = ["APPLY_ORDER", "BY_NAME", "Choice", "Close", "Method", "Pacer", "Runtime",
           "Target"]

BY_NAME: dict[str, Method] = {m.name: m for m in (Fin(), Drain(), Close(), Destroy(), Rst())}
APPLY_ORDER = ("fin", "drain", "close", "destroy", "rst")
