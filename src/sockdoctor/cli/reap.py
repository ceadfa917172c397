"""`sockdoctor reap`: a policy-driven reaper, a dry run unless --apply."""

from __future__ import annotations

from typing import Any

import click

from .common import CONTEXT, build_query, filter_options, scope_words
from .web import check_path, web_options

REAP_HELP = """
\b
The policy is a TOML file of [[rule]]s (docs/reap.md; an example:
deploy/systemd/reap-policy.toml). Every cycle (the policy's interval): one
sample of the host, a plan per rule, applied within the rule's max_per_cycle
with its ladder of methods (e.g. fin, then destroy), verified and written to
the audit log. A socket a rung did not end gets the next rung next cycle;
one the whole ladder could not end is reported once and left alone. Without
--apply nothing is changed: each line says what would be done.
FILTER and the filter flags narrow every rule; --netns limits the sample.
SIGTERM (or Ctrl-C) finishes the cycle in progress, prints a summary and
exits 0; SIGHUP reloads the policy (a bad file keeps the old one in force).

\b
Examples:
  # what it would do now (a dry run, one cycle)
  sockdoctor reap --policy /etc/sockdoctor/reap.toml --once
  # run as a daemon
  sockdoctor reap --policy reap.toml --apply
  # validate and exit
  sockdoctor reap --policy reap.toml --check
  # NDJSON per cycle
  sockdoctor reap --policy reap.toml --apply --netns web --json
  # serve the reaper's metrics
  sockdoctor reap --policy reap.toml --apply --web.listen-address 127.0.0.1:19809
"""


@click.command("reap", context_settings=CONTEXT, epilog=REAP_HELP)
@filter_options
@click.option("--policy", "policy_path", required=True, metavar="FILE",
              help="The TOML policy file.")
@click.option("--apply", "apply_", is_flag=True, help="Act (default: a dry run).")
@click.option("--once", is_flag=True, help="One cycle, then exit.")
@click.option("--check", is_flag=True, help="Validate the policy, print its rules, exit.")
@click.option("--audit-log", metavar="FILE", default=None,
              help="Append JSON lines for every action here [default: the policy's "
                   "audit_log, else /var/log/sockdoctor/audit.jsonl].")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per cycle (NDJSON).")
@web_options(None)
@click.option("--textfile", "textfile_dir", metavar="DIR",
              help="Write DIR/sockdoctor_reap.prom after every cycle (node_exporter).")
def reap_command(policy_path: str, apply_: bool, once: bool, check: bool,
                 audit_log: str | None, as_json: bool, listen: tuple[str, ...],
                 telemetry_path: str, web_config: str | None, textfile_dir: str | None,
                 **kw: Any) -> None:
    """Reap stuck connections by a policy, cycle after cycle: planned, audited, verified."""
    from ..reap import policy as reap_policy
    from ..reap.daemon import ReapSettings, run

    check_path(telemetry_path)
    if check:
        _describe(reap_policy.load(policy_path))
        return
    query = build_query(kw)
    run(policy_path, ReapSettings(
        apply=apply_, once=once, audit_log=audit_log, narrow=query if query.narrows else None,
        netns=query.netns, as_json=as_json, listen=listen, telemetry_path=telemetry_path,
        web_config=web_config, textfile_dir=textfile_dir,
        scope=scope_words(query.netns)))


def _describe(policy: Any) -> None:
    click.echo(f"{policy.path}: valid; every {policy.interval_s:g}s, "
               f"{len(policy.rules)} rule(s)")
    for rule in policy.rules:
        click.echo(f"  {rule.describe()}")
