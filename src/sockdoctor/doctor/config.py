"""Thresholds of the doctor's rules, in one place, with the reason for each.

The defaults aim at "no false alarms on a healthy host": a socket only counts
as stuck when it has been in its state far longer than any healthy program
needs, and a warning needs several stuck sockets (or one very old one).
Labs and tests may pass tighter values; docs/doctor.md explains each one.
"""

from __future__ import annotations

import msgspec


class DoctorConfig(msgspec.Struct, frozen=True, kw_only=True):
    # --- CLOSE_WAIT (never-closed, client-pool-dead-connections) ---
    # A healthy program closes within milliseconds of reading EOF; 10 s of
    # silence from the peer after its FIN is already far beyond that.
    stuck_age_ms: int = 10_000
    # One socket stuck this long is a leak on its own.
    long_stuck_ms: int = 300_000
    warn_stuck: int = 3
    critical_stuck: int = 100
    # Growth between two samples that turns a warning into critical.
    growth_critical: int = 10
    # Without any age (tcp_info not collected, one sample) only big counts mean much.
    unknown_age_info: int = 10
    unknown_age_warn: int = 50
    unknown_age_critical: int = 500

    # --- listeners (accept-queue-not-drained, backlog-or-slow-handler) ---
    # A queued connection older than this was not accepted for a long time.
    queue_stale_ms: int = 5_000
    # Queue wait that users already feel.
    queue_wait_ms: int = 1_000
    queue_near_ratio: float = 0.8
    queue_min: int = 4  # a "near full" queue shorter than this is noise
    queue_full_warn: int = 16  # a full queue of unknown age warns from this length
    queue_closewait_unknown_age: int = 5
    queue_critical: int = 50
    # An idle owner with a queue this old has stopped accepting: an outage.
    queue_dead_ms: int = 60_000
    overflow_warn: int = 10
    overflow_critical: int = 1_000
    churn_min: int = 20

    # --- no-keepalive ---
    idle_ms: int = 1_800_000  # 30 min without a word from the peer
    idle_warn_ms: int = 7_200_000
    idle_warn_count: int = 20

    # --- FIN_WAIT2 / FIN_WAIT1 / LAST_ACK ---
    half_closed_stuck_ms: int = 60_000
    fw2_orphan_info: int = 50
    fw2_orphan_warn: int = 500
    pair_warn: int = 3
    closing_min_retrans: int = 2  # two unanswered RTOs: the peer is not answering
    closing_info: int = 3
    closing_warn: int = 20
    closing_critical: int = 1_000
    orphan_warn_ratio: float = 0.5
    orphan_critical_ratio: float = 0.9

    # --- time-wait-port-pressure ---
    port_info_ratio: float = 0.3
    port_warn_ratio: float = 0.6
    port_critical_ratio: float = 0.9
    tw_bucket_ratio: float = 0.9

    # --- fd-pressure, dead-socket-fds ---
    fd_warn_ratio: float = 0.8
    fd_critical_ratio: float = 0.95
    fd_min: int = 50
    dead_fd_warn: int = 5
    dead_fd_persisted_warn: int = 3
    dead_fd_critical: int = 100

    def with_stuck_after(self, ms: int) -> DoctorConfig:
        """`doctor --stuck-after`: a socket is stuck after `ms` in its state.

        The other durations that judge stuck sockets keep their proportion to
        it (by default: one socket 30x older warns alone, a queued connection
        is stale after half of it, ...), so the rules keep their shape at any
        scale; counts, ratios and the idle thresholds do not change.
        """
        return _scaled(self, "stuck_age_ms", ms, _STUCK_FAMILY)

    def with_idle_after(self, ms: int) -> DoctorConfig:
        """`doctor --idle-after`: no-keepalive looks at peers silent for `ms`."""
        return _scaled(self, "idle_ms", ms, ("idle_warn_ms",))


# Durations measured against stuck_age_ms by with_stuck_after().
_STUCK_FAMILY = ("long_stuck_ms", "queue_stale_ms", "queue_wait_ms", "queue_dead_ms",
                 "half_closed_stuck_ms")


def _scaled(cfg: DoctorConfig, name: str, ms: int, family: tuple[str, ...]) -> DoctorConfig:
    if ms <= 0:
        raise ValueError(f"{name} must be positive, not {ms}")
    factor = ms / getattr(cfg, name)
    changes = {other: max(1, round(getattr(cfg, other) * factor)) for other in family}
    return msgspec.structs.replace(cfg, **{name: ms}, **changes)


DEFAULT = DoctorConfig()


def config_for(stuck_after: str | None = None, idle_after: str | None = None, *,
               base: DoctorConfig = DEFAULT) -> DoctorConfig:
    """The configuration of `doctor --stuck-after AGE --idle-after AGE` (AGE: 500ms, 10s, 2m).

    A malformed or zero duration is a UsageError naming the option.
    """
    cfg = base
    if stuck_after is not None:
        cfg = cfg.with_stuck_after(_positive_ms("--stuck-after", stuck_after))
    if idle_after is not None:
        cfg = cfg.with_idle_after(_positive_ms("--idle-after", idle_after))
    return cfg


def _positive_ms(option: str, text: str) -> int:
    from ..errors import UsageError
    from ..query import parse_duration

    try:
        ms = parse_duration(text)
    except UsageError as exc:
        raise UsageError(f"{option}: {exc}") from None
    if ms <= 0:
        raise UsageError(f"{option} must be longer than 0 (e.g. 10s)")
    return ms
