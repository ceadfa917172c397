"""diagnose(snapshot, previous=None) -> Report: run every rule, sort, summarise."""

from __future__ import annotations

from collections import Counter

from ..model import Snapshot, TcpState
from ..query import Query
from .config import DEFAULT, DoctorConfig
from .context import Context
from .finding import Finding, Report, SnapshotMeta, Summary, sort_key
from .rules import PIPELINE
from .scope import select


def diagnose(snapshot: Snapshot, previous: Snapshot | None = None, *,
             config: DoctorConfig | None = None, query: Query | None = None) -> Report:
    """Name the causes of stuck sockets in `snapshot`.

    `previous`, an earlier snapshot of the same host (e.g. taken `--interval`
    seconds before), adds trends: growth of CLOSE-WAIT per group, sockets seen
    in both samples (a lower bound of their age), counter deltas.
    `query` (what `doctor FILTER --netns NS` selects) narrows the sockets
    judged; the listeners of their namespaces stay as context (doctor/scope.py).
    """
    scope, ages = None, False
    if query is not None:
        ages = any(sk.age_ms is not None for sk in snapshot.sockets)
        snapshot, scope = select(snapshot, query)
        if previous is not None:
            previous, _ = select(previous, query, strict=False)
    ctx = Context.build(snapshot, previous, config or DEFAULT)
    ctx.ages_known = ctx.ages_known or ages  # the filter may have left none with an age
    findings: list[Finding] = []
    for rule in PIPELINE:
        findings.extend(rule(ctx))
        ctx.findings = findings
    if scope is not None:
        findings = [f for f in findings if scope.covers(f)]
    findings.sort(key=sort_key)
    return Report(findings=causes_first(findings), summary=_summary(ctx, findings),
                  snapshot=_meta(ctx), limits=_limits(ctx), notes=ctx.notes)


# A finding about the other end of a connection, and the rules that name its cause.
CONSEQUENCES = {"fin-wait-2-pileup": ("never-closed", "client-pool-dead-connections")}


def causes_first(findings: list[Finding]) -> list[Finding]:
    """Move each cause just before its consequence, whatever their severities.

    A FIN-WAIT-2 pile-up whose other end is in the snapshot exists because
    that end's program never closes: its never-closed finding is the one to
    read first, and its relief (covering every worker) relieves both.
    """
    holders: dict[tuple[str, int, int], Finding] = {}
    for f in findings:
        for p in f.processes:
            holders.setdefault((f.rule, f.netns_inode, p.pid), f)
    cause_of: dict[int, Finding] = {}
    for consequence in findings:
        peer = consequence.evidence.get("peer_pid")
        ns = consequence.evidence.get("peer_netns_inode")
        if not isinstance(peer, int) or not isinstance(ns, int):
            continue
        cause = next((holders[key] for rule in CONSEQUENCES.get(consequence.rule, ())
                      if (key := (rule, ns, peer)) in holders), None)
        if cause is not None:
            cause_of[id(consequence)] = cause
            if cause.relief:
                consequence.relief, consequence.relief_argv = cause.relief, list(cause.relief_argv)
    out: list[Finding] = []
    placed: set[int] = set()
    for f in findings:
        for item in (cause_of.get(id(f)), f):
            if item is not None and id(item) not in placed:
                out.append(item)
                placed.add(id(item))
    return out


def _summary(ctx: Context, findings: list[Finding]) -> Summary:
    sev = Counter(f.severity for f in findings)
    states: Counter = Counter()
    for st, socks in ctx.by_state.items():
        states[TcpState(st).ss_name] += len(socks)
    return Summary(critical=sev["critical"], warning=sev["warning"], info=sev["info"],
                   sockets=len(ctx.snap.sockets), states=dict(states.most_common()))


def _meta(ctx: Context) -> SnapshotMeta:
    snap = ctx.snap
    return SnapshotMeta(
        hostname=snap.hostname, kernel=snap.kernel, created=snap.created,
        previous_created=ctx.prev.created if ctx.prev else None,
        interval_s=ctx.interval_ms / 1000 if ctx.interval_ms else None,
        sockets=len(snap.sockets), processes=len(snap.processes),
        namespaces=[ns.name for ns in snap.namespaces], owners_scanned=snap.owners_scanned,
        ages_known=ctx.ages_known, threads_known=ctx.threads_known,
        warnings=list(snap.warnings))


def _limits(ctx: Context) -> list[str]:
    """What this snapshot could not tell, so a clean report is read for what it is."""
    snap = ctx.snap
    out = []
    if not snap.owners_scanned:
        out.append("owners were not collected: sockets cannot be tied to processes, "
                   "fd-pressure and dead-socket-fds were not checked")
    if not ctx.ages_known:
        out.append("socket ages were not collected: CLOSE-WAIT rules fell back to counts, "
                   "no-keepalive was not checked")
    if snap.owners_scanned and snap.processes and not ctx.threads_known:
        out.append("thread states were not collected: what a listener's owner is blocked "
                   "in is unknown")
    if not any(ns.sysctls for ns in snap.namespaces):
        out.append("sysctls and counters were not collected: sysctl-audit and port-range "
                   "checks used kernel defaults")
    if not ctx.listeners:
        out.append("no LISTEN sockets in the snapshot: accept queues were not checked and "
                   "server/client sides were guessed from port ranges")
    if ctx.prev is None:
        out.append("one sample only: no growth or counter trends (use --interval)")
    for ns in snap.namespaces:
        if ns.error:
            out.append(f"network namespace {ns.name} was not scanned: {ns.error}")
    return out
