"""`sockdoctor snapshot`: save complete evidence to a file."""

from __future__ import annotations

from typing import Any

import click

from .common import (
    CONTEXT,
    FILTER_HELP,
    build_query,
    clear_progress,
    filter_options,
    progress,
    warn,
)


@click.command("snapshot", context_settings=CONTEXT, epilog=FILTER_HELP)
@filter_options
@click.option("-o", "--output", "path", required=True, metavar="FILE",
              help="Where to write the snapshot (JSON; gzip if FILE ends in .gz).")
def snapshot_command(path: str, **kw: Any) -> None:
    """Save complete evidence (sockets, owners, namespaces, sysctls, counters) to a file.

    Read it back anywhere with `sockdoctor ls --from FILE` or `sockdoctor doctor --from FILE`.
    """
    from ..inventory import scan
    from ..snapshot_io import save

    query = build_query(kw)
    snap = scan(query, owners=True, info=True, mem=True, evidence=True,
                progress=progress(True))
    clear_progress(True)
    warn(snap.warnings)
    save(snap, path)
    click.echo(f"wrote {len(snap.sockets)} sockets, {len(snap.processes)} processes, "
               f"{len(snap.namespaces)} namespaces to {path}", err=True)
