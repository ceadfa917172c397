"""Helpers the rules share: age statistics and the stuck-socket severity ladder."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ...model import KEEPALIVE_TIMER, Socket
from ..context import Context, keepalive_probed
from ..finding import Severity, ladder
from ..text import fmt_ms, plural


@dataclass
class AgeStats:
    """How long a group of sockets has been sitting where it is."""

    count: int = 0
    known: int = 0  # sockets with any age bound (tcp_info or seen in the last sample)
    stuck: int = 0  # at least `threshold` old
    very_old: int = 0  # at least cfg.long_stuck_ms old
    oldest: int | None = None
    persisted: int = 0  # already there, in the same state, in the previous sample
    probed: int = 0  # aged by last-data-received: keepalive probes reset the last ACK
    threshold: int = 0

    def line(self, what: str) -> str:
        """'40 CLOSE-WAIT sockets, 38 silent for >=10s, oldest 3h12m'."""
        head = plural(self.count, what)
        if not self.known:
            return f"{head} (ages not collected)"
        tail = f", oldest {fmt_ms(self.oldest)}" if self.oldest is not None else ""
        if self.probed:
            tail += (f" ({self.probed} under keepalive probes, which reset the last ACK: "
                     "aged by the last data received, an upper bound)")
        return f"{head}, {self.stuck} silent for >= {fmt_ms(self.threshold)}{tail}"


def age_stats(ctx: Context, socks: Iterable[Socket], threshold: int) -> AgeStats:
    st = AgeStats(threshold=threshold)
    long_ms = ctx.cfg.long_stuck_ms
    with_prev = ctx.prev is not None
    for sk in socks:
        st.count += 1
        persisted = with_prev and ctx.persisted(sk)
        st.persisted += persisted
        if sk.timer == KEEPALIVE_TIMER:
            st.probed += keepalive_probed(sk)
        age = ctx.age_given(sk, persisted)
        if age is None:
            continue
        st.known += 1
        if age >= threshold:
            st.stuck += 1
        if age >= long_ms:
            st.very_old += 1
        if st.oldest is None or age > st.oldest:
            st.oldest = age
    return st


def stuck_severity(ctx: Context, st: AgeStats, growth: int | None) -> Severity | None:
    """The ladder for sockets that should not stay where they are (CLOSE-WAIT and kin)."""
    cfg = ctx.cfg
    if not st.known:
        return ladder(st.count, cfg.unknown_age_critical, cfg.unknown_age_warn,
                      cfg.unknown_age_info)
    growing = growth is not None and growth >= cfg.growth_critical
    if st.stuck >= cfg.critical_stuck or (growing and st.stuck >= cfg.growth_critical):
        return "critical"
    if st.stuck >= cfg.warn_stuck or st.very_old:
        return "warning"
    return "info" if st.stuck else None


def growth_line(ctx: Context, now: int, before: int | None, persisted: int) -> str | None:
    if before is None or ctx.interval_ms is None:
        return None
    delta = now - before
    sign = "+" if delta >= 0 else ""
    return (f"{sign}{delta} since the previous sample {fmt_ms(ctx.interval_ms)} ago "
            f"({persisted} of them were already there)")


def recv_q_counts(socks: Iterable[Socket]) -> tuple[int, int, int]:
    """(Recv-Q 0, Recv-Q 1, Recv-Q > 1) for CLOSE-WAIT sockets."""
    zero = one = more = 0
    for sk in socks:
        if sk.recv_q == 0:
            zero += 1
        elif sk.recv_q == 1:
            one += 1
        else:
            more += 1
    return zero, one, more
