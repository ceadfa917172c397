"""Hostile policy files and durations (issue 15, item 5): one sentence and exit 2 (3 for a
namespace that does not exist), never a traceback, never a hang; a running reap daemon
told to reload such a file keeps its policy, says why, and still stops on SIGTERM.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sockdoctor.errors import SockdoctorError, UsageError
from sockdoctor.lab.netlab import Lab
from sockdoctor.query import MAX_DURATION_MS, parse_duration
from sockdoctor.reap import policy as reap_policy

GOOD = 'interval = "200ms"\n\n[[rule]]\nname = "r"\nstate = "close-wait"\nport = 7\n'
DEEP = "x = " + "[" * 3000 + "]" * 3000 + "\n" + GOOD


def sockdoctor(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sockdoctor", *args], capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def one_sentence(result: subprocess.CompletedProcess[str], code: int, words: str) -> None:
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert words in result.stderr, result.stderr


BAD_POLICIES: list[tuple[str, bytes, int, str]] = [
    ("non-utf8", GOOD.replace('"r"', '"r\xff"').encode("latin-1"), 2, "not UTF-8"),
    ("deep", DEEP.encode(), 2, "deeper than a policy"),
    ("interval", GOOD.replace("200ms", "200000d").encode(), 2, "at most 365d"),
    ("older_than", (GOOD + 'older_than = "99999999h"\n').encode(), 2, "at most 365d"),
    ("port 70000", GOOD.replace("port = 7", "port = 70000").encode(), 2, "1 to 65535"),
    ("port 0", GOOD.replace("port = 7", "port = 0").encode(), 2, "1 to 65535"),
    ("pid float", GOOD.replace("port = 7", "pid = 1e20").encode(), 2, "pid takes numbers"),
    ("pid huge", GOOD.replace("port = 7", "pid = 100000000000000000000").encode(), 2,
     "process id"),
    ("pid max", GOOD.replace("port = 7", "pid = 4194304").encode(), 2, "not a process id"),
    ("pid 0", GOOD.replace("port = 7", "pid = 0").encode(), 2, "not a process id"),
    ("netns", (GOOD + 'netns = "no-such-ns-i15"\n').encode(), 3,
     "no network namespace 'no-such-ns-i15'"),
]


@pytest.mark.parametrize(("what", "content", "code", "words"), BAD_POLICIES,
                         ids=[b[0] for b in BAD_POLICIES])
def test_a_bad_policy_is_one_sentence(tmp_path: Path, what: str, content: bytes, code: int,
                                      words: str) -> None:
    path = tmp_path / "reap.toml"
    path.write_bytes(content)
    one_sentence(sockdoctor("reap", "--policy", str(path), "--check"), code, words)


@pytest.mark.parametrize("kind", ["fifo", "directory", "device"])
def test_a_policy_path_that_is_no_regular_file_is_refused_at_once(tmp_path: Path,
                                                                   kind: str) -> None:
    path = tmp_path / "reap.toml"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    else:
        path = Path("/dev/zero")
    # a hang is subprocess.TimeoutExpired: the test fails
    one_sentence(sockdoctor("reap", "--policy", str(path), "--check", timeout=30), 2,
                 "not a regular file")


def test_exporter_interval_past_the_maximum_is_exit_2() -> None:
    one_sentence(sockdoctor("exporter", "--once", "--interval", "200000d"), 2, "365d")


# --- generated input: documented errors only ------------------------------------------

DURATION_TEXT = st.one_of(
    st.text(max_size=12),
    st.builds(lambda n, u: f"{n}{u}", st.integers(min_value=0, max_value=10**25),
              st.sampled_from(["", "ms", "s", "m", "h", "d", "x"])),
    st.builds(lambda f, u: f"{f}{u}", st.floats(min_value=0, allow_nan=False),
              st.sampled_from(["", "s", "d"])))


@settings(max_examples=400, deadline=None)
@given(DURATION_TEXT)
def test_durations_parse_or_are_a_usage_error(text: str) -> None:
    try:
        ms = parse_duration(text, "--x")
    except UsageError as exc:
        assert "\n" not in str(exc)
        return
    assert 0 <= ms <= MAX_DURATION_MS


TOML_SCALARS = st.one_of(
    st.integers(min_value=-2**63, max_value=2**63 - 1), st.booleans(),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=10),
    st.sampled_from(["close-wait", "10m", "200000d", "fin", "dport = :80", "10.0.0.0/8",
                     "all", "host", "x\x1b"]))
TOML_VALUES = st.one_of(TOML_SCALARS, st.lists(TOML_SCALARS, max_size=3))
KEYS = sorted(reap_policy.RULE_KEYS | {"bogus"})


def _toml(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string is JSON's escaping
    return repr(value)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["interval", "rate", "audit_log"]), TOML_VALUES,
                       max_size=2),
       st.lists(st.dictionaries(st.sampled_from(KEYS), TOML_VALUES, min_size=1, max_size=4),
                min_size=1, max_size=2))
def test_generated_policies_load_or_are_one_sentence(tmp_path_factory: Any, top: dict,
                                                     rules: list) -> None:
    lines = [f"{k} = {_toml(v)}" for k, v in top.items()]
    for rule in rules:
        lines += ["[[rule]]", *(f"{k} = {_toml(v)}" for k, v in rule.items())]
    path = tmp_path_factory.mktemp("pol") / "reap.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8", errors="surrogatepass")
    try:
        reap_policy.load(str(path))
    except SockdoctorError as exc:  # the CLI escapes it; names of other namespaces are raw
        assert exc.exit_code in (2, 3) and "\n" not in str(exc).split(" (known: ")[0]


# --- a running daemon told to reload a bad file -----------------------------------------


class Daemon:
    """`sockdoctor reap --json` (a dry run) in the background; its NDJSON lines."""

    def __init__(self, argv: list[str]) -> None:
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, stdin=subprocess.DEVNULL)
        self.lines: list[dict[str, Any]] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:  # type: ignore[union-attr]
            self.lines.append(json.loads(line))

    def notes(self) -> list[str]:
        return [line["note"] for line in self.lines if line["event"] == "note"]

    def cycles(self) -> int:
        return sum(line["event"] == "cycle" for line in self.lines)


def wait_until(check: Callable[[], bool], timeout: float = 20) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if check():
            return True
        time.sleep(0.05)
    return False


REPLACEMENTS: list[tuple[str, Callable[[Path], None], str]] = [
    ("fifo", lambda p: os.mkfifo(p), "not a regular file"),
    ("non-utf8", lambda p: p.write_bytes(b"interval = \"1s\xff\"\n"), "not UTF-8"),
    ("deep", lambda p: p.write_text(DEEP), "deeper than a policy"),
    ("interval", lambda p: p.write_text(GOOD.replace("200ms", "200000d")), "365d"),
    ("netns", lambda p: p.write_text(GOOD + 'netns = "no-such-ns-i15"\n'),
     "no network namespace"),
]


@pytest.mark.root
def test_a_daemon_keeps_its_policy_through_bad_reloads_and_stops_on_sigterm(
        lab: Lab, tmp_path: Path) -> None:
    path = tmp_path / "reap.toml"
    path.write_text(GOOD)
    daemon = Daemon([sys.executable, "-m", "sockdoctor", "reap", "--policy", str(path),
                     "--netns", lab.server.netns, "--audit-log", str(tmp_path / "a.jsonl"),
                     "--json"])
    try:
        assert wait_until(lambda: daemon.cycles() >= 1), daemon.lines
        for what, replace, words in REPLACEMENTS:
            path.unlink()
            replace(path)
            seen = len(daemon.notes())
            daemon.proc.send_signal(signal.SIGHUP)
            assert wait_until(lambda seen=seen: len(daemon.notes()) > seen), (what, daemon.lines)
            note = daemon.notes()[-1]
            assert note.startswith("reload failed, the policy in force stays") and words \
                in note, (what, note)
            cycles = daemon.cycles()
            # still cycling
            assert wait_until(lambda cycles=cycles: daemon.cycles() > cycles + 1), what
        daemon.proc.send_signal(signal.SIGTERM)
        rc = daemon.proc.wait(15)
    finally:
        if daemon.proc.poll() is None:
            daemon.proc.kill()
            daemon.proc.wait()
    err = daemon.proc.stderr.read()  # type: ignore[union-attr]
    assert rc == 0 and "Traceback" not in err, err
    assert daemon.lines[-1]["event"] == "stopped"
