"""Evidence from the running host for the doctor: one scan, or two samples some time apart."""

from __future__ import annotations

import time
from collections.abc import Callable

from ..inventory import Progress, ScanOptions, scan
from ..model import Snapshot


def sample(netns: str = "all", interval_s: float | None = None, *,
           progress: Progress | None = None,
           wait: Callable[[float], None] = time.sleep) -> tuple[Snapshot, Snapshot | None]:
    """Scan what the doctor needs; with `interval_s`, two samples that far apart.

    Returns (current, previous); previous is None for a single scan. Every
    socket of the selected namespaces is collected, with owners, ages and the
    evidence (sysctls, counters, threads, dead descriptors): a filter is
    applied later by diagnose(query=...), which keeps listeners as context.
    The two samples are the sampler's (watch/sampler.py): one scan each, the
    second reading only what changed in /proc. `wait` sleeps between them
    (the CLI passes one that shows a countdown); an exception it raises
    (Ctrl-C) ends the sampling.
    """
    if not interval_s:
        return scan(None, ScanOptions(age=True), evidence=True, netns=netns,
                    progress=progress), None
    from ..watch.sampler import Sampler  # the watch floor: only for two samples

    sampler = Sampler(netns=netns, interval=interval_s, doctor=False, evidence=True)
    sampler.scanner.progress = progress
    first = sampler.sample().snapshot
    wait(interval_s)
    second = sampler.sample().snapshot
    assert first is not None and second is not None  # sample() raises instead
    return second, first
