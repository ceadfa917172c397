"""`sockdoctor unit`: the printed systemd units run this installation, systemd
accepts them, deploy/systemd/ holds the same text, and the documented
production install (docs/exporter.md, "systemd") works as written."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sockdoctor.units import DOCUMENTED, NAMES

REPO = Path(__file__).resolve().parents[2]
SCRIPT = Path(sys.executable).parent / "sockdoctor"  # this venv's console script


def run(*argv: str, program: list[str] | None = None) -> subprocess.CompletedProcess:
    cmd = program or [sys.executable, "-m", "sockdoctor"]
    return subprocess.run([*cmd, *argv], capture_output=True, text=True, timeout=60)


def verify(text: str, path: Path) -> None:
    """systemd-analyze verify finds nothing to say about the unit text."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    path.write_text(text)
    done = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr


def exec_lines(text: str) -> list[str]:
    return re.findall(r"^ExecStart(?:Pre)?=(.*)$", text, re.M)


@pytest.mark.parametrize("name", NAMES)
def test_deploy_systemd_holds_the_units_printed_for_the_documented_path(name: str) -> None:
    done = run("unit", name, "--exec", DOCUMENTED)
    assert done.returncode == 0, done.stderr
    assert done.stdout == (REPO / "deploy" / "systemd" / f"sockdoctor-{name}.service").read_text()
    assert all(line.startswith(DOCUMENTED + " ") for line in exec_lines(done.stdout))


@pytest.mark.parametrize("name", NAMES)
def test_the_console_script_prints_a_unit_that_runs_itself(name: str, tmp_path: Path) -> None:
    if not SCRIPT.exists():
        pytest.skip("no sockdoctor console script beside this python")
    done = run("unit", name, program=[str(SCRIPT)])
    assert done.returncode == 0, done.stderr
    lines = exec_lines(done.stdout)
    assert lines and all(line.startswith(f"{SCRIPT.resolve()} {name} ") for line in lines)
    assert "NoNewPrivileges=yes" in done.stdout and "DynamicUser=yes" in done.stdout
    verify(done.stdout, tmp_path / f"sockdoctor-{name}.service")


@pytest.mark.parametrize("name", NAMES)
def test_python_m_prints_a_unit_that_runs_this_python(name: str, tmp_path: Path) -> None:
    done = run("unit", name)
    assert done.returncode == 0, done.stderr
    lines = exec_lines(done.stdout)
    assert lines and all(line.startswith(f"{sys.executable} -m sockdoctor {name} ")
                         for line in lines)
    verify(done.stdout, tmp_path / f"sockdoctor-{name}.service")


def test_a_path_with_a_blank_is_quoted_for_systemd(tmp_path: Path) -> None:
    program = tmp_path / "my tools" / "sockdoctor"
    program.parent.mkdir()
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    done = run("unit", "exporter", "--exec", str(program))
    assert exec_lines(done.stdout) == [f'"{program}" exporter --listen :19808 --interval 15s']
    verify(done.stdout, tmp_path / "sockdoctor-exporter.service")


def test_mistakes_are_one_sentence_and_exit_2() -> None:
    done = run("unit", "exporter", "--exec", "bin/sockdoctor")
    assert done.returncode == 2 and not done.stdout
    assert done.stderr.strip().splitlines() == [
        "sockdoctor: --exec bin/sockdoctor: give an absolute path (systemd does not search "
        "PATH for it)."]
    assert run("unit", "exporterd").returncode == 2
    forged = run("unit", "exporter", "--exec", "/opt/x\nExecStartPre=/bin/true")
    assert forged.returncode == 2 and not forged.stdout
    assert forged.stderr.strip().splitlines() == [
        "sockdoctor: /opt/x\\nExecStartPre=/bin/true has a control character, which a unit "
        "file cannot hold: give another path with --exec."]


def test_help_examples_can_be_pasted() -> None:
    """Each example is a `#` line saying what it does, then the command alone."""
    done = run("unit", "--help")
    assert done.returncode == 0
    examples = done.stdout.split("Examples:", 1)[1].strip().splitlines()
    assert examples[0].strip().startswith("# ")
    commands = [line.strip() for line in examples if not line.strip().startswith("#")]
    assert len(commands) >= 3
    assert all(c.startswith(("sockdoctor unit ", "systemctl ")) for c in commands), commands
    assert all("  " not in c for c in commands)  # no trailing description on the line


def clone(dest: Path) -> Path:
    """The repository's tracked files (what a `git clone` gives)."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True,
                           check=False).stdout.split(b"\0")
    if not any(files):
        shutil.copytree(REPO, dest, ignore=shutil.ignore_patterns(
            ".git", ".venv", "__pycache__", "*.egg-info", "*.so", ".pytest_cache"))
        return dest
    for name in filter(None, (f.decode() for f in files)):
        if (REPO / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)
    return dest


def documented_install() -> list[str]:
    text = (REPO / "docs" / "exporter.md").read_text()
    block = re.search(r"<!-- deploy-install -->\n```sh\n(.*?)```", text, re.S)
    assert block is not None
    return block.group(1).strip().splitlines()


@pytest.mark.root
@pytest.mark.slow
def test_the_documented_production_install_works_as_written(tmp_path: Path) -> None:
    """The lines of docs/exporter.md, run into a temporary root: /opt, /usr/local/bin
    and /etc/systemd/system moved under it; systemctl is the only line not run."""
    root = tmp_path / "root"
    for sub in ("opt", "usr/local/bin", "etc/systemd/system"):
        (root / sub).mkdir(parents=True)
    source = clone(tmp_path / "clone")
    # as a user's shell has it: no venv, and no SOCKDOCTOR_* switch of this test run
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("VIRTUAL_ENV", "PYTHON", "SOCKDOCTOR_"))}
    env["PATH"] = f"{root}/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"
    outputs = []
    for line in documented_install():
        if line.startswith("systemctl "):
            continue  # no systemd here to start it; verify above checked the unit
        line = line.replace("/path/to/sockdoctor", str(source))
        for top in ("/opt/", "/usr/local/bin/", "/etc/systemd/"):
            line = line.replace(top, f"{root}{top}")
        done = subprocess.run(["bash", "-c", line], env=env, capture_output=True, text=True,
                              timeout=600, cwd=tmp_path)
        assert done.returncode == 0, (line, done.stdout[-2000:], done.stderr[-2000:])
        assert not done.stderr.strip() or "pip" in line, (line, done.stderr)
        outputs.append(done.stdout)
    version = outputs[3]
    assert "C extension (sockdoctor._fast)" in version, version
    unit = (root / "etc/systemd/system/sockdoctor-exporter.service").read_text()
    assert exec_lines(unit) == [f"{root}/opt/sockdoctor/bin/sockdoctor exporter --listen :19808 "
                                "--interval 15s"]


def test_no_doc_installs_from_an_index_sockdoctor_is_not_on() -> None:
    texts = [REPO / "README.md", *(REPO / "docs").glob("*.md"), *(REPO / "deploy").rglob("*"),
             *(REPO / "src" / "sockdoctor" / "units").glob("*.service")]
    said = [str(p) for p in texts if p.is_file()
            and re.search(r"pip3? install (-\S+ )*sockdoctor\b", p.read_text(errors="replace"))]
    assert not said


def test_a_home_directory_install_is_warned_about() -> None:
    done = run("unit", "exporter", "--exec", "/root/.local/bin/sockdoctor")
    assert done.returncode == 0 and "ExecStart=/root/.local/bin/sockdoctor " in done.stdout
    assert "ProtectHome=yes hides" in done.stderr
