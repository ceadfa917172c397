"""Command line: parse arguments, call the library, render, exit code.

Kept thin and cheap to import: each command lives in its own module here and
imports the heavy parts of the library only when it runs, so
`sockdoctor --help` starts instantly. A command module only defines a click
command; it is registered below.
"""

from __future__ import annotations

import gc
import sys

import click

from .common import CONTEXT, user_errors
from .demo import demo_command
from .doctor import doctor_command
from .exporter import exporter_command
from .kill import kill_command
from .lab import lab_command
from .ls import ls_command
from .snapshot import snapshot_command
from .top import top_command
from .trace import trace_command


@click.group(context_settings=CONTEXT)
@click.version_option(package_name="sockdoctor")
def cli() -> None:
    """Find, explain and remove stuck TCP connections (CLOSE_WAIT leaks and friends).

    \b
    Start here:
      sockdoctor ls --summary          who holds which sockets, on one screen
      sockdoctor doctor                what is wrong, why, and how to fix it
      sockdoctor kill state close-wait --port 8080      plan; add --yes to act
      sockdoctor demo                  see it all on a reproduced leak
      sockdoctor exporter              the same, watched, for Prometheus (:19808/metrics)

    Every command that selects sockets takes an ss filter expression and the
    flags --state, --port, --pid, --process, --older-than and --netns.
    Run as root to see every process and network namespace.
    """


cli.add_command(ls_command)
cli.add_command(doctor_command)
cli.add_command(kill_command)
cli.add_command(lab_command)
cli.add_command(snapshot_command)
cli.add_command(demo_command)
cli.add_command(exporter_command)
cli.add_command(trace_command)
cli.add_command(top_command)


@user_errors
def _run() -> None:
    rc = cli.main(standalone_mode=False)
    if isinstance(rc, int) and rc:
        sys.exit(rc)


def main() -> None:
    # A command is a short-lived process that builds hundreds of thousands of
    # small objects and no garbage cycles worth collecting: the cyclic garbage
    # collector only re-scans them over and over (a third of --json's time).
    gc.disable()
    sys.exit(_run())
