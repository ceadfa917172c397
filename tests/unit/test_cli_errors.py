"""Usage errors, click's included, in the house format: one sentence, one line, exit 2.

Every case fails while the command line is read, before anything is scanned,
so these run anywhere (no root, no namespace).
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from sockdoctor.cli import cli


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sockdoctor", *args], capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL)


def one_sentence(done: subprocess.CompletedProcess[str], code: int) -> str:
    assert done.returncode == code, (done.returncode, done.stderr)
    assert done.stdout == "" and "Traceback" not in done.stderr
    assert done.stderr.startswith("sockdoctor: ") and done.stderr.count("\n") == 1, done.stderr
    assert "Usage:" not in done.stderr and "Try '" not in done.stderr
    return done.stderr.strip()


@pytest.mark.parametrize(("args", "message"), [
    (("sl",), "sockdoctor: no such command 'sl' in `sockdoctor`; did you mean ls?"),
    (("docter",), "sockdoctor: no such command 'docter' in `sockdoctor`; did you mean doctor?"),
    (("lab", "rn"), "sockdoctor: no such command 'rn' in `sockdoctor lab`; did you mean run?"),
    (("frobnicate",), "sockdoctor: no such command 'frobnicate' in `sockdoctor` "
                      "(`sockdoctor --help` lists them)"),
    (("ls", "--jsn"), "sockdoctor: no such option --jsn for `sockdoctor ls`; did you mean "
                      "--json?"),
    (("kill", "--yse"), "sockdoctor: no such option --yse for `sockdoctor kill`; did you mean "
                        "--yes?"),
    (("ls", "--port", "nosuchservice"), "sockdoctor: invalid value for '--port': "
     "'nosuchservice' is not a port number (1-65535) or a TCP service name (/etc/services)"),
    (("ls", "--port", "70000"), "sockdoctor: invalid value for '--port': 70000 is not a port "
                                "(1-65535)"),
    (("snapshot",), "sockdoctor: missing option '-o' / '--output'"),
    (("ls", "--older-than", "10x"), "sockdoctor: --older-than: '10x' is not a duration; "
                                    "write it like 30s, 10m, 2h or 1d"),
    (("lab", "run", "forgot-close", "--duration", "2x"), "sockdoctor: --duration: '2x' is not "
                                                         "a duration; write it like 30s, 10m, "
                                                         "2h or 1d"),
    (("lab", "run", "forgot-close", "--duration", "2s", "--keep"),
     "sockdoctor: --keep and --duration exclude each other"),
    (("completion", "tcsh"), "sockdoctor: invalid value for 'SHELL': 'tcsh' is not "
                             "one of 'bash', 'zsh', 'fish'"),
])
def test_usage_errors_are_one_sentence(args: tuple[str, ...], message: str) -> None:
    assert one_sentence(run(*args), 2) == message


def test_a_filter_error_keeps_its_caret() -> None:
    done = run("ls", "x", "y")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.splitlines() == ["sockdoctor: expected a condition but found 'x'",
                                        "  x y", "  ^"]


def test_a_missing_output_directory_is_exit_7() -> None:
    assert one_sentence(run("snapshot", "-o", "/nonexistent-dir/x.json"), 7) == (
        "sockdoctor: cannot write the snapshot to /nonexistent-dir/x.json: no such directory "
        "/nonexistent-dir")


def test_port_takes_service_names_and_duration_options_share_one_type() -> None:
    ls = cli.commands["ls"]
    assert ls.make_context("ls", ["--port", "http", "--port", ":443"]).params["ports"] == \
        (80, 443)
    lab_run = cli.commands["lab"].commands["run"]  # type: ignore[attr-defined]
    assert lab_run.make_context("run", ["x", "--duration", "2s"]).params["duration"] == "2s"
    durations = {(name, p.name) for name, command in _all_commands()
                 for p in command.params if p.type.name == "DURATION"}
    for expected in (("ls", "older_than"), ("doctor", "interval"), ("doctor", "stuck_after"),
                     ("exporter", "interval"), ("top", "interval"), ("trace", "duration"),
                     ("lab run", "duration"), ("keepalive", "idle")):
        assert expected in durations


def _all_commands() -> list[tuple[str, object]]:
    out = []
    for name, command in cli.commands.items():
        out.append((name, command))
        for sub, inner in getattr(command, "commands", {}).items():
            out.append((f"{name} {sub}", inner))
    return out


def test_a_group_without_a_command_shows_its_help() -> None:
    for args in ((), ("lab",)):
        done = run(*args)
        assert done.returncode in (0, 2) and "Traceback" not in done.stderr
        shown = done.stdout + done.stderr
        assert shown.startswith("Usage: sockdoctor") and "\nCommands:\n" in shown, shown
