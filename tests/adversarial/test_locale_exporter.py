"""The exporter and a process name that is not UTF-8, under every locale (issue 15, 7 and 8).

Two programs, each in a network namespace of its own (unshare -n, so the
namespace is named after them: `pid:N(<name>)`), name themselves with
prctl(PR_SET_NAME) and hold a CLOSE-WAIT: one with the bytes
`sd\\xffop\\xc3 ESC NL` (not UTF-8, a raw escape, a trailing newline), one
with the literal text `sd\\xffop` and the same tail. `exporter --once` under
LANG=C, POSIX, C.UTF-8 and with Python's UTF-8 coercion off must: exit 0,
print no traceback, carry no raw control byte, keep the trailing newline
(escaped) and give the two names two different labels.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sockdoctor.watch.exporter import Exporter

pytestmark = pytest.mark.root

BYTE_NAME = b"sd\xffop\xc3\x1b\n"
TEXT_NAME = b"sd\\xffop\xc3\x1b\n"  # a backslash, then the letters x f f
WIDE_NAME = "café日".encode()  # valid UTF-8 that an ASCII locale cannot print
HOLDER = """
import ctypes, socket, sys, time
ctypes.CDLL(None).prctl(15, ctypes.c_char_p(bytes.fromhex(sys.argv[1])), 0, 0, 0)
lst = socket.socket()
lst.bind(("127.0.0.1", 0))
lst.listen(8)
peer = socket.create_connection(lst.getsockname())
held, _ = lst.accept()
peer.close()  # `held` is CLOSE-WAIT and stays so
print("ready", flush=True)
sys.stdin.read()  # until the test closes our stdin
"""
LOCALES = [
    {"LANG": "C"},
    {"LC_ALL": "POSIX"},
    {"LC_ALL": "C.UTF-8"},
    {"LC_ALL": "C", "PYTHONCOERCECLOCALE": "0", "PYTHONUTF8": "0"},
]


@pytest.fixture(scope="module")
def holders() -> Iterator[dict[bytes, int]]:
    """name -> pid of a program holding a CLOSE-WAIT in a namespace of its own."""
    procs = {}
    try:
        for name in (BYTE_NAME, TEXT_NAME, WIDE_NAME):
            proc = subprocess.Popen(["unshare", "-n", "sh", "-c", 'ip link set lo up && exec '
                                     '"$0" -c "$1" "$2"', sys.executable, HOLDER, name.hex()],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            procs[name] = proc
            assert proc.stdout.readline() == b"ready\n"  # type: ignore[union-attr]
        yield {name: proc.pid for name, proc in procs.items()}
    finally:
        for proc in procs.values():
            proc.stdin.close()  # type: ignore[union-attr]
            proc.wait(10)


def export(pid: int, env: dict[str, str], *extra: str) -> str:
    """`exporter --once` of that program's namespace under `env`: its metrics, as bytes."""
    result = subprocess.run(
        [sys.executable, "-m", "sockdoctor", "exporter", "--once", "--stuck-after", "100ms",
         "--netns", str(pid), *extra],
        env={"PATH": os.environ["PATH"], "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
             **env}, capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert b"Traceback" not in result.stderr, result.stderr
    return result.stdout.decode("utf-8")  # exposition is UTF-8, strictly


@pytest.mark.parametrize("env", LOCALES, ids=[" ".join(e.values()) for e in LOCALES])
def test_a_non_utf8_name_never_crashes_the_exporter(holders: dict[bytes, int],
                                                   env: dict[str, str]) -> None:
    byte_pid, text_pid = holders[BYTE_NAME], holders[TEXT_NAME]
    byte_out, text_out = export(byte_pid, env), export(text_pid, env)
    for out in (byte_out, text_out):
        assert not any((ch < " " and ch != "\n") or "\x7f" <= ch <= "\x9f" for ch in out)
    # our escaping, then the exposition format's doubling of each backslash
    byte_label = f'netns="pid:{byte_pid}(sd\\\\xffop\\\\xc3\\\\x1b\\\\n)"'
    text_label = f'netns="pid:{text_pid}(sd\\\\\\\\xffop\\\\xc3\\\\x1b\\\\n)"'
    assert f"sockdoctor_tcp_sockets{{{byte_label},state=\"close_wait\"}} 1.0" in byte_out
    assert f"sockdoctor_tcp_sockets{{{text_label},state=\"close_wait\"}} 1.0" in text_out
    assert 'process="sd\\\\xffop\\\\xc3\\\\x1b\\\\n"' in byte_out  # the newline kept
    assert 'process="sd\\\\\\\\xffop\\\\xc3\\\\x1b\\\\n"' in text_out  # distinct
    assert "sockdoctor_finding_sockets{" in byte_out  # the finding, labelled by the name


def test_the_textfile_under_the_c_locale(holders: dict[bytes, int], tmp_path: Path) -> None:
    export(holders[BYTE_NAME], {"LC_ALL": "C", "PYTHONUTF8": "0",
                                "PYTHONCOERCECLOCALE": "0"}, "--textfile", str(tmp_path))
    text = (tmp_path / "sockdoctor.prom").read_bytes().decode("utf-8")
    assert "sd\\\\xffop" in text and "\x1b" not in text


def test_a_log_line_quoting_a_name_is_escaped(capfd: pytest.CaptureFixture[str]) -> None:
    Exporter.say("note: cannot enter pid:7(sd\udcffop\x1b]0;x\x07\n)")  # type: ignore[misc]
    err = capfd.readouterr().err
    assert err == "sockdoctor exporter: note: cannot enter pid:7(sd\\xffop\\x1b]0;x\\x07\\n)\n"


@pytest.mark.parametrize("command", [["ls", "-p"], ["doctor", "--stuck-after", "100ms"],
                                     ["ls", "-p", "--json"]])
def test_the_cli_under_an_ascii_locale(holders: dict[bytes, int], command: list[str]) -> None:
    """LANG=C with Python's UTF-8 coercion off: stdout is ASCII, names are not."""
    out = b""
    for name in (BYTE_NAME, WIDE_NAME):
        result = subprocess.run(
            [sys.executable, "-m", "sockdoctor", *command, "--netns", str(holders[name])],
            env={"PATH": os.environ["PATH"], "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
                 "LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"},
            capture_output=True, timeout=60)
        assert result.returncode in (0, 1), result.stderr  # doctor: 1 is a warning
        assert b"Traceback" not in result.stderr, result.stderr
        out += result.stdout
    if "--json" in command:
        assert '"comm":"café日"' in out.decode("utf-8")  # JSON is UTF-8, exact
    else:
        assert b"caf\\u00e9\\u65e5" in out and b"sd\\xffop\\xc3\\x1b\\n" in out
        assert out.isascii() and b"\x1b" not in out
