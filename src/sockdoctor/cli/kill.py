"""`sockdoctor kill`: build the policy, scan, plan, show, confirm, apply that same plan."""

from __future__ import annotations

import sys
from typing import Any

import click

from ..stdout import reader_may_leave
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
  close    inject shutdown() into the owner with ptrace and swap its fd for a
           placeholder (the number is never reused behind its back)
  rst      forged RST after learning the sequence numbers (needs CAP_NET_RAW)
auto picks per socket. With no state given, only CLOSE-WAIT sockets are chosen.
Exit code: 0 every chosen socket is (or would be) gone, 1 some were left
alone or survived, 2 bad arguments, 4 not permitted, 5 unsupported by this
kernel, 130 interrupted (what was done so far is printed and logged).

\b
Examples:
  # the plan for CLOSE-WAIT on :8080 (nothing changes)
  sockdoctor kill --port 8080
  sockdoctor kill --pid 4242 --older-than 10m --yes
  sockdoctor kill --netns web --state fin-wait-2 --method destroy --yes
  # release shut-down, never-closed descriptors
  sockdoctor kill --dead-fds --pid 4242 --yes
  # every worker's
  sockdoctor kill -N web --process 'php-fpm*' --older-than 30s
"""


def _rate_option(_ctx: click.Context, _param: click.Parameter, value: str | None) -> float:
    from ..errors import UsageError
    from ..remedy.policy import parse_rate

    try:
        return parse_rate(value)
    except UsageError as exc:
        raise click.BadParameter(str(exc)) from None


@click.command("kill", context_settings=CONTEXT, epilog=KILL_HELP)
@filter_options
@click.option("--method", type=click.Choice(["auto", "fin", "drain", "destroy", "close", "rst"]),
              default="auto", show_default=True, help="How to end the sockets.")
@click.option("-y", "--yes", is_flag=True, help="Apply the plan without asking.")
@click.option("--force", is_flag=True,
              help="Also act on listeners, your own SSH session and sockdoctor's sockets.")
@click.option("--max", "max_count", type=click.IntRange(1), default=1000, show_default=True,
              help="Refuse to act on more sockets than this.")
@click.option("--rate", metavar="N/s", callback=_rate_option, help="At most N actions per second.")
@click.option("--dead-fds", is_flag=True,
              help="Also release descriptors whose TCP socket is in no table any more "
                   "(shutdown() without close()); alone, only those. Combine with --pid.")
@click.option("--bare-close", is_flag=True,
              help="close: free the descriptor number itself instead of parking a placeholder "
                   "socket on it (the program may then reuse it unknowingly).")
@click.option("--audit-log", metavar="FILE", default=None,
              help="Append JSON lines for every action here "
                   "[default: /var/log/sockdoctor/audit.jsonl].")
@click.option("--json", "as_json", is_flag=True, help="Print the plan/report as JSON.")
def kill_command(method: str, yes: bool, force: bool, max_count: int, rate: float,
                 dead_fds: bool, bare_close: bool, audit_log: str | None, as_json: bool,
                 **kw: Any) -> None:
    """End stuck connections without restarting their owner: planned, verified, logged."""
    from ..remedy import (
        DEFAULT_PATH,
        KillPolicy,
        apply_plan,
        host_facts,
        plan_kill,
        scan_for_kill,
        stop_on_signals,
    )
    from ..remedy.audit import AuditLog
    from ..remedy.policy import dead_fds_mode

    query = build_query(kw)  # no state named: the policy's CLOSE-WAIT default
    policy = KillPolicy(where=query, methods=(method,), force=force, max_count=max_count,
                        rate=rate, dead_fds=dead_fds_mode(dead_fds, query),
                        bare_close=bare_close)
    snapshot = scan_for_kill(policy, progress=progress(not as_json))
    clear_progress(not as_json)
    warn(snapshot.warnings)
    plan = plan_kill(snapshot, policy, host=host_facts())
    if not (yes or _confirmed(plan, as_json)):
        sys.exit(plan.exit_code)
    # Opened before anything is shown or done: an unwritable log stops us here.
    log = AuditLog((audit_log or DEFAULT_PATH) if plan.actions else None)
    if yes and not as_json:
        _out(_plan_lines(plan, applying=True))
    with stop_on_signals() as stop:
        report = apply_plan(plan, audit_log=log, stop=stop)
    _out_report(report, as_json)
    sys.exit(report.exit_code)


def _plan_lines(plan: Any, applying: bool) -> list[str]:
    from ..remedy.text import render_plan

    return [*render_plan(plan, applying=applying), ""]


def _confirmed(plan: Any, as_json: bool) -> bool:
    """Show the plan once; on a terminal ask whether to apply it. False: nothing changes."""
    if as_json:
        from ..remedy import KillReport

        _out_json(KillReport(plan=plan, applied=False))
        return False
    _out(_plan_lines(plan, applying=False)[:-1])
    if not plan.actions:
        return False
    if sys.stdin.isatty() and sys.stdout.isatty():
        if click.confirm("\nApply this plan?", default=False):
            click.echo()
            return True
        click.echo("Nothing was changed.")
        return False
    _out(["", "Nothing was changed. Run again with --yes to apply this plan."])
    return False


def _out_report(report: Any, as_json: bool) -> None:
    if as_json:
        _out_json(report)
        return
    from ..remedy.text import render_report

    _out(render_report(report))


def _out(lines: Any) -> None:
    """Print, surviving a reader that went away (`kill | head`): the kill still
    runs to its end and exits with its real status."""
    with reader_may_leave():
        write_lines(sys.stdout, lines)


def _out_json(report: Any) -> None:
    from ..jsontext import encode  # names that are not UTF-8, as byte arrays

    with reader_may_leave():
        sys.stdout.flush()
        sys.stdout.buffer.write(encode(report) + b"\n")

