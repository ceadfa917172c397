"""`sockdoctor keepalive`: arm TCP keepalive on a live program's sockets (plan, --yes)."""

from __future__ import annotations

import sys
from typing import Any

import click

from ..stdout import reader_may_leave
from .common import CONTEXT, DURATION, FILTER_HELP, build_query, filter_options, warn

KEEPALIVE_HELP = FILTER_HELP + """
\b
Sets SO_KEEPALIVE, TCP_KEEPIDLE, TCP_KEEPINTVL and TCP_KEEPCNT (and with
--user-timeout TCP_USER_TIMEOUT) on the selected sockets through a duplicate
of their owner's descriptor (pidfd_getfd): the program's own sockets change,
live, without a restart. A peer that vanished without FIN or RST stops
answering the probes and the kernel resets the connection; the program's
next read or write fails with ETIMEDOUT. Live peers notice nothing. With no
state given, ESTABLISHED sockets are chosen. Without --yes nothing changes.
The options are read back afterwards; every change is in the audit log.
Exit code: 0 every chosen socket is (or would be) armed, 1 some were left
alone, 2 bad arguments, 4 not permitted, 5 unsupported by this kernel.

\b
Examples:
  # the plan (nothing changes)
  sockdoctor keepalive --pid 4242 --port 5000
  sockdoctor keepalive --pid 4242 --idle 60s --interval 10s --count 5 --yes
  sockdoctor keepalive --netns web --port 6379 --idle 2m --user-timeout 30s --yes
"""


def _seconds(_ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    from ..errors import UsageError
    from ..query import parse_duration

    if value is None:
        return None
    try:
        ms = parse_duration(value)
    except UsageError as exc:
        raise click.BadParameter(str(exc)) from None
    if param.name == "user_timeout":
        return ms
    if ms % 1000:
        raise click.BadParameter(f"'{value}': TCP keepalive counts in whole seconds")
    return ms // 1000


@click.command("keepalive", context_settings=CONTEXT, epilog=KEEPALIVE_HELP)
@filter_options
@click.option("--idle", default="60s", show_default=True, callback=_seconds, type=DURATION,
              metavar="AGE",
              help="Silence before the first probe (TCP_KEEPIDLE).")
@click.option("--interval", default="10s", show_default=True, callback=_seconds,
              type=DURATION,
              metavar="AGE", help="Between probes (TCP_KEEPINTVL).")
@click.option("--count", default=5, show_default=True, type=int,
              help="Unanswered probes before the connection is reset (TCP_KEEPCNT).")
@click.option("--user-timeout", callback=_seconds, type=DURATION, metavar="AGE",
              help="Also TCP_USER_TIMEOUT: how long sent data may stay unacknowledged.")
@click.option("-y", "--yes", is_flag=True, help="Apply the plan without asking.")
@click.option("--force", is_flag=True, help="Also your own SSH session and sockdoctor's sockets.")
@click.option("--max", "max_count", type=click.IntRange(1), default=1000, show_default=True,
              help="Refuse to change more sockets than this.")
@click.option("--audit-log", metavar="FILE", default=None,
              help="Append a JSON line per socket here "
                   "[default: /var/log/sockdoctor/audit.jsonl].")
@click.option("--json", "as_json", is_flag=True, help="Print the plan/report as JSON.")
def keepalive_command(idle: int, interval: int, count: int, user_timeout: int | None, yes: bool,
                      force: bool, max_count: int, audit_log: str | None, as_json: bool,
                      **kw: Any) -> None:
    """Arm TCP keepalive on live sockets, so vanished peers end by themselves."""
    from ..remedy import DEFAULT_PATH, host_facts, stop_on_signals
    from ..remedy.audit import AuditLog
    from ..remedy.keepalive import (
        Keepalive,
        KeepaliveReport,
        apply_keepalive,
        plan_keepalive,
        scan_for_keepalive,
    )

    settings = Keepalive(idle_s=idle, interval_s=interval, count=count,
                         user_timeout_ms=user_timeout)
    query = build_query(kw)  # no state named: keepalive_policy's ESTABLISHED default
    snapshot = scan_for_keepalive(query)
    warn(snapshot.warnings)
    plan = plan_keepalive(snapshot, settings, where=query, force=force, max_count=max_count,
                          host=host_facts())
    if not yes:
        _show(KeepaliveReport(plan=plan, applied=False), as_json)
        sys.exit(plan.exit_code)
    log = AuditLog((audit_log or DEFAULT_PATH) if plan.actions else None)
    with stop_on_signals() as stop:
        report = apply_keepalive(plan, audit_log=log, stop=stop)
    _show(report, as_json)
    sys.exit(report.exit_code)


def _show(report: Any, as_json: bool) -> None:
    from ..remedy.text import render_keepalive_plan, render_outcomes

    with reader_may_leave():
        if as_json:
            from ..jsontext import encode  # names that are not UTF-8, exact

            sys.stdout.buffer.write(encode(report) + b"\n")
        else:
            lines = list(render_keepalive_plan(report.plan, applying=report.applied))
            if report.applied:
                lines += ["", *render_outcomes(report.outcomes, frozenset({"armed"}), "armed")]
            elif report.plan.actions:
                lines += ["", "Nothing was changed. Run again with --yes to apply this plan."]
            click.echo("\n".join(lines))
