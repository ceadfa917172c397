"""`sockdoctor snapshot`: save complete evidence to a file."""

from __future__ import annotations

from typing import Any

import click

from .common import CONTEXT, FILTER_HELP, Once, build_query, filter_options, progress_shown, warn

EPILOG = FILTER_HELP + """
\b
FILE is written whole or not at all (a temporary file in the same directory,
then renamed), and only as a regular file or a new path: a symlink, FIFO,
device or directory there is refused (exit 7), as are a full disk or a
read-only file system, leaving the old file as it was. `-o -` writes to
stdout (plain JSON; pipe it through gzip yourself).

\b
Examples:
  sockdoctor snapshot -o "$(hostname)-$(date +%s).json.gz"
  sockdoctor snapshot -o web.json --netns web state close-wait
  sockdoctor snapshot -o - | gzip > snap.json.gz
  # diagnose it later, anywhere
  sockdoctor doctor --from snap.json.gz
  # list it like a live host
  sockdoctor ls --from snap.json.gz -p
"""


@click.command("snapshot", context_settings=CONTEXT, epilog=EPILOG)
@filter_options
@click.option("-o", "--output", "path", cls=Once, required=True, metavar="FILE",
              help="Where to write the snapshot (JSON; gzip if FILE ends in .gz; - for "
                   "stdout).")
def snapshot_command(path: str, **kw: Any) -> None:
    """Save complete evidence (sockets, owners, namespaces, sysctls, counters) to a file.

    Read it back anywhere with `sockdoctor ls --from FILE` or `sockdoctor doctor --from FILE`.
    """
    from ..inventory import ScanOptions, scan
    from ..render.fmt import plural, untrusted
    from ..safefile import check
    from ..snapshot_io import save

    query = build_query(kw)
    check(path, "the snapshot")  # a refused target fails before the scan, not after
    with progress_shown() as say:
        snap = scan(query, ScanOptions(info=True, mem=True), owners=True, evidence=True,
                    progress=say)
    warn(snap.warnings)
    save(snap, path)
    where = "stdout" if path == "-" else untrusted(path)
    click.echo(f"wrote {plural(len(snap.sockets), 'socket')}, "
               f"{plural(len(snap.processes), 'process', 'processes')}, "
               f"{plural(len(snap.namespaces), 'network namespace')} to {where}", err=True)
