"""`sockdoctor demo`: one lab scenario end to end, in well under 30 seconds.

See the leak, hear the diagnosis, read the plan, cure it, check the service:
every step prints the command an operator would type for it on a real host.
Everything happens in two private network namespaces, removed at the end.
"""

from __future__ import annotations

import shlex
import sys
import time
from collections.abc import Callable

from ..doctor import config_for, diagnose
from ..inventory import scan
from ..query import parse_duration
from .runner import get
from .scenario import RunInfo, Scenario

Out = Callable[[str], None]
DEFAULT_SCENARIO = "forgot-close"
# A lab leak is seconds old; on a real host the doctor waits 10 s by default.
STUCK_AFTER = "1s"


def run(name: str = DEFAULT_SCENARIO, out: Out = print) -> bool:
    """Run the demo; True if the cure worked and the service still answers."""
    scenario = get(name)
    lab = scenario.new_lab()
    started = time.monotonic()
    try:
        out(f"== 0. Reproduce: {scenario.title} (seed {scenario.seed})")
        info = scenario.start(lab)
        out(f"  server {lab.server.addr4} in namespace {lab.server.netns}, "
            f"client {lab.client.addr4} in {lab.client.netns}")
        _let_it_age(info)
        return _cure(scenario, info, out)
    finally:
        scenario.teardown(lab)
        out(f"\nLab removed. The whole demo took {time.monotonic() - started:.1f} s.")


def _let_it_age(info: RunInfo) -> None:
    """Wait until the stuck sockets are old enough to count as stuck, as on a real host."""
    time.sleep(max(0.0, parse_duration(STUCK_AFTER) / 1000 + 0.3 - info.seconds))


def _cure(scenario: Scenario, info: RunInfo, out: Out) -> bool:
    ns = info.netns
    _step(out, 1, "Who holds which sockets?", ["ls", "--summary", "--netns", ns])
    _step(out, 2, "Why?", ["doctor", "--netns", ns, "--stuck-after", STUCK_AFTER])
    snap = scan(netns=ns, owners=True, age=True, evidence=True)
    report = diagnose(snap, config=config_for(STUCK_AFTER))
    top = report.findings[0] if report.findings else None
    if top is None or not top.relief_argv:
        out("(the doctor found nothing to relieve: the demo cannot go on)")
        return False
    relief = top.relief_argv[2:]  # the doctor's "relieve now" line, minus "sockdoctor kill"
    _step(out, 3, "The plan: nothing is changed yet", ["kill", *relief])
    code = _step(out, 4, "Cure it", ["kill", *relief, "--yes"])
    out("")
    out("== 5. Is the service still healthy?")
    healthy = scenario.healthy_check(info.lab)
    out(f"   a new client was {'served' if healthy else 'NOT served'}")
    _step(out, 0, "", ["ls", "--summary", "--netns", ns])
    return healthy and code == 0


def _step(out: Out, number: int, title: str, args: list[str]) -> int:
    """Show the command, then run it exactly as typed (same code, same output)."""
    from ..cli import cli

    if title:
        out("")
        out(f"== {number}. {title}")
    out(f"   $ sockdoctor {shlex.join(args)}")
    sys.stdout.flush()
    try:
        cli.main(args=args, prog_name="sockdoctor", standalone_mode=False)
    except SystemExit as exc:
        return int(exc.code or 0)
    sys.stdout.flush()
    return 0
