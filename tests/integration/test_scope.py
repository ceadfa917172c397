"""Scope like ss, state spellings, ls's JSON for jq — run as an operator would.

A one-namespace lab holds a listener on :7601, a connection the server side
left in CLOSE-WAIT (held by `sdt-scope`) and the peer's end. Commands run
inside the namespace (`ip netns exec`), where sockdoctor's default scope is
that namespace, as ss's is; on the host they name it with -N.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import Remote, allow_stuck_sockets_in
from sockdoctor.lab.netlab import Lab

pytestmark = pytest.mark.root

BIN = str(Path(sys.executable).parent)
DOCS = Path(__file__).resolve().parents[2] / "docs"
SPELLINGS = ("close-wait", "close_wait", "CLOSE-WAIT", "CLOSE_WAIT", "closewait", "Close_Wait")


@dataclass
class Scene:
    lab: Lab
    ns: str
    pid: int


@pytest.fixture(scope="module")
def scene() -> Iterator[Scene]:
    with Lab("scope", pair=False) as lab:
        server = Remote(lab, lab.server, "sdt-scope")
        server("""
            lst = socket.socket()
            lst.bind(("127.0.0.1", 7601))
            lst.listen(8)
            peer = socket.create_connection(("127.0.0.1", 7601))
            conn, _ = lst.accept()
            peer.shutdown(socket.SHUT_WR)  # conn: CLOSE-WAIT; peer: FIN-WAIT-2, still held
        """)
        yield Scene(lab, lab.server.netns, server.pid)


@pytest.fixture(autouse=True)
def _stuck_sockets_are_the_point(request: pytest.FixtureRequest, scene: Scene) -> None:
    allow_stuck_sockets_in(request, scene.lab)


def inside(scene: Scene, *args: str, shell: bool = False) -> subprocess.CompletedProcess[str]:
    """sockdoctor (or a shell line) run inside the lab's namespace, as `ip netns exec` does."""
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    argv = ["bash", "-o", "pipefail", "-c", args[0]] if shell else ["sockdoctor", *args]
    return subprocess.run(["ip", "netns", "exec", scene.ns, *argv], capture_output=True,
                          text=True, timeout=60, env=env)


def on_host(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([f"{BIN}/sockdoctor", *args], capture_output=True, text=True,
                          timeout=60)


# --- scope -----------------------------------------------------------------------


def test_inside_a_namespace_every_command_defaults_to_it(scene: Scene) -> None:
    done = inside(scene, "ls", "--json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert [ns["name"] for ns in doc["namespaces"]] == [scene.ns]
    assert {s["netns"] for s in doc["sockets"]} == {scene.ns} and doc["count"] == 3
    assert "--netns all" not in done.stderr
    # a destructive command's plan names where it would act (nothing changes without --yes)
    kill = inside(scene, "kill", "--port", "7601")
    assert kill.returncode in (0, 1), kill.stderr
    assert f"in network namespace {scene.ns}." in kill.stdout.splitlines()[0]
    assert "Nothing was changed" in kill.stdout
    snap = inside(scene, "exporter", "--once")
    assert f'netns="{scene.ns}"' in snap.stdout
    assert set(re.findall(r'netns="([^"]*)"', snap.stdout)) <= {scene.ns, "other"}  # folded


def test_netns_all_inside_reaches_out_and_says_so(scene: Scene) -> None:
    done = inside(scene, "ls", "-N", "all", "--json")
    assert done.returncode == 0, done.stderr
    names = [ns["name"] for ns in json.loads(done.stdout)["namespaces"]]
    assert scene.ns in names and "host" in names and len(names) > 1
    assert "sockdoctor: note: --netns all: every network namespace, not only the current " \
           "one" in done.stderr


def test_on_the_host_the_default_stays_all_and_explicit_names_work() -> None:
    from sockdoctor.linux.netns import default_scope

    assert default_scope() == "all"  # the test runs in the host's namespace


def test_default_scope_decision_inside(scene: Scene) -> None:
    code = "from sockdoctor.linux.netns import default_scope; print(default_scope())"
    done = subprocess.run(["ip", "netns", "exec", scene.ns, sys.executable, "-c", code],
                          capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "self", done.stderr


def test_t_alone_lists_what_ss_t_lists(scene: Scene) -> None:
    def ends(text: str, column: int) -> list[tuple[str, str]]:
        rows = [line.split() for line in text.splitlines() if line.strip()]
        return sorted((r[0], r[column]) for r in rows if r[0] != "State")

    for flags in ("-tn", "-tan", "-tln"):
        ours = inside(scene, "ls", flags)
        ss = subprocess.run(["ip", "netns", "exec", scene.ns, "ss", "-H", flags],
                            capture_output=True, text=True, check=True, timeout=30)
        assert ours.returncode == 0, ours.stderr
        assert ends(ours.stdout, 3) == ends(ss.stdout, 3), flags
    assert "LISTEN" not in inside(scene, "ls", "-tn").stdout
    assert "LISTEN" in inside(scene, "ls", "-n").stdout  # without -t: every state


def test_completion_offers_the_namespace(scene: Scene) -> None:
    env = {**os.environ, "_SOCKDOCTOR_COMPLETE": "bash_complete",
           "COMP_WORDS": "sockdoctor ls -N sdlab-scope", "COMP_CWORD": "3"}
    done = subprocess.run([f"{BIN}/sockdoctor"], env=env, capture_output=True, text=True,
                          timeout=30)
    assert f"plain,{scene.ns}" in done.stdout.splitlines()
    env["COMP_WORDS"], env["COMP_CWORD"] = "sockdoctor lab clean sdlab-scope", "3"
    done = subprocess.run([f"{BIN}/sockdoctor"], env=env, capture_output=True, text=True,
                          timeout=30)
    assert f"plain,{scene.ns}" in done.stdout.splitlines()


# --- state spellings ---------------------------------------------------------------


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_every_state_spelling_selects_the_same_sockets(scene: Scene, spelling: str,
                                                       tmp_path: Path) -> None:
    filter_file = tmp_path / "f"
    filter_file.write_text(f"state {spelling}\n")
    cases = {("state", spelling): ["CLOSE-WAIT"], ("--state", spelling): ["CLOSE-WAIT"],
             ("-F", str(filter_file)): ["CLOSE-WAIT"],
             ("state", "connected", "exclude", spelling): ["FIN-WAIT-2"]}
    for args, expected in cases.items():
        done = on_host("ls", "-N", scene.ns, "--json", *args)
        assert done.returncode == 0, (args, done.stderr)
        states = [s["state"] for s in json.loads(done.stdout)["sockets"]]
        assert states == expected, (args, states)


# --- JSON for jq -------------------------------------------------------------------


def test_json_side_service_and_comm_match_the_exporter(scene: Scene) -> None:
    doc = json.loads(inside(scene, "ls", "-p", "--json").stdout)
    assert doc["schema"] == "sockdoctor.ls/2"
    by_state = {s["state"]: s for s in doc["sockets"]}
    # jq: .sockets[] | {state, side, service}
    assert {(s["state"], s["side"], s["service"]) for s in doc["sockets"]} == {
        ("LISTEN", "server", 7601), ("CLOSE-WAIT", "server", 7601),
        ("FIN-WAIT-2", "client", 7601)}
    # jq: .sockets[].owners[]?.comm  -- always a string
    comms = [o["comm"] for s in doc["sockets"] for o in s.get("owners", [])]
    assert comms and all(isinstance(c, str) for c in comms) and "sdt-scope" in comms
    assert not any("comm_bytes" in o for s in doc["sockets"] for o in s.get("owners", []))
    metrics = inside(scene, "exporter", "--once").stdout
    series = re.search(r'^sockdoctor_close_wait_sockets\{(.*)\} 1\.0$', metrics, re.M)
    assert series, metrics
    labels = dict(re.findall(r'(\w+)="([^"]*)"', series.group(1)))
    cw = by_state["CLOSE-WAIT"]
    assert (labels["side"], int(labels["port"])) == (cw["side"], cw["service"])


def recipes() -> list[str]:
    text = (DOCS / "json.md").read_text()
    block = text.split("<!-- jq-recipes -->", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.startswith("sockdoctor ")]


def test_the_jq_recipes_of_docs_json_md_work(scene: Scene) -> None:
    found = recipes()
    assert len(found) == 4
    out = []
    for line in found:
        done = inside(scene, line, shell=True)
        assert done.returncode == 0, (line, done.stderr)
        out.append(done.stdout)
    assert out[0] == ""  # nothing silent for 10 minutes yet
    assert out[1].split() == ["1", "sdt-scope"]
    assert [json.loads(x) for x in out[2].splitlines()] == [
        {"side": "server", "service": 7601, "count": 1,
         "oldest_ms": json.loads(out[2])["oldest_ms"]}]
    assert json.loads(out[3]) == {"CLOSE-WAIT": 1, "FIN-WAIT-2": 1, "LISTEN": 1}
