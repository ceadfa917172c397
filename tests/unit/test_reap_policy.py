"""The reap policy file and the reaper's cycles, without a kernel.

Policies: every key checked, every mistake one sentence that names the rule
(exit 2). Cycles: dry runs on synthetic samples (what each rule would do, the
per-cycle limit, the sampler's ages, the command line's narrowing, guards).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from sockdoctor.cli import cli
from sockdoctor.doctor.synth import SnapshotBuilder
from sockdoctor.linux.host import Host
from sockdoctor.model import TcpState
from sockdoctor.query import Query
from sockdoctor.reap import PolicyError, Reaper, load, parse
from sockdoctor.watch import Sample

HOST = Host(gathered=True, destroy=True)
RULE = {"name": "leaks", "state": "close-wait", "older_than": "10m"}


def policy(**rule: object) -> dict:
    return {"interval": "30s", "rule": [{**RULE, **rule}]}


def test_a_full_policy_reads_as_written() -> None:
    pol = parse({"interval": "5s", "rate": "20/s", "audit_log": "/tmp/a.jsonl", "rule": [
        {"name": "billing", "state": ["close-wait", "last-ack"], "process": "billing",
         "older_than": "10m", "port": [8080, 8081], "peer": "10.0.0.0/8",
         "methods": ["fin", "destroy"], "max_per_cycle": 5, "force": True},
        {"name": "filtered", "filter": "state established dport = :443"}]})
    assert (pol.interval_s, pol.rate, pol.audit_log) == (5.0, 20.0, "/tmp/a.jsonl")
    billing, filtered = pol.rules
    kill = billing.kill
    assert billing.ladder == ("fin", "destroy") and kill.max_count == 5 and kill.force
    assert kill.over_max == "defer" and kill.query.older_than_ms == 600_000 and kill.rate == 20.0
    assert kill.state_mask == (1 << TcpState.CLOSE_WAIT) | (1 << TcpState.LAST_ACK)
    assert kill.where is not None and kill.where.ports == {8080, 8081}
    assert "dst 10.0.0.0/8" in kill.where.text
    assert filtered.kill.state_mask == 1 << TcpState.ESTABLISHED
    assert filtered.ladder == ("fin", "drain", "destroy", "rst")  # auto


def test_without_a_state_a_rule_reaps_close_wait_only() -> None:
    (rule,) = parse({"rule": [{"name": "x", "port": 80}]}).rules
    assert rule.kill.state_mask == 1 << TcpState.CLOSE_WAIT
    assert rule.describe().startswith("x: close-wait, port 80; ladder fin > drain")


@pytest.mark.parametrize(("doc", "words"), [
    ({"rule": [RULE], "intervall": "5s"}, "unknown key 'intervall'"),
    (policy(older="1m"), "rule 'leaks': unknown key 'older'"),
    (policy(older_than="ten minutes"), "rule 'leaks': 'ten minutes' is not a duration"),
    (policy(older_than=600), "rule 'leaks': older_than must be a string"),
    ({"rule": [{"name": "all", "methods": ["fin"]}]}, "rule 'all' selects nothing"),
    ({"rule": []}, "no [[rule]]"),
    ({"interval": "30s"}, "no [[rule]]"),
    (policy(state=[]), "state is empty"),
    (policy(state="closewaiting"), "'closewaiting' is not a TCP state"),
    (policy(filter="state established", state="close-wait"), "no state"),
    (policy(methods=["fin", "nuke"]), "unknown method 'nuke'"),
    (policy(methods="fin,destroy"), "unknown method 'fin,destroy'"),
    (policy(max_per_cycle=0), "max_per_cycle must be a whole number"),
    (policy(force="yes"), "force is true or false"),
    (policy(netns="1234"), "not a PID or self"),
    (policy(filter="( dport = :80"), "rule 'leaks'"),
    (policy(port="80"), "port takes numbers"),
    ({"rule": [RULE, RULE]}, "two rules are named 'leaks'"),
    ({"rule": [RULE], "interval": "10ms"}, "at least 100ms"),
    ({"rule": [RULE], "rate": "banana"}, "'banana' is not a rate"),
])
def test_a_bad_policy_is_one_sentence_naming_what_is_wrong(doc: dict, words: str) -> None:
    with pytest.raises(PolicyError) as err:
        parse(doc, "reap.toml")
    message = str(err.value)
    assert words in message and message.startswith("reap.toml") and "\n" not in message
    assert err.value.exit_code == 2


def sockdoctor(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sockdoctor", *args], capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL)


def test_the_command_line_exits_2_on_a_bad_policy_and_3_on_a_missing_file(
        tmp_path: Path) -> None:
    bad = tmp_path / "reap.toml"
    bad.write_text('interval = "30s"\n[[rule]]\nname = "x"\nstate = "close-wait"\nolder = 1\n')
    done = sockdoctor("reap", "--policy", str(bad), "--once")
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip() == (f"sockdoctor: {bad}: rule 'x': unknown key 'older' (known: "
                                   "filter, force, max_per_cycle, methods, name, netns, "
                                   "older_than, peer, pid, port, process, state)")
    bad.write_text("interval = \n")
    done = sockdoctor("reap", "--policy", str(bad))
    assert done.returncode == 2 and "is not valid TOML" in done.stderr
    missing = sockdoctor("reap", "--policy", str(tmp_path / "nope.toml"))
    assert missing.returncode == 3 and "no policy file" in missing.stderr


def test_the_example_policy_is_valid() -> None:
    example = Path(__file__).parents[2] / "deploy" / "systemd" / "reap-policy.toml"
    pol = load(str(example))
    assert [r.name for r in pol.rules] == ["legacy-billing leaks", "silent internal peers"]
    result = CliRunner().invoke(cli, ["reap", "--policy", str(example), "--check"])
    assert result.exit_code == 0 and "valid" in result.output


# --- dry-run cycles on synthetic samples ---------------------------------------------------

def scene() -> tuple[SnapshotBuilder, list]:
    b = SnapshotBuilder()
    b.process(10, "billing")
    b.process(20, "other")
    b.listener(8080, pid=10)
    old = b.sockets(3, "close-wait", "10.0.0.1:8080", "10.0.0.2", pid=10, age_ms=700_000)
    b.sockets(2, "close-wait", "10.0.0.1:8080", "10.0.0.2", pid=10, age_ms=5_000)  # young
    b.sockets(2, "close-wait", "10.0.0.1:9090", "10.0.0.2", pid=20, age_ms=700_000)
    b.sockets(4, "established", "10.0.0.1:8080", "10.0.0.2", pid=10, age_ms=700_000)
    return b, old


def sample(b: SnapshotBuilder, first_seen: dict[int, float] | None = None) -> Sample:
    snap = b.build()
    return Sample(seq=1, started=snap.created, snapshot=snap, first_seen=first_seen or {})


def reaper(text: str, narrow: Query | None = None) -> Reaper:
    import tomllib

    pol = parse(tomllib.loads(textwrap.dedent(text)), "reap.toml")
    return Reaper(pol, apply=False, host=HOST, audit_log=None, narrow=narrow)


def test_a_dry_run_cycle_says_what_each_rule_would_do() -> None:
    b, _old = scene()
    r = reaper("""
        [[rule]]
        name = "billing"
        process = "billing"
        older_than = "10m"
        [[rule]]
        name = "limited"
        port = 9090
        max_per_cycle = 1
        [[rule]]
        name = "listeners"
        state = "listening"
    """)
    cycle = r.cycle(sample(b))
    billing, limited, listeners = cycle.rules
    assert (dict(billing.methods), billing.deferred) == ({"fin": 3}, 0)
    assert (dict(limited.methods), limited.deferred) == ({"fin": 1}, 1)
    assert not listeners.methods and len(listeners.refused) == 1
    line = cycle.line()
    assert "reap cycle 1 (dry run): billing: would end 3 (fin 3) | limited: would end 1 " \
        "(fin 1); 1 deferred (max_per_cycle) | listeners: 1 refused by a guard" in line
    assert cycle.to_json()["rules"][0]["methods"] == {"fin": 3}
    assert r.summary().endswith("ended 0 sockets, 0 given up on (dry run: nothing was "
                                "changed).")


def test_the_samplers_age_counts_when_it_is_the_larger() -> None:
    b, _old = scene()
    young = [sk for sk in b.socket_list if sk.age_ms == 5_000]
    r = reaper('[[rule]]\nname = "x"\nport = 8080\nolder_than = "10m"\n')
    assert sum(r.cycle(sample(b)).rules[0].methods.values()) == 3
    seen_long_ago = {sk.cookie: b.created - 900 for sk in young}  # seen 15 min ago
    assert sum(r.cycle(sample(b, seen_long_ago)).rules[0].methods.values()) == 5


def test_the_command_lines_filter_narrows_every_rule_and_keeps_listeners() -> None:
    b = SnapshotBuilder()
    b.process(10, "srv")
    lst = b.listener(8080, pid=10)
    b.queued(2, "close-wait", "10.0.0.1:8080", "10.0.0.2", lst)
    b.sockets(2, "close-wait", "10.0.0.1:8080", "10.0.0.9", pid=10)
    r = reaper('[[rule]]\nname = "x"\nport = 8080\n', narrow=Query.build("dst 10.0.0.2"))
    (result,) = r.cycle(sample(b)).rules
    assert dict(result.methods) == {"drain": 2}  # the listener stayed for drain


def test_a_failed_sample_is_a_cycle_with_its_error() -> None:
    r = reaper('[[rule]]\nname = "x"\nport = 80\n')
    cycle = r.cycle(Sample(seq=1, started=0.0, error="netlink said no"))
    assert cycle.error == "netlink said no" and "sample failed: netlink said no" in cycle.line()


def test_the_metrics_start_at_zero_per_rule_and_ladder_and_count_outcomes() -> None:
    from prometheus_client import generate_latest

    from sockdoctor.reap.metrics import ReapCollector, registries

    r = reaper('[[rule]]\nname = "x"\nport = 80\nmethods = ["fin", "destroy"]\n')
    collector = ReapCollector(r)
    text = generate_latest(registries(collector)[1]).decode()
    assert 'sockdoctor_reaped_total{method="fin",outcome="closed",rule="x"} 0.0' in text
    assert 'sockdoctor_reaped_total{method="destroy",outcome="closed",rule="x"} 0.0' in text
    assert 'sockdoctor_reap_cycles_total{mode="dry-run"} 0.0' in text
    r.totals[("x", "fin", "half-closed")] += 2
    r.cycles = 4
    text = generate_latest(registries(collector)[1]).decode()
    assert 'sockdoctor_reaped_total{method="fin",outcome="half-closed",rule="x"} 2.0' in text
    assert 'sockdoctor_reap_cycles_total{mode="dry-run"} 4.0' in text
    assert 'sockdoctor_reap_given_up{rule="x"} 0.0' in text


def test_a_rules_process_may_be_a_glob_as_on_the_command_line() -> None:
    b, _old = scene()
    r = reaper("""
        [[rule]]
        name = "billing family"
        process = "bill*"
        older_than = "10m"
    """)
    (rule,) = r.cycle(sample(b)).rules
    assert dict(rule.methods) == {"fin": 3}  # billing's old ones; "other"'s are not touched
