"""The reaper's systemd unit: systemd accepts it, and its capabilities are enough.

The reaper is run here as the unit's dynamic user would run it: user nobody
with exactly the unit's ambient capabilities (setpriv), on a leak in a
namespace the test made. It must end the leak by fin (pidfd_getfd on another
user's process, in another namespace) and write its audit log; without
CAP_SYS_PTRACE it must be refused in one sentence, not half-work.
"""

from __future__ import annotations

import configparser
import json
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_deploy import as_nobody_with, assert_unit_verifies

from conftest import Remote, Unprivileged
from sockdoctor import inventory
from sockdoctor.lab.netlab import Lab
from sockdoctor.model import TcpState

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "systemd"
UNIT = DEPLOY / "sockdoctor-reap.service"
PORT = 7612


def service() -> configparser.SectionProxy:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(UNIT)
    return parser["Service"]


def capabilities() -> list[str]:
    return service()["AmbientCapabilities"].split()


def test_the_unit_is_hardened_and_systemd_accepts_it(tmp_path: Path) -> None:
    unit = service()
    assert unit["DynamicUser"] == "yes" and unit["NoNewPrivileges"] == "yes"
    assert unit["ProtectSystem"] == "strict" and unit["LogsDirectory"] == "sockdoctor"
    assert unit["CapabilityBoundingSet"].split() == capabilities()
    assert "--check" in unit["ExecStartPre"] and "--apply" in unit["ExecStart"]
    assert unit["ExecReload"].endswith("kill -HUP $MAINPID")
    assert_unit_verifies(UNIT, tmp_path)


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory user nobody can read (the policy) and write (the audit log)."""
    path = Path(tempfile.mkdtemp(prefix=f"sdt-reap-{os.getpid()}-"))
    path.chmod(0o777 | stat.S_ISVTX)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.mark.root
@pytest.mark.parametrize("drop", ["", "CAP_SYS_PTRACE"])
def test_the_units_capabilities_are_enough_to_reap(unprivileged: Unprivileged,
                                                   shared_dir: Path, drop: str) -> None:
    policy = shared_dir / "reap.toml"
    policy.write_text(f'[[rule]]\nname = "leak"\nstate = "close-wait"\nport = {PORT}\n'
                      'methods = ["fin"]\n')
    policy.chmod(0o644)
    audit = shared_dir / "audit.jsonl"
    with Lab(f"rcap{os.getpid() % 10000}", pair=False) as lab:
        leaker = Remote(lab, lab.server, "sdt-leaker")  # root's process
        leaker(f"""
            lst = socket.socket(); lst.bind(("127.0.0.1", {PORT})); lst.listen(8)
            peer = socket.create_connection(("127.0.0.1", {PORT})); conn = lst.accept()[0]
            peer.shutdown(socket.SHUT_WR)
            time.sleep(0.2)
        """)
        caps = [c for c in capabilities() if c != drop]
        done = subprocess.run(
            [*as_nobody_with(caps, unprivileged.python), "-m", "sockdoctor", "reap",
             "--policy", str(policy), "--once", "--apply", "--json", "--netns",
             lab.server.netns, "--audit-log", str(audit)],
            env=unprivileged.env, cwd="/", capture_output=True, text=True, timeout=120)
        left = [sk for sk in inventory.scan(netns=lab.server.netns, owners=False).sockets
                if sk.local_port == PORT and sk.state == TcpState.CLOSE_WAIT]
    assert done.returncode == 0, done.stderr
    cycle = next(line for line in map(json.loads, done.stdout.splitlines())
                 if line["event"] == "cycle")
    (rule,) = cycle["rules"]
    if drop:  # without ptrace rights the owner cannot be seen: said once, nothing done
        assert rule["methods"] == {} and len(rule["gave_up"]) == 1
        assert "fin needs its owner" in rule["gave_up"][0], rule["gave_up"]
        assert len(left) == 1 and audit.read_text() == ""  # opened at start, nothing logged
        return
    assert rule["ended"] == 1 and not left
    lines = [json.loads(line) for line in audit.read_text().splitlines()]
    assert [line["event"] for line in lines] == ["intent", "act", "verify"]
    assert lines[0]["comm"] == "sdt-leaker" and lines[2]["outcome"] == "closed"
