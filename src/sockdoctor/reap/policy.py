"""The reaper's policy file (TOML): what to reap, how, how much per cycle.

    interval = "30s"                  # between cycles (default 30s)
    audit_log = "/var/log/sockdoctor/audit.jsonl"   # optional; --audit-log wins
    rate = "50/s"                     # optional: actions per second, all rules together

    [[rule]]
    name = "legacy-billing leaks"
    state = "close-wait"              # ss state names (a string or a list), default close-wait
    filter = "dport = :5432"          # optional: a full ss filter expression
    older_than = "10m"                # silent at least this long
    process = "billing*"              # and/or pid, netns, port, peer (CIDR); lists allowed
    methods = ["fin", "destroy"]      # the escalation ladder, tried in order
    max_per_cycle = 200               # the rest waits for the next cycle
    force = false                     # guards (listeners, own session) stay unless true

Everything is checked when the file is read: an unknown key, a bad age, a
rule that selects nothing is one sentence naming the file and the rule
(exit 2), and a reload (SIGHUP) with such a file keeps the policy in force.
The file itself is untrusted too (docs/reliability.md, "Input limits"): only
a regular file of at most 1 MiB is read, opened without blocking (a FIFO at
the path must not hang a reload), as UTF-8, nested no deeper than Python can
parse; a `netns` must name a namespace that exists (else exit 3, as
`--netns`).
"""

from __future__ import annotations

import os
import stat
import tomllib
from dataclasses import dataclass
from typing import Any

from ..errors import NotFoundError, SockdoctorError, UsageError
from ..query import Query, parse_duration
from ..remedy.policy import METHODS, KillPolicy, parse_rate, resolvable

DEFAULT_INTERVAL = "30s"
DEFAULT_MAX_PER_CYCLE = 200
PID_MAX_LIMIT = 1 << 22  # the kernel's PID_MAX_LIMIT: every pid is below it
MAX_POLICY_BYTES = 1 << 20
TOP_KEYS = {"interval", "audit_log", "rate", "rule"}
RULE_KEYS = {"name", "state", "filter", "older_than", "process", "pid", "netns", "port", "peer",
             "methods", "max_per_cycle", "force"}
SELECTORS = RULE_KEYS - {"name", "methods", "max_per_cycle", "force"}


class PolicyError(UsageError):
    """A policy file that cannot be used as it is (exit 2)."""


@dataclass(frozen=True)
class Rule:
    """One [[rule]]: a name, a kill policy, and its escalation ladder."""

    name: str
    kill: KillPolicy  # methods = the ladder; over_max="defer"
    ladder: tuple[str, ...]
    spec: str = ""  # what it selects, as the file says it

    def describe(self) -> str:
        return (f"{self.name}: {self.spec}; ladder {' > '.join(self.ladder)}; at most "
                f"{self.kill.max_count} per cycle" + ("; force" if self.kill.force else ""))

    def rung(self, method: str) -> int:
        return self.ladder.index(method) if method in self.ladder else len(self.ladder)


@dataclass(frozen=True)
class ReapPolicy:
    path: str
    interval_s: float
    rules: tuple[Rule, ...]
    audit_log: str | None = None
    rate: float = 0.0


def load(path: str) -> ReapPolicy:
    """Read and check a policy file; PolicyError (or NotFoundError) says what is wrong."""
    text = _read(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"{path} is not valid TOML: {exc}") from None
    except RecursionError:
        raise PolicyError(f"{path} nests arrays or tables deeper than a policy can "
                          "be") from None
    policy = parse(data, path)
    _check_namespaces(policy)
    return policy


def _read(path: str) -> str:
    """The text of a regular file, read without ever blocking (module doc)."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise PolicyError(f"{path} is not a regular file: a policy is a TOML file")
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())  # what was opened, not what was stat()ed
            if not stat.S_ISREG(st.st_mode):
                raise PolicyError(f"{path} is not a regular file: a policy is a TOML file")
            data = f.read(MAX_POLICY_BYTES + 1)
    except FileNotFoundError:
        raise NotFoundError(f"no policy file {path}") from None
    except OSError as exc:
        raise PolicyError(f"cannot read the policy file {path} ({exc.strerror})") from None
    if len(data) > MAX_POLICY_BYTES:
        raise PolicyError(f"{path} is larger than a policy may be (1 MiB)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PolicyError(f"{path} is not UTF-8 text (byte {exc.start} is "
                          f"0x{data[exc.start]:02x}); TOML files are UTF-8") from None


def _check_namespaces(policy: ReapPolicy) -> None:
    """A rule's netns must exist now: one that names nothing would never match, silently."""
    wanted = {r.kill.where.netns: r.name for r in policy.rules if r.kill.where is not None
              and r.kill.where.netns.strip() not in ("", "all", "host")}
    if not wanted:
        return
    from ..linux import netns
    from ..selectors import unknown_netns

    known, _ = netns.discover()
    for name, rule in wanted.items():
        if not _checked(f"{policy.path}: rule '{rule}'", "netns",
                        lambda name=name: netns.select(known, name)):
            text = str(unknown_netns(name, known)).removeprefix("--netns: ")
            raise NotFoundError(f"{policy.path}: rule '{rule}': netns: {text}")


def parse(data: dict[str, Any], path: str = "policy") -> ReapPolicy:
    """The policy a TOML document describes (already parsed into `data`)."""
    unknown = sorted(set(data) - TOP_KEYS)
    if unknown:
        raise PolicyError(f"{path}: unknown key '{unknown[0]}' (known: "
                          f"{', '.join(sorted(TOP_KEYS))})")
    rules = data.get("rule")
    if not isinstance(rules, list) or not rules:
        raise PolicyError(f"{path}: no [[rule]]: the policy would reap nothing")
    rate = _checked(path, "rate", lambda: parse_rate(_text(data.get("rate", ""), "rate")))
    built = tuple(_rule(path, i, r, rate) for i, r in enumerate(rules, 1))
    names = [r.name for r in built]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise PolicyError(f"{path}: two rules are named '{twice[0]}'; names must differ")
    interval = _checked(path, "interval", lambda: parse_duration(
        _text(data.get("interval", DEFAULT_INTERVAL), "interval")) / 1000)
    if interval < 0.1:
        raise PolicyError(f"{path}: interval must be at least 100ms")
    audit = data.get("audit_log")
    if audit is not None and not isinstance(audit, str):
        raise PolicyError(f"{path}: audit_log must be a file name")
    return ReapPolicy(path=path, interval_s=interval, rules=built, audit_log=audit, rate=rate)


def _rule(path: str, index: int, raw: Any, rate: float) -> Rule:
    if not isinstance(raw, dict):
        raise PolicyError(f"{path}: rule {index} is not a table ([[rule]])")
    name = raw.get("name", f"rule {index}")
    where = f"{path}: rule '{name}'" if "name" in raw else f"{path}: rule {index}"
    unknown = sorted(set(raw) - RULE_KEYS)
    if unknown:
        raise PolicyError(f"{where}: unknown key '{unknown[0]}' (known: "
                          f"{', '.join(sorted(RULE_KEYS))})")
    if not isinstance(name, str) or not name.strip():
        raise PolicyError(f"{where}: name must be a non-empty string")
    if not SELECTORS & set(raw):
        raise PolicyError(f"{where} selects nothing: give it a state, filter, older_than, "
                          "process, pid, netns, port or peer")
    query = _checked(where, "selection", lambda: _query(raw, where))
    ladder = _ladder(raw, where)
    older = _checked(where, "older_than", lambda: parse_duration(
        _text(raw["older_than"], "older_than"))) if "older_than" in raw else None
    if query.states == 0:
        raise PolicyError(f"{where} selects no state: its state and filter have none in common")
    limit = raw.get("max_per_cycle", DEFAULT_MAX_PER_CYCLE)
    force = raw.get("force", False)
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise PolicyError(f"{where}: max_per_cycle must be a whole number of at least 1")
    if not isinstance(force, bool):
        raise PolicyError(f"{where}: force is true or false")
    kill = KillPolicy(where=query, older_than_ms=older, methods=ladder,
                      force=force, max_count=limit, over_max="defer", rate=rate)
    spec = ", ".join(f"{key} {raw[key]}" for key in sorted(SELECTORS) if key in raw)
    return Rule(name=name, kill=kill, ladder=kill.order,
                spec=spec if query.names_states else f"close-wait, {spec}")


def _query(raw: dict[str, Any], where: str) -> Query:
    words = _text(raw.get("filter", ""), "filter").split()
    peers = _list(raw, "peer", str)
    if peers:
        cidr = " or ".join(f"dst {p}" for p in peers).split()
        words = ["(", *words, ")", "and", "(", *cidr, ")"] if words else ["(", *cidr, ")"]
    netns = _text(raw.get("netns", "all"), "netns")
    if not resolvable(netns):
        raise UsageError(f"netns '{netns}': name a namespace (all, host, a name from `ip "
                         "netns`, container:ID or its inode), not a PID or self")
    states = _list(raw, "state", str)
    if "state" in raw and not states:
        raise UsageError("state is empty: name at least one, like \"close-wait\"")
    pids = _list(raw, "pid", int)
    bad = [p for p in pids if not 0 < p < PID_MAX_LIMIT]
    if bad:
        raise UsageError(f"pid {bad[0]} is not a process id (a number from 1 to "
                         f"{PID_MAX_LIMIT - 1})")
    return Query.build(words, states=states, ports=_list(raw, "port", int), pids=pids,
                       process=_text(raw.get("process", ""), "process"), netns=netns)


def _ladder(raw: dict[str, Any], where: str) -> tuple[str, ...]:
    methods = raw.get("methods", ["auto"])
    methods = [methods] if isinstance(methods, str) else methods
    if not isinstance(methods, list) or not methods or not all(isinstance(m, str)
                                                                 for m in methods):
        raise PolicyError(f"{where}: methods is a list of method names, e.g. [\"fin\", "
                          "\"destroy\"]")
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise PolicyError(f"{where}: unknown method '{bad[0]}' (choose from "
                          f"{', '.join(METHODS)})")
    return tuple(methods)


def _list(raw: dict[str, Any], key: str, kind: type) -> list[Any]:
    value = raw.get(key, [])
    values = value if isinstance(value, list) else [value]
    if not all(isinstance(v, kind) and not isinstance(v, bool) for v in values):
        raise UsageError(f"{key} takes {'numbers' if kind is int else 'strings'}")
    return values


def _text(value: Any, key: str) -> str:
    if not isinstance(value, str):
        raise UsageError(f"{key} must be a string")
    return value


def _checked(where: str, what: str, build: Any) -> Any:
    """build(), its user error turned into one sentence that names the rule."""
    try:
        return build()
    except SockdoctorError as exc:
        text = str(exc).splitlines()[0]
        raise PolicyError(f"{where}: {text}") from None

