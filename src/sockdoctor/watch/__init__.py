"""Watching: a sampler that scans on an interval, and what consumes its samples.

    from sockdoctor.watch import Sampler
    sampler = Sampler(netns="all", interval=15)
    sample = sampler.sample()          # one now; incremental after the first
    sampler.run(stop_event, on_sample)  # the loop the exporter, top and reap use

    from sockdoctor.watch import ExporterSettings, serve_exporter
    serve_exporter(settings=ExporterSettings(listen=("127.0.0.1:19808",)))  # a daemon

See docs/exporter.md ("The sampler", "From Python") for the contract.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .sampler import Sample, Sampler, tune_gc

if TYPE_CHECKING:
    from .exporter import ExporterSettings, build_exporter, serve_exporter

__all__ = ["ExporterSettings", "Sample", "Sampler", "build_exporter", "serve_exporter",
           "tune_gc"]


def __getattr__(name: str) -> Any:
    """The exporter on first use: it imports prometheus_client, which top and reap skip."""
    if name in ("ExporterSettings", "build_exporter", "serve_exporter"):
        from . import exporter

        return getattr(exporter, name)
    raise AttributeError(f"module 'sockdoctor.watch' has no attribute {name!r}")
