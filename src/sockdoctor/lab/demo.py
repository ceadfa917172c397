"""`sockdoctor demo`: one lab scenario end to end, in well under 30 seconds.

See the leak, hear the diagnosis, read the plan, cure it, check the service:
every step prints the command an operator would type for it on a real host.
Everything happens in two private network namespaces, removed at the end.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import time
from collections.abc import Callable

from ..doctor import DoctorConfig, config_for, diagnose
from ..inventory import ScanOptions, scan
from .runner import get
from .scenario import RunInfo, Scenario

Out = Callable[[str], None]
DEFAULT_SCENARIO = "forgot-close"


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
        # A lab leak is seconds old; the scenario's doctor options (e.g.
        # --stuck-after 1s instead of the default 10 s) say when it counts.
        time.sleep(scenario.doctor_after)
        return _cure(scenario, info, out)
    finally:
        scenario.teardown(lab)
        out(f"\nLab removed. The whole demo took {time.monotonic() - started:.1f} s.")


def _cure(scenario: Scenario, info: RunInfo, out: Out) -> bool:
    ns = info.netns
    _step(out, 1, "Who holds which sockets?", ["ls", "--summary", "--netns", ns])
    options = list(scenario.doctor_args)
    _step(out, 2, "Why?", ["doctor", "--netns", ns, *options])
    snap = scan(None, ScanOptions(age=True), netns=ns, evidence=True)
    report = diagnose(snap, config=_config(options))
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
    out("")
    out("kill relieved the symptom; the bug is still in the program. Anything stuck now")
    out("came from the health check itself: the fix is the doctor's `fix:` line above.")
    return healthy and code == 0


def _config(options: list[str]) -> DoctorConfig:
    """The DoctorConfig that `doctor` builds from these --stuck-after/--idle-after options."""
    values = dict(zip(options[::2], options[1::2], strict=True))
    return config_for(values.get("--stuck-after"), values.get("--idle-after"))


def _step(out: Out, number: int, title: str, args: list[str]) -> int:
    """Show the command, then run it exactly as typed: the real CLI, in a process of its own."""
    if title:
        out("")
        out(f"== {number}. {title}")
    out(f"   $ sockdoctor {shlex.join(args)}")
    sys.stdout.flush()
    done = subprocess.run([sys.executable, "-m", "sockdoctor", *args], check=False)
    return done.returncode
