"""The kill plan and its results, as an operator reads them."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

from .plan import Plan, PlanItem
from .verify import Outcome

MAX_ROWS = 60


def _owner_text(item: PlanItem) -> str:
    if item.owners:
        return ",".join(f"{o.comm or '?'}({o.pid}) fd {o.fd}" for o in item.owners[:2]) + \
            (f" +{len(item.owners) - 2}" if len(item.owners) > 2 else "")
    if item.listener is not None:
        return f"queue of {item.listener.comm or '?'}({item.listener.pid})"
    return "-"


def _table(rows: list[list[str]], header: list[str]) -> Iterator[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(header)]
    for row in [header, *rows]:
        yield "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip()


def render_plan(plan: Plan) -> Iterator[str]:
    actions = plan.actions
    skipped = [i for i in plan.items if not i.method]
    counts = plan.count_by_method()
    by = ", ".join(f"{n} by {m}" for m, n in sorted(counts.items()))
    namespaces = {i.netns_name for i in plan.items if i.socket is not None}
    where = f" in network namespace {next(iter(namespaces))}" if len(namespaces) == 1 else ""
    yield (f"Plan: {len(actions)} of {len(plan.items)} selected sockets would be ended"
           + (f" ({by})" if by else "") + where + ".")
    for note in plan.notes:
        yield f"  note: {note}"
    if not plan.items:
        return
    yield ""
    # One namespace (the usual case) is named above instead of on every row.
    netns = [[i.netns_name or "-"] if len(namespaces) > 1 else [] for i in plan.items]
    rows = [[str(i.index), i.label, *ns, _owner_text(i), i.method or "-", i.why]
            for i, ns in zip(plan.items[:MAX_ROWS], netns, strict=False)]
    header = ["#", "SOCKET", *(["NETNS"] if len(namespaces) > 1 else []), "OWNER", "METHOD",
              "WHY"]
    yield from _table(rows, header)
    if len(plan.items) > MAX_ROWS:
        yield f"... and {len(plan.items) - MAX_ROWS} more (use --json for the full plan)"
    if counts:
        yield ""
        yield "What each side will see:"
        effects = Counter((i.method, i.program_sees, i.peer_sees) for i in actions)
        variants = Counter(method for method, _, _ in effects)  # by state, for some methods
        for (method, program, peer), n in sorted(effects.items()):
            label = method if variants[method] == 1 else f"{method} ({n})"
            yield f"  {label}: the program: {program}"
            yield f"  {' ' * len(label)}  the peer: {peer}"
    if skipped:
        reasons = Counter(i.why for i in skipped)
        yield ""
        yield f"Left alone: {len(skipped)}"
        for reason, n in reasons.most_common():
            yield f"  {n} x {reason}"


def render_outcomes(outcomes: list[Outcome]) -> Iterator[str]:
    counts = Counter(o.outcome for o in outcomes)
    ok = sum(n for name, n in counts.items() if name in ("closed", "closing", "already-gone"))
    yield (f"Result: {ok} of {len(outcomes)} gone"
           + (" (" + ", ".join(f"{n} {name}" for name, n in counts.most_common()) + ")"
              if outcomes else "") + ".")
    interesting = [o for o in outcomes if o.outcome != "closed"][:MAX_ROWS]
    if not interesting:
        return
    yield ""
    rows = [[str(o.index), o.label, o.method or "-", o.outcome,
             o.state_after or o.detail] for o in interesting]
    yield from _table(rows, ["#", "SOCKET", "METHOD", "OUTCOME", "DETAIL"])
