"""What the doctor hands back: findings and the report that holds them.

Plain msgspec Structs, so a report is JSON with a schema
(`msgspec.json.schema(Report)`, documented in docs/doctor.md) and decodes
back into the same objects.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from ..errors import EXIT_FINDINGS, EXIT_OK

REPORT_SCHEMA = "sockdoctor.report/1"

Severity = Literal["info", "warning", "critical"]
SEVERITY_RANK: dict[str, int] = {"info": 0, "warning": 1, "critical": 2}
EXIT_CRITICAL = 2

# Rule ids, in the order findings of equal severity are listed: causes first.
RULES: tuple[str, ...] = (
    "never-closed",
    "accept-queue-not-drained",
    "client-pool-dead-connections",
    "backlog-or-slow-handler",
    "no-keepalive",
    "fin-wait-2-pileup",
    "fin-wait-1-pileup",
    "last-ack-stuck",
    "time-wait-port-pressure",
    "fd-pressure",
    "dead-socket-fds",
    "sysctl-audit",
)

Scalar = int | float | str
Evidence = int | float | str | bool | None | list[Scalar] | dict[str, Scalar]


def worse(a: Severity | None, b: Severity | None) -> Severity | None:
    """The more severe of two (None means "no finding")."""
    if a is None:
        return b
    if b is None:
        return a
    return a if SEVERITY_RANK[a] >= SEVERITY_RANK[b] else b


def ladder(value: float, critical: float, warning: float, info: float) -> Severity | None:
    """The severity whose threshold `value` reaches, the highest first; None below `info`."""
    if value >= critical:
        return "critical"
    if value >= warning:
        return "warning"
    return "info" if value >= info else None


def cap(sev: Severity | None, ceiling: Severity) -> Severity | None:
    if sev is None or SEVERITY_RANK[sev] <= SEVERITY_RANK[ceiling]:
        return sev
    return ceiling


class ProcessRef(msgspec.Struct, frozen=True, kw_only=True):
    """A process named in a finding."""

    pid: int
    comm: str = ""
    user: str = ""
    state: str = ""  # R, S, D, T, Z ... as in /proc/PID/stat
    cmdline: str = ""

    @property
    def label(self) -> str:
        return f"{self.comm} (pid {self.pid})" if self.comm else f"pid {self.pid}"


class Finding(msgspec.Struct, kw_only=True):
    """One diagnosed problem: what, where, the evidence, why, and the fix."""

    rule: str
    severity: Severity
    title: str
    netns: str = ""
    netns_inode: int = 0
    processes: list[ProcessRef] = msgspec.field(default_factory=list)
    ports: list[int] = msgspec.field(default_factory=list)
    peers: list[str] = msgspec.field(default_factory=list)
    sockets: int = 0
    evidence: dict[str, Evidence] = msgspec.field(default_factory=dict)
    evidence_lines: list[str] = msgspec.field(default_factory=list)
    explanation: str = ""
    fix: str = ""
    relief: str = ""
    relief_argv: list[str] = msgspec.field(default_factory=list)

    @property
    def rank(self) -> int:
        return SEVERITY_RANK[self.severity]


def sort_key(f: Finding) -> tuple[int, int, int, str, str]:
    """Most severe first; then causes before consequences; then the biggest."""
    order = RULES.index(f.rule) if f.rule in RULES else len(RULES)
    return (-f.rank, order, -f.sockets, f.netns, f.title)


class Summary(msgspec.Struct, kw_only=True):
    critical: int = 0
    warning: int = 0
    info: int = 0
    sockets: int = 0
    states: dict[str, int] = msgspec.field(default_factory=dict)


class SnapshotMeta(msgspec.Struct, kw_only=True):
    """Where the evidence came from."""

    hostname: str
    kernel: str
    created: float
    previous_created: float | None = None
    interval_s: float | None = None
    sockets: int = 0
    processes: int = 0
    namespaces: list[str] = msgspec.field(default_factory=list)
    owners_scanned: bool = False
    ages_known: bool = False
    threads_known: bool = False
    warnings: list[str] = msgspec.field(default_factory=list)


class Report(msgspec.Struct, kw_only=True):
    schema: str = REPORT_SCHEMA
    findings: list[Finding]
    summary: Summary
    snapshot: SnapshotMeta
    limits: list[str] = msgspec.field(default_factory=list)
    # Seen but not (yet) a finding, e.g. CLOSE-WAIT younger than --stuck-after.
    notes: list[str] = msgspec.field(default_factory=list)

    @property
    def worst(self) -> Severity | None:
        sev: Severity | None = None
        for f in self.findings:
            sev = worse(sev, f.severity)
        return sev

    @property
    def exit_code(self) -> int:
        """0 healthy (info at most), 1 warnings, 2 critical: for cron and monitoring."""
        worst = self.worst
        if worst == "critical":
            return EXIT_CRITICAL
        if worst == "warning":
            return EXIT_FINDINGS
        return EXIT_OK

    @property
    def healthy(self) -> bool:
        return self.exit_code == EXIT_OK
