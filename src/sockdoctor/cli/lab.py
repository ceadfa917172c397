"""`sockdoctor lab`: the classic stuck-socket bugs, reproduced in private namespaces."""

from __future__ import annotations

import click

from .common import CONTEXT, DURATION, Group, need_root
from .complete import complete_lab, complete_scenario

LAB_EXAMPLES = """
\b
Examples:
  # the scenarios
  sockdoctor lab list
  # reproduce one; Ctrl-C removes it
  sockdoctor lab run forgot-close
  # leave it running, look at it yourself
  sockdoctor lab run et-accept-return --keep
  # remove what finished runs left behind
  sockdoctor lab clean
"""


@click.group("lab", cls=Group, context_settings=CONTEXT, epilog=LAB_EXAMPLES)
def lab_command() -> None:
    """Reproduce the classic stuck-socket bugs for real, in private network namespaces.

    Each scenario builds two network namespaces joined by a veth pair
    (server 10.77.0.1, client 10.77.0.2) and runs its programs there; nothing
    touches the host's own connections. run and clean need root.
    """


@lab_command.command("list", context_settings=CONTEXT, epilog="""
\b
Examples:
  sockdoctor lab list
  sockdoctor lab list | grep "seed 004"
""")
def list_command() -> None:
    """The scenarios: name, the seed document it comes from, what it reproduces."""
    from ..lab import REGISTRY

    width = max(len(name) for name in REGISTRY)
    for name, scenario in REGISTRY.items():
        click.echo(f"{name:<{width}}  seed {scenario.seed:<8}  {scenario.title}")


@lab_command.command("run", context_settings=CONTEXT, epilog="""
\b
Examples:
  # until Ctrl-C (or SIGTERM)
  sockdoctor lab run forgot-close
  # for a minute
  sockdoctor lab run forgot-close --duration 1m
  # leave it running; remove it later with sockdoctor lab clean
  sockdoctor lab run pool-idle-closed-by-server --keep
""")
@click.argument("scenario", shell_complete=complete_scenario)
@click.option("--keep", is_flag=True,
              help="Leave it running and return (remove it later with `sockdoctor lab clean`).")
@click.option("--duration", type=DURATION, metavar="T",
              help="Remove everything after T (90s, 2m; a bare number: seconds) instead of "
                   "waiting for Ctrl-C.")
def run_command(scenario: str, keep: bool, duration: str | None) -> None:
    """Reproduce SCENARIO, say what it did and how to look at it, then clean up.

    Waits for Ctrl-C (or --duration) and removes the namespaces and programs.
    """
    from ..errors import UsageError
    from ..lab import get, run
    from ..query import parse_duration

    get(scenario)  # an unknown name fails here, with the list of known ones
    if keep and duration is not None:
        raise UsageError("--keep and --duration exclude each other")
    need_root("lab run")
    seconds = None if duration is None else parse_duration(duration, "--duration") / 1000
    run(scenario, keep=keep, duration=seconds, out=click.echo)


@lab_command.command("clean", context_settings=CONTEXT, epilog="""
\b
Examples:
  # labs whose run is over (a --keep, a killed run)
  sockdoctor lab clean
  # that one, even if its run goes on
  sockdoctor lab clean sdlab-forgot-close-4242-ab12
  # every lab, live or not
  sockdoctor lab clean --force
""")
@click.argument("names", nargs=-1, metavar="[LAB]...", shell_complete=complete_lab)
@click.option("--force", is_flag=True, help="Also remove labs whose run is still going.")
def clean_command(names: tuple[str, ...], force: bool) -> None:
    """Remove lab namespaces (sdlab-*) whose run is over, and the programs still in them.

    A lab whose creating process still runs (`lab run` in another terminal, a
    test suite) is listed and left alone, unless named (its name with or
    without -srv/-cli) or --force is given.
    """
    from ..lab import clean

    need_root("lab clean")
    clean(names, force, out=click.echo)
