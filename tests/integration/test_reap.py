"""`sockdoctor reap` on real leaks in the lab's namespaces.

The server program of test_kill.py keeps what it accepts on port 7000 and
answers echo requests on 7001; a thread of the test keeps talking to it on
a connection of its own (a live ESTABLISHED socket of the same process).
Checked: a dry run changes nothing; --apply ends exactly what the rules
select (not the young CLOSE-WAIT, not the listener, not the live connection);
the daemon reaps leaks that appear while it runs, within interval +
older_than; SIGHUP reloads; SIGTERM finishes and exits 0 with a summary;
the escalation ladder goes from fin to destroy when the peer is gone, and a
socket the ladder cannot end is reported once and left alone.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import leaky
import pytest
from test_kill import PORT, Scene, Traffic, build, make_scene

from sockdoctor.lab.netlab import SERVER_V4, Lab
from sockdoctor.model import TcpState

pytestmark = pytest.mark.root


@pytest.fixture
def scene(lab: Lab, tmp_path: Path) -> Scene:
    return make_scene(lab, tmp_path)


def write_policy(path: Path, *, pid: int, older: str, methods: tuple[str, ...] = ("fin",),
                 interval: str = "1s") -> Path:
    ladder = ", ".join(f'"{m}"' for m in methods)
    path.write_text(f'interval = "{interval}"\n\n[[rule]]\nname = "leaks of the test server"\n'
                    f'state = "close-wait"\npid = {pid}\nolder_than = "{older}"\n'
                    f"methods = [{ladder}]\nmax_per_cycle = 50\n")
    return path


def reap_argv(sc: Scene, policy: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "sockdoctor", "reap", "--policy", str(policy), "--netns",
            sc.netns, "--audit-log", str(sc.audit), *extra]


def close_waits(sc: Scene) -> set[int]:
    return {sk.cookie for sk in sc.ours() if sk.state == TcpState.CLOSE_WAIT}


def young_close_waits(sc: Scene, n: int) -> tuple[list[socket.socket], set[int]]:
    """n fresh CLOSE-WAIT on the server (the peers half-close; nothing else changes)."""
    before = close_waits(sc)
    peers = [leaky.connect(sc.lab, PORT) for _ in range(n)]
    sc.tell(sc.server, f"accept {n}")
    for peer in peers:
        peer.shutdown(socket.SHUT_WR)
    assert leaky.wait_until(lambda: len(close_waits(sc) - before) == n)
    return peers, close_waits(sc) - before


def test_once_is_a_dry_run_and_apply_ends_exactly_what_the_rule_selects(
        scene: Scene, tmp_path: Path) -> None:
    old = {sk.cookie for sk in build(scene, "close-wait")}
    time.sleep(5.3)
    peers, young = young_close_waits(scene, 2)  # a few seconds old when the reaper runs
    policy = write_policy(tmp_path / "reap.toml", pid=scene.server.pid, older="5s")
    listeners = {sk.cookie for sk in scene.scan().sockets if sk.state == TcpState.LISTEN}

    dry = subprocess.run(reap_argv(scene, policy, "--once"), capture_output=True, text=True,
                         timeout=60, stdin=subprocess.DEVNULL)
    assert dry.returncode == 0, dry.stderr
    assert "dry run (add --apply to act)" in dry.stdout
    assert "(dry run): leaks of the test server: would end 3 (fin 3)" in dry.stdout
    assert close_waits(scene) == old | young and not scene.audit.exists()

    with Traffic(scene.lab, scene.addr) as traffic:
        before = traffic.count
        done = subprocess.run(reap_argv(scene, policy, "--once", "--apply"),
                              capture_output=True, text=True, timeout=60,
                              stdin=subprocess.DEVNULL)
        during = traffic.count - before
    assert done.returncode == 0, done.stderr
    assert "leaks of the test server: ended 3 of 3 (fin 3)" in done.stdout
    assert close_waits(scene) == young  # the young ones stay
    now = scene.scan().sockets
    assert listeners <= {sk.cookie for sk in now}  # the listeners stay
    assert traffic.errors == [] and during > 0 and scene.serves()  # the live one works
    assert {line["cookie"] for line in scene.audit_lines("act")} == old
    for peer in peers:
        peer.close()


class Daemon:
    """`sockdoctor reap` running in the background; its NDJSON lines as they come."""

    def __init__(self, argv: list[str]) -> None:
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, stdin=subprocess.DEVNULL)
        self.lines: list[dict[str, Any]] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:  # type: ignore[union-attr]
            self.lines.append(json.loads(line))

    def cycles(self) -> list[dict[str, Any]]:
        return [line for line in self.lines if line["event"] == "cycle"]

    def wait_cycles(self, n: int, timeout: float = 30) -> None:
        start = len(self.cycles())
        assert leaky.wait_until(lambda: len(self.cycles()) >= start + n, timeout), self.lines

    def stop(self, sig: int = signal.SIGTERM) -> tuple[int, str]:
        self.proc.send_signal(sig)
        rc = self.proc.wait(60)
        self.reader.join(10)
        return rc, self.proc.stderr.read()  # type: ignore[union-attr]


def test_the_daemon_reaps_new_leaks_reloads_on_sighup_and_stops_on_sigterm(
        scene: Scene, tmp_path: Path) -> None:
    policy = write_policy(tmp_path / "reap.toml", pid=scene.server.pid, older="1h")
    daemon = Daemon(reap_argv(scene, policy, "--apply", "--json"))
    try:
        daemon.wait_cycles(1)
        first = {sk.cookie for sk in build(scene, "close-wait")}
        daemon.wait_cycles(2)
        assert close_waits(scene) == first  # not an hour old

        write_policy(policy, pid=scene.server.pid, older="1s")
        daemon.proc.send_signal(signal.SIGHUP)
        assert leaky.wait_until(lambda: any(
            line.get("note", "").startswith("policy reloaded") for line in daemon.lines), 30)
        assert leaky.wait_until(lambda: not close_waits(scene) & first, 30)

        # a leak that appears while it runs: gone within interval + older_than (+ a cycle)
        peers, later = young_close_waits(scene, 3)
        appeared = time.monotonic()
        assert leaky.wait_until(lambda: not close_waits(scene) & later, 30)
        assert time.monotonic() - appeared < 1 + 1 + 4
    finally:
        rc, err = daemon.stop()
    assert rc == 0, err
    stopped = daemon.lines[-1]
    assert stopped["event"] == "stopped"
    assert sum(t["count"] for t in stopped["totals"] if t["outcome"] == "closed") == 6
    assert {line["cookie"] for line in scene.audit_lines("act")} == first | later
    for peer in peers:
        peer.close()


def test_sigterm_prints_a_summary_and_the_metrics_count_what_was_done(
        scene: Scene, tmp_path: Path) -> None:
    build(scene, "close-wait")
    policy = write_policy(tmp_path / "reap.toml", pid=scene.server.pid, older="0s")
    metrics_dir = tmp_path / "textfile"
    metrics_dir.mkdir()
    proc = subprocess.Popen(reap_argv(scene, policy, "--apply", "--listen", "127.0.0.1:0",
                                      "--textfile", str(metrics_dir)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)
    first = proc.stdout.readline()  # type: ignore[union-attr]
    url = first.split("metrics on ")[1].split(";")[0]
    assert leaky.wait_until(lambda: not close_waits(scene), 30)
    time.sleep(0.5)
    with urllib.request.urlopen(url, timeout=10) as answer:  # loopback only
        scraped = answer.read().decode()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    lines = [first.rstrip("\n"), *out.strip().splitlines()]
    assert lines[0].startswith("reap: 1 rule(s) from") and "acting (--apply)" in lines[0]
    assert any("ended 3 of 3 (fin 3)" in line for line in lines)
    assert lines[-1].startswith("reap: stopped after ")
    assert "ended 3 sockets (fin 3), 0 given up on." in lines[-1]

    sample = ('sockdoctor_reaped_total{method="fin",outcome="closed",'
              'rule="leaks of the test server"} 3.0')
    assert sample in scraped and 'sockdoctor_reap_cycles_total{mode="apply"}' in scraped
    assert "process_cpu_seconds_total" in scraped
    textfile = (metrics_dir / "sockdoctor_reap.prom").read_text()
    assert sample in textfile and "process_cpu_seconds_total" not in textfile
    if shutil.which("promtool"):
        check = subprocess.run(["promtool", "check", "metrics"], input=textfile, text=True,
                               capture_output=True, timeout=30)
        assert check.returncode == 0, check.stdout + check.stderr


@pytest.fixture
def unreachable_peer(scene: Scene) -> Any:
    """After this, nothing from the server reaches the client namespace (nft drop)."""
    if shutil.which("nft") is None:
        pytest.skip("nft (nftables) is not installed")
    table = f"sdreap{os.getpid()}"

    def block() -> None:
        script = (f"add table inet {table}\n"
                  f"add chain inet {table} input {{ type filter hook input priority 0; }}\n"
                  f"add rule inet {table} input ip saddr {SERVER_V4} tcp sport {PORT} drop\n")
        subprocess.run(["ip", "netns", "exec", scene.lab.client.netns, "nft", "-f", "-"],
                       input=script, text=True, check=True, timeout=10)
    return block


@pytest.mark.parametrize("ladder", [("fin", "destroy"), ("fin",)])
def test_the_ladder_escalates_and_a_socket_it_cannot_end_is_given_up_once(
        scene: Scene, tmp_path: Path, unreachable_peer: Any, ladder: tuple[str, ...]) -> None:
    targets = {sk.cookie for sk in build(scene, "close-wait")}
    unreachable_peer()  # our FIN will never be acknowledged
    policy = write_policy(tmp_path / "reap.toml", pid=scene.server.pid, older="0s",
                          methods=ladder)
    daemon = Daemon(reap_argv(scene, policy, "--apply", "--json"))
    try:
        assert leaky.wait_until(lambda: len(daemon.cycles()) >= 4, 60), daemon.lines
    finally:
        rc, err = daemon.stop()
    assert rc == 0, err
    rules = [c["rules"][0] for c in daemon.cycles()]
    acts = scene.audit_lines("act")
    by_cookie: dict[int, list[str]] = {}
    for line in acts:
        by_cookie.setdefault(line["cookie"], []).append(line["method"])
    assert set(by_cookie) == targets
    assert rules[0]["methods"] == {"fin": 3} and rules[0]["ended"] == 0
    if ladder == ("fin", "destroy"):
        assert rules[0]["escalated"] == 3
        assert rules[1]["methods"] == {"destroy": 3} and rules[1]["ended"] == 3
        assert all(methods == ["fin", "destroy"] for methods in by_cookie.values())
        assert not targets & {sk.cookie for sk in scene.ours()}
    else:
        assert len(rules[0]["gave_up"]) == 3 and "survived" in rules[0]["gave_up"][0]
        assert all(not r["methods"] and not r["gave_up"] for r in rules[1:])  # reported once
        assert all(methods == ["fin"] for methods in by_cookie.values())
        left = {sk.cookie: sk.state for sk in scene.ours()}
        assert {left[c] for c in targets} == {TcpState.LAST_ACK}  # still waiting for the ACK

