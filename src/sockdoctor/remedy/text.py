"""The kill plan and its results, as an operator reads them.

Process and namespace names come from other users' programs: they are
printed through fmt.untrusted(), so a name cannot split a row or send
escape sequences to the terminal.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

from ..words import untrusted
from .apply import KillReport
from .keepalive import KeepalivePlan
from .plan import Plan
from .steps import OwnerRef, PlanItem
from .verify import SUCCESS, Outcome

MAX_ROWS = 60


def _who(owner: OwnerRef) -> str:
    return f"{untrusted(owner.comm) or '?'}({owner.pid})"


def _owner_text(item: PlanItem) -> str:
    if item.owners:
        return ",".join(f"{_who(o)} fd {o.fd}" for o in item.owners[:2]) + \
            (f" +{len(item.owners) - 2}" if len(item.owners) > 2 else "")
    if item.listener is not None:
        return f"queue of {_who(item.listener)}"
    return "-"


def _table(rows: list[list[str]], header: list[str]) -> Iterator[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(header)]
    for row in [header, *rows]:
        yield "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip()


MAX_NAMESPACES = 12  # named in a plan's header; the rows have a NETNS column


def scope_text(plan: Plan | KeepalivePlan) -> str:
    """Where a plan acts, every namespace named: more than one must be visible before --yes."""
    names = sorted({untrusted(i.netns_name) for i in plan.items if i.method})
    if not names:
        names = sorted({untrusted(i.netns_name) for i in plan.items})
    if not names:
        return ""
    if len(names) == 1:
        return f" in network namespace {names[0]}"
    shown = ", ".join(names[:MAX_NAMESPACES])
    more = len(names) - MAX_NAMESPACES
    return f" in {len(names)} network namespaces: {shown}" + (
        f" and {more} more (see the NETNS column)" if more > 0 else "")


def plan_header(plan: Plan, applying: bool) -> str:
    counts = plan.count_by_method()
    by = ", ".join(f"{n} by {m}" for m, n in sorted(counts.items()))
    where = scope_text(plan)
    if not plan.items:
        return "Plan: nothing is selected, nothing to do."
    verb = "will be ended" if applying else "would be ended"
    return (f"Plan: {len(plan.actions)} of {len(plan.items)} selected sockets {verb}"
            + (f" ({by})" if by else "") + where + ".")


def render_plan(plan: Plan, applying: bool = False) -> Iterator[str]:
    """The plan: header, one row per socket, what each side will see, what is left alone."""
    yield plan_header(plan, applying)
    yield from _body(plan)


def render_keepalive_plan(plan: KeepalivePlan, applying: bool = False) -> Iterator[str]:
    """The keepalive plan, laid out like a kill plan."""
    where = scope_text(plan)
    verb = "will be armed" if applying else "would be armed"
    yield (f"Plan: keepalive ({plan.settings.text()}) on {len(plan.actions)} of "
           f"{len(plan.items)} selected sockets: {verb}{where}." if plan.items else
           "Plan: nothing is selected, nothing to do.")
    if plan.actions:
        yield (f"  a vanished peer is noticed at most {plan.settings.dead_after_s}s after it "
               "last spoke; the kernel then resets the connection")
    yield from _body(plan)


def _body(plan: Plan | KeepalivePlan) -> Iterator[str]:
    for note in plan.notes:
        yield f"  note: {note}"
    if not plan.items:
        return
    yield ""
    many = len({i.netns_name for i in plan.items}) > 1  # else named once, in the header
    rows = [[str(i.index), i.label, *([untrusted(i.netns_name) or "-"] if many else []),
             _owner_text(i), i.method or "-", i.why] for i in plan.items[:MAX_ROWS]]
    header = ["#", "SOCKET", *(["NETNS"] if many else []), "OWNER", "METHOD", "WHY"]
    yield from _table(rows, header)
    if len(plan.items) > MAX_ROWS:
        yield f"... and {len(plan.items) - MAX_ROWS} more (use --json for the full plan)"
    yield from _effects(plan)
    skipped = [i for i in plan.items if not i.method]
    if skipped:
        yield ""
        yield f"Left alone: {len(skipped)}"
        for reason, n in Counter(i.why for i in skipped).most_common():
            yield f"  {n} x {reason}"


def _effects(plan: Plan) -> Iterator[str]:
    effects = Counter((i.method, i.program_sees, i.peer_sees) for i in plan.actions)
    if not effects:
        return
    yield ""
    yield "What each side will see:"
    variants = Counter(method for method, _, _ in effects)  # by state, for some methods
    for (method, program, peer), n in sorted(effects.items()):
        label = method if variants[method] == 1 else f"{method} ({n})"
        yield f"  {label}: the program: {program}"
        yield f"  {' ' * len(label)}  the peer: {peer}"


def render_outcomes(outcomes: list[Outcome], success: frozenset[str] = SUCCESS,
                    done: str = "gone") -> Iterator[str]:
    """The result line, then every socket that did not plainly close (or get armed)."""
    counts = Counter(o.outcome for o in outcomes)
    ok = sum(n for name, n in counts.items() if name in success)
    plain = "armed" if "armed" in success else "closed"
    yield (f"Result: {ok} of {len(outcomes)} {done}"
           + (" (" + ", ".join(f"{n} {name}" for name, n in counts.most_common()) + ")"
              if outcomes else "") + ".")
    interesting = [o for o in outcomes if o.outcome != plain][:MAX_ROWS]
    if not interesting:
        return
    yield ""
    rows = [[str(o.index), o.label, o.method or "-", o.outcome,
             o.state_after or o.detail] for o in interesting]
    yield from _table(rows, ["#", "SOCKET", "METHOD", "OUTCOME", "DETAIL"])


def render_report(report: KillReport) -> Iterator[str]:
    """What an applied plan did; an interrupted one starts by saying so."""
    if report.interrupted:
        c = report.counts()
        yield (f"Interrupted: {c['ended']} ended, {c['left']} left, {c['not_tried']} not "
               "tried (written to the audit log).")
    if report.audit_error:
        ended = report.ended_here
        yield (f"Stopped: {report.audit_error}; no further action was taken. "
               f"{ended} socket{'' if ended == 1 else 's'} had been ended by this run"
               + (f"; each has its intent line in {report.audit_path}." if ended else "."))
    yield from render_outcomes(report.outcomes)
