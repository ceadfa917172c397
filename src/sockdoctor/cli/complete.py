"""Shell completion of values: states, namespaces, lab scenarios and labs.

click completes commands and options itself; these give the values
(`shell_complete=` on a parameter). Each is cheap and never needs root: a
namespace list is what `ip netns` names plus the keywords.
"""

from __future__ import annotations

import click
from click.shell_completion import CompletionItem

# What --state takes, as the help names them (every spelling is read: docs/json.md).
STATES = ("close-wait", "established", "syn-sent", "syn-recv", "fin-wait-1", "fin-wait-2",
          "time-wait", "closed", "last-ack", "listening", "closing", "all", "connected",
          "synchronized", "bucket", "big")
NETNS_KEYWORDS = ("all", "host", "self")


def _matching(values: list[str] | tuple[str, ...], incomplete: str) -> list[CompletionItem]:
    return [CompletionItem(v) for v in values if v.startswith(incomplete)]


def complete_state(_ctx: click.Context, _param: click.Parameter, incomplete: str
                   ) -> list[CompletionItem]:
    return _matching(STATES, incomplete.lower())


def complete_netns(_ctx: click.Context, _param: click.Parameter, incomplete: str
                   ) -> list[CompletionItem]:
    from ..linux.netns import named

    return _matching([*NETNS_KEYWORDS, *named()], incomplete)


def complete_scenario(_ctx: click.Context, _param: click.Parameter, incomplete: str
                      ) -> list[CompletionItem]:
    from ..lab import REGISTRY

    return [CompletionItem(name, help=sc.title) for name, sc in REGISTRY.items()
            if name.startswith(incomplete)]


def complete_lab(_ctx: click.Context, _param: click.Parameter, incomplete: str
                 ) -> list[CompletionItem]:
    from ..lab.netlab import PREFIX
    from ..linux.netns import named

    return _matching([n for n in named() if n.startswith(PREFIX)], incomplete)
