"""`sockdoctor kill`: plan, confirm, act, verify, log."""

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

KILL_HELP = FILTER_HELP + """
\b
Without --yes nothing is changed: the plan is printed (and on a terminal you
are asked whether to apply it). Methods, safest first:
  fin      shutdown() through a duplicate of the owner's fd (pidfd_getfd):
           our FIN goes out, the program's fd stays valid
  drain    take never-accepted connections out of a listener's accept queue
  destroy  kernel SOCK_DESTROY: the peer gets RST (needs CAP_NET_ADMIN)
  close    inject shutdown()+close() into the owner with ptrace (frees the fd)
  rst      forged RST after learning the sequence numbers (needs CAP_NET_RAW)
auto picks per socket. With no state given, only CLOSE-WAIT sockets are chosen.
Exit code: 0 every chosen socket is gone, 1 some survived or were left alone,
2 bad arguments, 4 not permitted, 5 unsupported by this kernel.
""" + """
\b
Examples:
  sockdoctor kill --port 8080                  the plan for CLOSE-WAIT on :8080
  sockdoctor kill --pid 4242 --older-than 10m --yes
  sockdoctor kill -N web --process 'php-fpm*' --state close-wait --older-than 30s
  sockdoctor kill --pid 4242 --dead-fds        descriptors of sockets already dead
  sockdoctor kill state fin-wait-2 dst 10.0.0.9 --method destroy --yes
"""


def _rate(text: str | None) -> float:
    if not text:
        return 0.0
    value = text.removesuffix("/s")
    try:
        rate = float(value)
    except ValueError:
        raise click.BadParameter(f"'{text}' is not a rate; write it like 50/s") from None
    if rate <= 0:
        raise click.BadParameter("the rate must be above zero")
    return rate


@click.command("kill", context_settings=CONTEXT, epilog=KILL_HELP)
@filter_options
@click.option("--method", type=click.Choice(["auto", "fin", "drain", "destroy", "close", "rst"]),
              default="auto", show_default=True, help="How to end the sockets.")
@click.option("-y", "--yes", is_flag=True, help="Apply the plan without asking.")
@click.option("--force", is_flag=True,
              help="Also act on listeners, your own SSH session and sockdoctor's sockets.")
@click.option("--max", "max_count", type=click.IntRange(1), default=1000, show_default=True,
              help="Refuse to act on more sockets than this.")
@click.option("--rate", metavar="N/s", help="At most N actions per second.")
@click.option("--dead-fds", is_flag=True,
              help="Also close descriptors whose TCP socket is in no table any more "
                   "(shutdown() without close()); combine with --pid.")
@click.option("--audit-log", metavar="FILE", default=None,
              help="Append one JSON line per action here "
                   "[default: /var/log/sockdoctor/audit.jsonl].")
@click.option("--json", "as_json", is_flag=True, help="Print the plan/report as JSON.")
def kill_command(method: str, yes: bool, force: bool, max_count: int, rate: str | None,
                 dead_fds: bool, audit_log: str | None, as_json: bool, **kw: Any) -> None:
    """End stuck connections without restarting their owner: planned, verified, logged."""
    from ..inventory import scan
    from ..remedy import DEFAULT_PATH, kill

    explicit = bool(kw["states"]) or any(w in ("state", "exclude") for w in kw["filter_words"])
    if not explicit:
        kw["states"] = ("close-wait",)
    pids = set(kw["pids"])
    query = build_query(kw)
    snapshot = scan(query, owners=True, evidence=dead_fds, progress=progress(not as_json))
    clear_progress(not as_json)
    warn(snapshot.warnings)
    if dead_fds and not explicit:
        snapshot.sockets = []  # --dead-fds alone: only the dead descriptors
    options = {"method": method, "force": force, "max_count": max_count,
               "rate": _rate(rate), "audit_log": audit_log or DEFAULT_PATH,
               "dead_fds": dead_fds, "pids": pids}
    prompted = False
    if yes:  # planned and applied in one go: the plan is printed with the results
        report = kill(snapshot, dry_run=False, **options)
    else:
        report = kill(snapshot, dry_run=True, **options)
        prompted = _confirm(report, as_json)
        if prompted:
            report = kill(snapshot, dry_run=False, **options)
    _show(report, as_json, plan_shown=prompted)
    sys.exit(report.exit_code)


def _confirm(report: Any, as_json: bool) -> bool:
    """On a terminal, show the plan and ask; elsewhere a plan is all we print."""
    if as_json or not report.plan.actions or not (sys.stdin.isatty() and sys.stdout.isatty()):
        return False
    from ..remedy.text import render_plan

    write_lines(sys.stdout, render_plan(report.plan))
    return click.confirm("\nApply this plan?", default=False)


def _show(report: Any, as_json: bool, plan_shown: bool) -> None:
    if as_json:
        from ..jsontext import encode

        sys.stdout.buffer.write(encode(report) + b"\n")  # names that are not UTF-8, exact
        return
    from ..remedy.text import render_outcomes, render_plan

    if not report.applied:
        write_lines(sys.stdout, render_plan(report.plan))
        if report.plan.actions:
            click.echo("\nNothing was changed. Run again with --yes to apply this plan.")
        return
    if not plan_shown:
        write_lines(sys.stdout, render_plan(report.plan))
        click.echo()
    write_lines(sys.stdout, render_outcomes(report.outcomes))
