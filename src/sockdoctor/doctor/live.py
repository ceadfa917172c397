"""Evidence from the running host for the doctor: one sample, or two some time apart."""

from __future__ import annotations

import time
from collections.abc import Callable

from ..inventory import Progress, scan
from ..model import Snapshot


def sample(netns: str = "all", interval_s: float | None = None, *,
           progress: Progress | None = None,
           wait: Callable[[float], None] = time.sleep) -> tuple[Snapshot, Snapshot | None]:
    """Scan what the doctor needs; with `interval_s`, twice, that far apart.

    Returns (current, previous); previous is None for a single sample. Every
    socket of the selected namespaces is collected, with owners, ages and the
    evidence (sysctls, counters, threads, dead descriptors): a filter is
    applied later by diagnose(query=...), which keeps listeners as context.
    `wait` sleeps between the samples (the CLI passes one that shows a
    countdown); an exception it raises (Ctrl-C) ends the sampling.
    """
    first = _scan(netns, progress)
    if not interval_s:
        return first, None
    wait(interval_s)
    return _scan(netns, progress), first


def _scan(netns: str, progress: Progress | None) -> Snapshot:
    return scan(owners=True, age=True, evidence=True, netns=netns, progress=progress)
