"""`sockdoctor ls`: the ss-like listing."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import click

from .common import (
    CONTEXT,
    FILTER_HELP,
    Once,
    build_query,
    clear_progress,
    exclusive,
    filter_options,
    progress,
    warn,
    write_lines,
)

EPILOG = FILTER_HELP + """
\b
ss's habits work: -t alone lists connected sockets as ss -t does (no
listeners, TIME-WAIT or SYN-RECV; -a or a named state such as --state all
adds them; without -t every state is listed), -n is accepted (always
numeric), -l lists listeners, -s prints ss's summary, -N NS is --netns, and
short flags combine (-tlnp, -tanpo).
-u/-x/-w next to -t are ignored with a note: sockdoctor shows TCP only.

\b
Examples:
  # like ss -tanp (every namespace on the host; inside one, that namespace)
  sockdoctor ls -tanp state close-wait
  # listeners and their owners
  sockdoctor ls -tlnp
  # counts by state x process x service
  sockdoctor ls --summary
  sockdoctor ls -p --process 'python*' --older-than 10m
  # tcp_info of connections to postgres, in namespace web
  sockdoctor ls -N web -i dport = :postgresql
  sockdoctor ls -p --json | jq '.sockets[] | select(.state == "CLOSE-WAIT")'
  # a snapshot from another machine
  sockdoctor ls --from snap.json.gz --summary
"""


LEAVE_TO_THE_OS = 10_000  # sockets: below this, freeing them costs next to nothing


@click.command("ls", context_settings=CONTEXT, epilog=EPILOG)
@filter_options
@click.option("-l", "--listening", is_flag=True, help="Only listening sockets (as ss -l).")
@click.option("-p", "--processes", is_flag=True,
              help="Show the process and fd holding each socket.")
@click.option("-i", "--info", is_flag=True, help="Show tcp_info (rtt, cwnd, bytes, ...).")
@click.option("-m", "--memory", is_flag=True, help="Show socket memory (skmem).")
@click.option("-e", "--extended", is_flag=True, help="Show uid, inode, cookie, shutdown.")
@click.option("-o", "--options", "timers", is_flag=True, help="Show timers.")
@click.option("-4", "ipv4", is_flag=True, help="IPv4 only.")
@click.option("-6", "ipv6", is_flag=True, help="IPv6 only.")
@click.option("-r", "--resolve", is_flag=True, hidden=True)
@click.option("-H", "--no-header", is_flag=True, help="Do not print the header line.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document (docs/json.md).")
@click.option("--ndjson", is_flag=True, help="One JSON object per socket.")
@click.option("--summary", is_flag=True, help="Counts by state x process x service.")
@click.option("-s", "ss_summary", is_flag=True,
              help="ss's summary (TCP rows only), then totals by state and family.")
@click.option("--from", "from_file", cls=Once, metavar="FILE",
              help="Read a snapshot written by `sockdoctor snapshot` instead of the host "
                   "(- reads stdin).")
def ls_command(listening: bool, processes: bool, info: bool, memory: bool, extended: bool,
               timers: bool, ipv4: bool, ipv6: bool, resolve: bool, no_header: bool,
               as_json: bool, ndjson: bool, summary: bool, ss_summary: bool,
               from_file: str | None, **kw: Any) -> None:
    """List TCP sockets in every network namespace, like `ss -tan`, with owners and age."""
    import socket as _socket

    exclusive(json=as_json, ndjson=ndjson, summary=summary, s=ss_summary)
    output = ("json" if as_json else "ndjson" if ndjson else "summary" if summary
              else "ss-summary" if ss_summary else None)
    if resolve:
        warn(["-r (resolve names) is not supported: addresses and ports stay numeric"])
    family = _socket.AF_INET if ipv4 and not ipv6 else _socket.AF_INET6 if ipv6 and not ipv4 else 0
    tcp_alone = kw["ss_tcp"] and not kw["ss_all"] and not listening
    query = build_query(kw, family, ("listening",) if listening else (), live=not from_file)
    if tcp_alone:
        query = ss_default_states(query)
    snapshot = _snapshot(query, from_file, output, processes, info, memory, extended)
    warn(snapshot.warnings)
    _write(snapshot, output, _Shown(processes, info, memory, extended, timers, not no_header))
    if len(snapshot.sockets) >= LEAVE_TO_THE_OS:
        from ..linux.native import never_free

        never_free(snapshot)  # the process is about to exit


def ss_default_states(query: Any) -> Any:
    """`-t` without -a or -l, as in ss: connected sockets only (no LISTEN, TIME-WAIT,
    SYN-RECV), unless a state was named (Query.names_states: `--state all` and
    `state all` too, as `ss -t state all` lists every state)."""
    import dataclasses

    from ..ssfilter import SS_CONN

    if query.names_states:
        return query
    return dataclasses.replace(query, states=SS_CONN)


def _snapshot(query: Any, from_file: str | None, output: str | None, processes: bool,
              info: bool, memory: bool, extended: bool) -> Any:
    if from_file:
        from ..snapshot_io import load

        source = "stdin" if from_file == "-" else from_file
        return query.apply(load(from_file), source)
    from ..inventory import ScanOptions, scan

    show = output in (None, "summary", "ss-summary")
    # The summaries have no age column; every other output shows age (docs/age.md).
    options = ScanOptions(info=info, mem=memory, age=not output or "summary" not in output,
                          extended=extended, lazy_info=output in ("json", "ndjson"),
                          counters=output == "ss-summary")
    snapshot = scan(query, options, owners=processes or output == "summary",
                    progress=progress(show))
    clear_progress(show)
    return snapshot


@dataclass(frozen=True)
class _Shown:
    """What the table shows besides the ss columns: -p, -i, -m, -e, -o, and the header."""

    processes: bool
    info: bool
    memory: bool
    extended: bool
    timers: bool
    header: bool


def _write(snapshot: Any, output: str | None, shown: _Shown) -> None:
    out = sys.stdout
    if output == "json":
        from ..render.jsonout import write_json

        write_json(snapshot, out.buffer)
    elif output == "ndjson":
        from ..render.jsonout import write_ndjson

        write_ndjson(snapshot, out.buffer)
    elif output in ("summary", "ss-summary"):
        from ..render import summary

        write_lines(out, summary.render(snapshot) if output == "summary"
                    else summary.render_ss(snapshot))
    else:
        from ..render.table import Columns
        from ..render.table import text as table_text

        cols = Columns(processes=shown.processes and snapshot.owners_scanned, info=shown.info,
                       mem=shown.memory, extended=shown.extended, timers=shown.timers,
                       header=shown.header,
                       netns=len(snapshot.namespaces) > 1,
                       age=any(sk.age_ms is not None for sk in snapshot.sockets))
        out.write(table_text(snapshot, cols))
