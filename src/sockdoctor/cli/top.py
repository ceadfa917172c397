"""`sockdoctor top`: stuck sockets live, grouped by namespace x process x state x port."""

from __future__ import annotations

import sys
from typing import Any

import click

from .common import CONTEXT, DURATION, FILTER_HELP, build_query, filter_options, warn

EPILOG = FILTER_HELP + """
\b
Keys: c / g / a sort by count, growth (since start) or age of the oldest;
/ (or f) edits the filter (ss syntax; empty clears it); Enter shows the
sockets of the selected group; r prints the command that relieves the
selected group (the doctor's, or a `sockdoctor kill` plan) — it is never
run; q quits. +LAST is the change since the previous sample, +START since
the first (or since the filter last changed).

\b
Without a terminal (or with --once) one frame is printed and top exits.
The doctor runs every --doctor-every samples (it costs more than a sample
on a big host). See docs/watch.md.

\b
Examples:
  # refreshed every second (every namespace on the host; inside one, that one)
  sockdoctor top
  sockdoctor top --netns web state close-wait
  # one frame, for a script or a ticket
  sockdoctor top --once | less
"""


@click.command("top", context_settings=CONTEXT, epilog=EPILOG)
@filter_options
@click.option("--interval", default="1s", show_default=True, metavar="T", type=DURATION,
              help="Time between samples.")
@click.option("--sort", type=click.Choice(["count", "growth", "age"]), default="count",
              show_default=True, help="Initial sort.")
@click.option("--doctor-every", type=click.IntRange(1), default=10, show_default=True,
              metavar="N", help="Run the doctor on every N-th sample (findings pane).")
@click.option("--once", is_flag=True, help="Print one frame and exit (also without a terminal).")
@click.option("--width", type=click.IntRange(40), metavar="COLS",
              help="Width of the printed frame (default: the terminal's, or 160).")
def top_command(interval: str, sort: str, doctor_every: int, once: bool, width: int | None,
                **kw: Any) -> None:
    """Watch TCP sockets live: who holds how many in which state, growing how fast."""
    from ..query import parse_duration
    from ..watch import Sampler, tune_gc
    from ..watch.top import TopModel

    query = build_query(kw)
    refresh_s = max(0.1, parse_duration(interval) / 1000)
    model = TopModel(query, sort)
    sampler = Sampler(query=None, netns=query.netns, interval=refresh_s, doctor=True,
                      doctor_every=doctor_every)
    # steady refreshes grouped in the kernel while the filter selects every socket
    sampler.group_in_kernel(lambda: not model.query.narrows)
    tune_gc()  # a long-running view: cycles must not pile up (main() turned the GC off)
    try:
        first = sampler.sample()  # errors (unknown netns, permission) end here, in a sentence
        warn(first.warnings)
        model.update(first)
        if once or not (sys.stdout.isatty() and sys.stdin.isatty()):
            _one_frame(model, refresh_s, width)
            return
        from ..render.topapp import TopApp

        app = TopApp(model, sampler, refresh_s)
        app.run()
    finally:
        sampler.close()  # nothing left loaded in the kernel
    for command in app.printed:
        click.echo(command)


def _one_frame(model: Any, refresh_s: float, width: int | None) -> None:
    import shutil

    from ..render.topframe import print_frame

    cols = width or (shutil.get_terminal_size((160, 40)).columns if sys.stdout.isatty()
                     else 160)
    print_frame(model, refresh_s, sys.stdout, cols)
