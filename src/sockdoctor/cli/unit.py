"""`sockdoctor unit`: print the hardened systemd unit of a daemon, for this installation."""

from __future__ import annotations

import click

from .common import CONTEXT, Once

EPILOG = """
\b
ExecStart runs the sockdoctor this command was run with (the console script's
real path, or this Python with -m sockdoctor), so install sockdoctor where the
service can read it first: under /opt, as docs/exporter.md ("Deploy") shows,
not in a home directory (the unit's ProtectHome=yes hides those).

\b
Examples:
  # the exporter's unit for this sockdoctor (then: systemctl daemon-reload &&
  # systemctl enable --now sockdoctor-exporter)
  sockdoctor unit exporter > /etc/systemd/system/sockdoctor-exporter.service
  # the reaper's unit (its policy goes in /etc/sockdoctor/reap.toml first)
  sockdoctor unit reap > /etc/systemd/system/sockdoctor-reap.service
  # a unit for the sockdoctor installed on another host at this path
  sockdoctor unit exporter --exec /opt/sockdoctor/bin/sockdoctor
"""


@click.command("unit", context_settings=CONTEXT, epilog=EPILOG)
@click.argument("daemon", type=click.Choice(["exporter", "reap"]))
@click.option("--exec", "program", cls=Once, metavar="PATH",
              help="The sockdoctor program the unit runs (an absolute path; default: this "
                   "one).")
def unit_command(daemon: str, program: str | None) -> None:
    """Print the hardened systemd unit of `sockdoctor exporter` or `sockdoctor reap`.

    The same unit as deploy/systemd/, with ExecStart pointing at this installation.
    """
    from ..errors import UsageError
    from ..render.fmt import untrusted
    from ..units import this_program, unit_text

    if program is not None and not program.startswith("/"):
        # (the error printer escapes what the user wrote: common.user_errors)
        raise UsageError(f"--exec {program}: give an absolute path (systemd does "
                         "not search PATH for it).")
    words = [program] if program is not None else this_program()
    if not all(word.isprintable() for word in words):  # a newline would add unit lines
        raise UsageError(f"{words[0]} has a control character, which a unit "
                         "file cannot hold: give another path with --exec.")
    if words[0].startswith(("/root/", "/home/")):
        click.echo(f"sockdoctor: warning: {untrusted(words[0])} is in a home directory, "
                   "which the unit's ProtectHome=yes hides from the service: install "
                   "sockdoctor under /opt (docs/exporter.md, \"Deploy\").", err=True)
    click.echo(unit_text(daemon, words), nl=False)
