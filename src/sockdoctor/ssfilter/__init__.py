"""ss-compatible filters: `state`/`exclude` words, then ss's filter expression.

The target is the `ss -Htan EXPR` of iproute2 6.1, oddities included, so that
anything a user learned with ss selects the same sockets here, with ss's two
verdicts (the kernel's bytecode and ss's own pass) on every socket.

Modules: states (state names and groups), tokens (filter files, tokens and
their positions), parser (the entry point and the state words), grammar (the
expression), cnumbers and operands (addresses, prefixes, ports, services,
devices, read like iproute2), tree (the node classes), evaluate and leaves
(compiling a tree to closures that give ss's verdicts).

Only states, tokens and parser load with this package; the rest, the
expression machinery, loads with the first filter that has an expression or
the first use of a name it defines, so `state` words and --state alone never
pay for it.

Where this deliberately differs from ss:
- `autobound`: the kernel's half asks whether the port was bound explicitly,
  which sock_diag does not report; every non-listener counts as not bound
  explicitly, so a client that bind()s a fixed port before connect() is
  judged differently. ss's half (port in ip_local_port_range) is exact, and
  judged by the socket's own namespace's range as its snapshot recorded it
  (leaves.PortRanges has the rule for files that lack it), so a `--from`
  file is judged by the host that saved it.
- `fwmark`, `cgroup` and `unix:`/`link:`/`netlink:`/`vsock:` operands are
  refused with a clear error (ss accepts them and then lists nothing useful).
- device names and host names resolve where this process runs; host names
  with characters no host name can have are not sent to DNS at all.
- nesting deeper than 200 levels is refused.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .parser import ParsedFilter, parse
from .states import SS_ALL, SS_CONN, scan_state, states_from_names
from .tokens import read_filter_file

if TYPE_CHECKING:
    from .evaluate import Expr, Filter
    from .leaves import BOTH, PortRanges
    from .operands import (
        HostCond,
        Prefix,
        parse_device,
        parse_hostcond,
        parse_prefix,
        resolve_host,
    )
    from .tree import Addr, And, Autobound, Dev, Node, Not, Or, PortCmp, walk

__all__ = [
    "BOTH", "SS_ALL", "SS_CONN", "Addr", "And", "Autobound", "Dev", "Expr", "Filter",
    "HostCond", "Node", "Not", "Or", "ParsedFilter", "PortCmp", "PortRanges", "Prefix",
    "parse", "parse_device", "parse_hostcond", "parse_prefix", "read_filter_file",
    "resolve_host", "scan_state", "states_from_names", "walk",
]

# Where each name of the expression machinery lives (the TYPE_CHECKING imports above).
_LAZY = {
    "evaluate": ("Expr", "Filter"),
    "leaves": ("BOTH", "PortRanges"),
    "operands": ("HostCond", "Prefix", "parse_device", "parse_hostcond", "parse_prefix",
                 "resolve_host"),
    "tree": ("Addr", "And", "Autobound", "Dev", "Node", "Not", "Or", "PortCmp", "walk"),
}
_HOME = {name: module for module, names in _LAZY.items() for name in names}


def __getattr__(name: str) -> Any:
    """A name of the expression machinery: load its module now (PEP 562)."""
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later lookups find it without this function
    return value
