"""`sockdoctor lab`: the classic stuck-socket bugs, reproduced in private namespaces."""

from __future__ import annotations

import click

from .common import CONTEXT, need_root


@click.group("lab", context_settings=CONTEXT)
def lab_command() -> None:
    """Reproduce the classic stuck-socket bugs for real, in private network namespaces.

    \b
      sockdoctor lab list                   the scenarios
      sockdoctor lab run forgot-close       reproduce one; Ctrl-C removes it
      sockdoctor lab clean                  remove what a killed run left behind

    Each scenario builds two network namespaces joined by a veth pair
    (server 10.77.0.1, client 10.77.0.2) and runs its programs there; nothing
    touches the host's own connections. run and clean need root.
    """


@lab_command.command("list", context_settings=CONTEXT)
def list_command() -> None:
    """The scenarios: name, the seed document it comes from, what it reproduces."""
    from ..lab import REGISTRY

    width = max(len(name) for name in REGISTRY)
    for name, scenario in REGISTRY.items():
        click.echo(f"{name:<{width}}  seed {scenario.seed:<8}  {scenario.title}")


@lab_command.command("run", context_settings=CONTEXT)
@click.argument("scenario")
@click.option("--keep", is_flag=True,
              help="Leave it running and return (remove it later with `sockdoctor lab clean`).")
@click.option("--duration", type=click.FloatRange(min=0), metavar="SECONDS",
              help="Remove everything after SECONDS instead of waiting for Ctrl-C.")
def run_command(scenario: str, keep: bool, duration: float | None) -> None:
    """Reproduce SCENARIO, say what it did and how to look at it, then clean up.

    Waits for Ctrl-C (or --duration) and removes the namespaces and programs.
    """
    from ..errors import UsageError
    from ..lab import get, run

    get(scenario)  # an unknown name fails here, with the list of known ones
    if keep and duration is not None:
        raise UsageError("--keep and --duration exclude each other")
    need_root("lab run")
    run(scenario, keep=keep, duration=duration, out=click.echo)


@lab_command.command("clean", context_settings=CONTEXT)
def clean_command() -> None:
    """Remove every lab namespace (sdlab-*) and the programs still running in them."""
    from ..lab import clean

    need_root("lab clean")
    clean(out=click.echo)
