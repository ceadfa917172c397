"""`sockdoctor demo`: a real leak, listed, diagnosed, cured and checked."""

from __future__ import annotations

import sys

import click

from .common import CONTEXT, Once, need_root


@click.command("demo", context_settings=CONTEXT, epilog="""
\b
Examples:
  # the forgot-close leak (seed 003)
  sockdoctor demo
  # a never-drained accept queue
  sockdoctor demo --scenario et-accept-return
  # a client pool holding connections its server closed
  sockdoctor demo --scenario pool-idle-closed-by-server
""")
@click.option("--scenario", cls=Once, default="forgot-close", show_default=True,
              metavar="NAME", help="Which lab scenario to run (see `sockdoctor lab list`).")
def demo_command(scenario: str) -> None:
    """Run one classic bug end to end in private network namespaces (needs root).

    Reproduces the leak, then runs `ls --summary`, `doctor`, the `kill` plan,
    the kill itself and a health check, exactly as you would type them, and
    removes everything. Takes about ten seconds.
    """
    from ..lab import demo, runner

    runner.get(scenario)  # an unknown name fails before anything is built
    need_root("demo")
    ok = demo.run(scenario, out=lambda line: click.echo(line))
    sys.exit(0 if ok else 1)
