"""`sockdoctor ls`: the ss-like listing."""

from __future__ import annotations

import sys
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
    write_lines,
)


@click.command("ls", context_settings=CONTEXT, epilog=FILTER_HELP)
@filter_options
@click.option("-p", "--processes", is_flag=True,
              help="Show the process and fd holding each socket.")
@click.option("-i", "--info", is_flag=True, help="Show tcp_info (rtt, cwnd, bytes, ...).")
@click.option("-m", "--memory", is_flag=True, help="Show socket memory (skmem).")
@click.option("-e", "--extended", is_flag=True, help="Show uid, inode, cookie, shutdown.")
@click.option("-o", "--options", "timers", is_flag=True, help="Show timers.")
@click.option("-4", "ipv4", is_flag=True, help="IPv4 only.")
@click.option("-6", "ipv6", is_flag=True, help="IPv6 only.")
@click.option("-t", "-a", "-n", "compat", is_flag=True, hidden=True,
              help="Accepted for ss compatibility (always TCP, all states, numeric).")
@click.option("-H", "--no-header", is_flag=True, help="Do not print the header line.")
@click.option("--json", "output", flag_value="json", help="One JSON document (docs/json.md).")
@click.option("--ndjson", "output", flag_value="ndjson", help="One JSON object per socket.")
@click.option("--summary", "output", flag_value="summary",
              help="Counts by state x process x service.")
@click.option("--from", "from_file", metavar="FILE",
              help="Read a snapshot written by `sockdoctor snapshot` instead of the host.")
def ls_command(processes: bool, info: bool, memory: bool, extended: bool, timers: bool,
               ipv4: bool, ipv6: bool, compat: bool, no_header: bool, output: str | None,
               from_file: str | None, **kw: Any) -> None:
    """List TCP sockets in every network namespace, like `ss -tan`, with owners and age."""
    import socket as _socket

    family = _socket.AF_INET if ipv4 and not ipv6 else _socket.AF_INET6 if ipv6 and not ipv4 else 0
    query = build_query(kw, family)
    want_owners = processes or output == "summary"
    if from_file:
        from ..snapshot_io import load

        snapshot = query.apply(load(from_file))
    else:
        from ..inventory import scan

        show = output is None or output == "summary"
        # The summary has no age column; every other output shows age (docs/age.md).
        snapshot = scan(query, owners=want_owners, info=info, mem=memory,
                        age=output != "summary", extended=extended, progress=progress(show),
                        lazy_info=output in ("json", "ndjson"))
        clear_progress(show)
    warn(snapshot.warnings)
    out = sys.stdout
    if output == "json":
        from ..render.jsonout import write_json

        write_json(snapshot, out.buffer)
    elif output == "ndjson":
        from ..render.jsonout import write_ndjson

        write_ndjson(snapshot, out.buffer)
    elif output == "summary":
        from ..render.summary import render

        write_lines(out, render(snapshot))
    else:
        from ..render.table import Columns
        from ..render.table import render as render_table

        cols = Columns(processes=processes and snapshot.owners_scanned, info=info, mem=memory,
                       extended=extended, timers=timers, header=not no_header,
                       netns=len(snapshot.namespaces) > 1,
                       age=any(sk.age_ms is not None for sk in snapshot.sockets))
        write_lines(out, render_table(snapshot, cols))
