"""Watching: a sampler that scans on an interval, and what consumes its samples.

    from sockdoctor.watch import Sampler
    sampler = Sampler(netns="all", interval=15)
    sample = sampler.sample()          # one now; incremental after the first
    sampler.run(stop_event, on_sample)  # the loop the exporter, top and reap use

See docs/exporter.md ("The sampler") for the contract.
"""

from __future__ import annotations

from .sampler import Sample, Sampler, tune_gc

__all__ = ["Sample", "Sampler", "tune_gc"]
