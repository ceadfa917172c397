"""Every mistake a user can make, in every command: one sentence, the right exit code.

Walks unknown pids, processes and namespaces, conflicting and repeated
options, negative pids, bad values, ss flags sockdoctor does not take, and
missing or corrupt files through ls, doctor, kill, snapshot, lab and demo —
and asserts no traceback ever. Also ss's habits that must simply work.
Everything that scans looks at a one-namespace lab only; kill never gets as
far as acting (each case fails before any plan, or plans without --yes).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import Remote
from sockdoctor.lab.netlab import Lab
from sockdoctor.linux import procfs

pytestmark = pytest.mark.root

SCANNING = ("ls", "doctor", "kill", "snapshot")


@pytest.fixture(scope="module")
def ns() -> Iterator[str]:
    with Lab("errs", pair=False) as lab:
        server = Remote(lab, lab.server, "sdt-errs")
        server("""
            lst = socket.socket()
            lst.bind(("127.0.0.1", 7501))
            lst.listen(8)
            v6 = socket.socket(socket.AF_INET6)
            v6.bind(("::1", 7502))
            v6.listen(8)
            peer = socket.create_connection(("127.0.0.1", 7501))
            conn, _ = lst.accept()
        """)
        yield lab.server.netns


def run(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sockdoctor", *args], capture_output=True,
                          text=True, timeout=60, input=None if stdin is None else
                          stdin.decode())


def no_such_pid() -> int:
    pid = 999_999
    while procfs.pid_exists(pid):
        pid += 1
    return pid


def args_for(command: str, ns: str, *extra: str) -> list[str]:
    base = [command, "--netns", ns, *extra]
    return [*base, "-o", "/tmp/never-written.json"] if command == "snapshot" else base


def user_error(done: subprocess.CompletedProcess[str], code: int, *words: str) -> str:
    assert done.returncode == code, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr and "Traceback" not in done.stdout
    err = done.stderr.strip().splitlines()[-1]
    for word in words:
        assert word in done.stderr, done.stderr
    return err


@pytest.mark.parametrize("command", SCANNING)
def test_unknown_pid_process_and_netns_exit_3_with_a_hint(command: str, ns: str) -> None:
    pid = str(no_such_pid())
    user_error(run(*args_for(command, ns, "--pid", pid)), 3, f"--pid: no process {pid}",
               "ls -p")
    user_error(run(*args_for(command, ns, "--process", "nosuchprogram")), 3,
               "--process: no process named 'nosuchprogram'", "'nosuchprogram*'")
    user_error(run(*args_for(command, ns, "--process", "sdt-err")), 3, "did you mean sdt-errs?")
    user_error(run(*args_for(command, "no-such-ns")), 3,
               "--netns: no network namespace 'no-such-ns'", "known: host")
    assert not os.path.exists("/tmp/never-written.json")


@pytest.mark.parametrize("command", SCANNING)
def test_usage_errors_exit_2_and_name_the_option(command: str, ns: str) -> None:
    user_error(run(*args_for(command, ns, "--pid", "-5")), 2, "'--pid'", "-5 is not a process")
    user_error(run(*args_for(command, ns, "--pid", "x")), 2, "'--pid'")
    user_error(run(*args_for(command, ns, "--netns", "other")), 2,
               "--netns was given 2 different values")
    user_error(run(*args_for(command, ns, "--process", "a", "--process", "b")), 2, "--process")
    user_error(run(*args_for(command, ns, "--older-than", "10 minutes")), 2, "--older-than:")
    user_error(run(*args_for(command, ns, "--state", "listening", "state", "close-wait")), 2,
               "no state in common")
    user_error(run(*args_for(command, ns, "--state", "closed-wait")), 2, "closed-wait")
    user_error(run(*args_for(command, ns, "--port", "0")), 2, "'--port'")
    user_error(run(*args_for(command, ns, "-K")), 2, "-K is an ss option",
               "sockdoctor kill")
    user_error(run(*args_for(command, ns, "-u")), 2, "sockdoctor shows TCP only")
    user_error(run(*args_for(command, ns, "-F", "/nonexistent/filter")), 3, "filter file")
    user_error(run(*args_for(command, ns, "sport", "=")), 2, "^")


def test_ls_conflicts_and_files(ns: str, tmp_path: Path) -> None:
    for pair in (("--json", "--summary"), ("--json", "--ndjson"), ("--summary", "-s"),
                 ("--ndjson", "-s")):
        user_error(run("ls", "--netns", ns, *pair), 2, "exclude each other")
    user_error(run("ls", "--from", str(tmp_path / "nope.json")), 3, "no such snapshot file")
    (tmp_path / "bad.json").write_text("{not json")
    user_error(run("ls", "--from", str(tmp_path / "bad.json")), 6, "not a sockdoctor snapshot")
    user_error(run("ls", "--from", "a", "--from", "b"), 2, "--from")
    user_error(run("ls", "--from", "-", stdin=b"garbage"), 6, "stdin")
    user_error(run("ls", "--netns", ns, "-p", "--from", str(tmp_path)), 6, "directory")
    user_error(run("ls", "-x"), 2, "shows TCP only", "-x (Unix)")
    user_error(run("ls", "-E"), 2, "-E is an ss option", "--interval")
    user_error(run("ls", "-D", "x"), 2, "sockdoctor snapshot -o FILE")
    user_error(run("ls", "-f", "inet"), 2, "-4 or -6")


def test_doctor_errors(ns: str, tmp_path: Path) -> None:
    user_error(run("doctor", "--netns", ns, "--interval", "3x"), 2, "--interval:")
    user_error(run("doctor", "--netns", ns, "--interval", "0s"), 2, "--interval")
    user_error(run("doctor", "--netns", ns, "--stuck-after", "-1s"), 2, "--stuck-after")
    user_error(run("doctor", "--netns", ns, "--idle-after", "x"), 2, "--idle-after")
    user_error(run("doctor", "--from", "-", "--previous", "-"), 2, "stdin")
    user_error(run("doctor", "--from", str(tmp_path / "nope")), 3, "no such snapshot file")
    user_error(run("doctor", "--netns", ns, "-p"), 2, "option of `sockdoctor ls`")
    snap = tmp_path / "s.json"
    assert run("snapshot", "-o", str(snap), "--netns", ns).returncode == 0
    user_error(run("doctor", "--from", str(snap), "--pid", "12345678"), 3, "in " + str(snap))
    user_error(run("doctor", "--from", str(snap), "--process", "sdt-err"), 3, "sdt-errs")
    user_error(run("doctor", "--from", str(snap), "--netns", "self"), 2, "--netns self")
    user_error(run("doctor", "--from", str(snap), "--netns", "elsewhere"), 3,
               f"'elsewhere' in {snap}")


def test_kill_errors_before_any_action(ns: str) -> None:
    user_error(run("kill", "--netns", ns, "--pid", "0"), 2, "'--pid'")
    user_error(run("kill", "--netns", ns, "-s"), 2, "option of `sockdoctor ls`")


def test_snapshot_lab_and_demo_errors(ns: str, tmp_path: Path) -> None:
    user_error(run("snapshot", "--netns", ns), 2, "'-o'")
    user_error(run("snapshot", "--netns", ns, "-o", "a", "-o", "b"), 2, "--output")
    user_error(run("snapshot", "--netns", ns, "-o", str(tmp_path)), 7, "directory")
    user_error(run("lab", "run", "no-such-scenario"), 3, "no lab scenario called")
    user_error(run("lab", "run", "forgot-close", "--keep", "--duration", "1"), 2,
               "exclude each other")
    user_error(run("lab", "clean", "sdlab-no-such-lab"), 3, "no lab called")
    user_error(run("lab", "frobnicate"), 2, "No such command")
    user_error(run("demo", "--scenario", "no-such-scenario"), 3, "no lab scenario called")
    user_error(run("frobnicate"), 2, "No such command")


# --- ss habits that must just work -----------------------------------------------------


def ls(ns: str, *args: str) -> subprocess.CompletedProcess[str]:
    done = run("ls", "--netns", ns, *args)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    return done


def ss(ns: str, flags: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "exec", ns, "ss", "-H", flags], capture_output=True,
                         text=True, check=True).stdout
    return sorted(line.split()[3] for line in out.splitlines() if line.strip())


def local_ends(text: str) -> list[str]:
    return sorted(line.split()[3] for line in text.splitlines()[1:] if line.strip())


@pytest.mark.parametrize("flags", ["-tlnp", "-ltn", "-tlpn"])
def test_listening_flags_list_what_ss_lists(ns: str, flags: str) -> None:
    done = ls(ns, flags)
    assert local_ends(done.stdout) == ss(ns, "-tln")
    assert all(line.startswith("LISTEN") for line in done.stdout.splitlines()[1:])
    if "p" in flags:
        assert 'users:(("sdt-errs"' in done.stdout


def test_tulpn_lists_tcp_and_says_so(ns: str) -> None:
    done = ls(ns, "-tulpn")
    assert local_ends(done.stdout) == ss(ns, "-tln")
    assert "sockdoctor shows TCP only: -u (UDP) ignored" in done.stderr


@pytest.mark.parametrize("flags", ["-tan", "-tanp", "-tanpoe", "-taniem", "-tnH", "-4", "-6",
                                   "-r"])
def test_every_ss_listing_flag_is_accepted(ns: str, flags: str) -> None:
    done = ls(ns, flags)
    if flags == "-tnH":
        assert not done.stdout.startswith("State")
    if flags == "-4":
        assert "::1" not in done.stdout and "127.0.0.1:7501" in done.stdout
    if flags == "-6":
        assert "[::1]:7502" in done.stdout and "127.0.0.1" not in done.stdout
    if flags == "-r":
        assert "-r (resolve names) is not supported" in done.stderr


def test_N_is_netns_and_s_is_the_ss_summary(ns: str) -> None:
    by_n = run("ls", "-N", ns, "-tan")
    assert by_n.returncode == 0 and local_ends(by_n.stdout) == ss(ns, "-tan")
    done = ls(ns, "-s")
    # after "Total: N" (every socket type), ss's TCP line from the kernel's counters (its
    # total and `orphaned` are the whole host's: test_ss_info_parity compares them with ss)
    tcp = done.stdout.splitlines()[1]
    assert re.fullmatch(r"TCP:\s+\d+ \(estab 2, closed \d+, orphaned \d+, timewait 0\)", tcp), tcp
    assert re.search(r"^LISTEN\s+2\s+1\s+1$", done.stdout, re.M)


def test_doctor_kill_and_snapshot_accept_tan(ns: str, tmp_path: Path) -> None:
    doctor = run("doctor", "-tan", "--netns", ns, "--json")
    assert doctor.returncode == 0, doctor.stderr
    assert json.loads(doctor.stdout)["summary"]["sockets"] == 4
    kill = run("kill", "-tan", "--netns", ns, "--json")  # a plan (nothing in CLOSE-WAIT)
    assert kill.returncode != 2 and "Traceback" not in kill.stderr, kill.stderr
    snap = run("snapshot", "-tan", "-N", ns, "-o", str(tmp_path / "s.json"))
    assert snap.returncode == 0, snap.stderr
