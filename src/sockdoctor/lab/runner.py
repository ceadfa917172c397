"""`sockdoctor lab run`: start a scenario, say what happened and how to look at it.

The lab stays up until Ctrl-C (or SIGTERM, or the given duration) and is then
removed; with keep=True it is left running for `sockdoctor lab clean`.
"""

from __future__ import annotations

import shlex
import signal
import textwrap
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from ..errors import NotFoundError
from ..linux import procfs
from ..model import Socket, TcpState
from ..words import plural, untrusted
from . import netlab
from .scenario import RunInfo, Scenario, count_states
from .scenarios import REGISTRY

Out = Callable[[str], None]
SHOWN_SOCKETS = 5


def get(name: str) -> Scenario:
    """The scenario called `name`, or a NotFoundError listing the known ones."""
    try:
        return REGISTRY[name]
    except KeyError:
        known = ", ".join(REGISTRY)
        raise NotFoundError(f"no lab scenario called '{name}' (known: {known})") from None


def run(name: str, keep: bool = False, out: Out = print, duration: float | None = None,
        timeout: float = 30.0) -> RunInfo | None:
    """Run one scenario and report on it.

    duration: None waits for Ctrl-C (or SIGTERM); a number of seconds waits
        that long (0: report and clean up at once, for scripts and tests).
    keep: leave the namespaces and programs running and return at once.
    Returns the RunInfo (None if interrupted before the bug was reproduced).
    """
    scenario = get(name)
    lab = scenario.new_lab()
    info: RunInfo | None = None
    out(f"lab {scenario.name}: {scenario.title} (seed {scenario.seed})")
    out(textwrap.fill(scenario.description, width=88, initial_indent="  ",
                      subsequent_indent="  "))
    try:
        with _sigterm_as_interrupt():
            out(f"building namespaces {lab.server.netns} and {lab.client.netns} ...")
            info = scenario.start(lab, timeout=timeout)
            report(scenario, info, out)
            if keep:
                out("left running. Remove it with: sockdoctor lab clean "
                    + lab.server.netns.removesuffix("-srv"))
                return info
            _wait(duration, out)
    except KeyboardInterrupt:
        out("interrupted")
    finally:
        if not keep or info is None:
            scenario.teardown(lab)
            out(f"removed {lab.server.netns}" + ("" if not lab.pair
                                                  else f" and {lab.client.netns}"))
    return info


def report(scenario: Scenario, info: RunInfo, out: Out = print) -> None:
    """What the scenario did, what it left behind, and the commands to look at it."""
    lab = info.lab
    out(f"server {lab.server.addr4} in {lab.server.netns}; "
        f"client {lab.client.addr4} in {lab.client.netns}")
    for name, pid in info.pids.items():
        alive = info.programs[name].proc.poll() is None
        out(f"  {name:<12} pid {pid:<7} {'running' if alive else 'finished'}")
    for note in info.notes:
        out(textwrap.fill(note, width=88, initial_indent="  ", subsequent_indent="    "))
    out(f"reproduced in {info.seconds:.1f} s: {_summary(scenario, info)} in {info.netns}")
    for sk in info.stuck[:SHOWN_SOCKETS]:
        out("  " + _socket_line(sk))
    if len(info.stuck) > SHOWN_SOCKETS:
        out(f"  ... and {len(info.stuck) - SHOWN_SOCKETS} more")
    comm = scenario.expected_comm or "(no owner)"
    out(f"expected diagnosis: {scenario.expected_rule}, process {comm}, "
        f"port {scenario.expected_port}")
    out("look at it:")
    for command in commands(scenario, info):
        out(f"  {command}")


def commands(scenario: Scenario, info: RunInfo) -> list[str]:
    """The commands that show, diagnose and clear this scenario's stuck sockets."""
    ns = info.netns
    ls_words = " ".join(shlex.quote(w) for w in scenario.ls_filter())
    cmds = [f"sockdoctor ls --netns {ns} {ls_words}",
            " ".join(["sockdoctor doctor --netns", ns,
                      *(shlex.quote(a) for a in scenario.doctor_args)]),
            "sockdoctor kill " + " ".join(shlex.quote(a) for a in info.kill_args),
            f"ip netns exec {ns} ss -tanpo"]
    if info.peer_netns:
        cmds.append(f"sockdoctor ls --netns {info.peer_netns}    # the other end")
    return cmds


def _summary(scenario: Scenario, info: RunInfo) -> str:
    if info.dead_fds:
        return (f"{len(info.dead_fds)} descriptors of {scenario.expected_comm} point at TCP "
                "sockets that are in no TCP table")
    counts = count_states(info.stuck)
    return ", ".join(f"{n} {state}" for state, n in counts.items()) or "nothing"


def _socket_line(sk: Socket) -> str:
    owner = sk.owner_note() if sk.inode == 0 else ""
    return (f"{TcpState(sk.state).ss_name:<11} {sk.recv_q:>6} {sk.send_q:>6}  "
            f"{sk.local_addr}:{sk.local_port:<6} {sk.peer_addr}:{sk.peer_port:<6} {owner}")


def _wait(duration: float | None, out: Out) -> None:
    if duration is None:
        out("press Ctrl-C to stop and remove everything")
        while True:
            time.sleep(3600)
    elif duration > 0:
        out(f"removing everything in {duration:g} s (Ctrl-C: now)")
        time.sleep(duration)


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM cleans up like Ctrl-C (only the main thread can take signals)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def clean(names: Sequence[str] = (), force: bool = False, out: Out = print) -> list[str]:
    """`sockdoctor lab clean [NAME]... [--force]`: remove labs whose run is over.

    Labs of runs still going (another terminal, a test suite) are listed and
    left alone unless named or `force`. A NAME that is no lab is a NotFoundError.
    """
    if names:
        known = {lab.name for lab in netlab.labs()} | {lab.stem for lab in netlab.labs()}
        unknown = [n for n in names if n not in known]
        if unknown:
            shown = ", ".join(sorted({lab.stem for lab in netlab.labs()})) or "none"
            raise NotFoundError(f"no lab called '{unknown[0]}' (labs now: {shown})")
    removed, spared = netlab.clean(names, force)
    out(f"removed {plural(len(removed), 'lab namespace')}"
        + (": " + ", ".join(removed) if removed else ""))
    for stem in sorted({lab.stem for lab in spared}):
        out(_spared_line(stem, [lab for lab in spared if lab.stem == stem]))
    return removed


def _spared_line(stem: str, ends: list[netlab.LabNetns]) -> str:
    names = ", ".join(lab.name for lab in ends)
    creator = ends[0].creator
    if creator == 0:
        why = "its creator is unknown (a name from an older sockdoctor)"
    else:
        info = procfs.process_info(creator)
        who = f"{untrusted(info.comm)} (pid {creator})" if info else f"pid {creator}"
        why = f"its run is still going: {who}"
    return (f"left alone {names}: {why}; remove it with `sockdoctor lab clean {stem}` "
            "(or --force for every lab)")
