"""The reaper's metrics, for Prometheus: what it did, by rule, method and outcome.

A prometheus_client collector over the reaper's counts, served by the
exporter's server (sockdoctor.web) and textfile writer (watch/exporter.py)
so that there is one way to serve sockdoctor's metrics:

    sockdoctor_reaped_total{rule,method,outcome}   sockets the reaper ended or tried to, by
                                                   verified outcome; one something else
                                                   ended first (already-gone) is not counted
    sockdoctor_reap_cycles_total{mode}             cycles run (mode: apply, dry-run)
    sockdoctor_reap_given_up{rule}                 sockets the ladder could not end, left alone
    sockdoctor_reap_last_cycle_timestamp_seconds   when the last cycle ran

Every rule's ladder shows outcome="closed" from the start (at 0), so a rate()
over the counter works before the first socket is reaped.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from ..jsontext import untrusted

if TYPE_CHECKING:
    from .reaper import Reaper

TEXTFILE_NAME = "sockdoctor_reap.prom"


class ReapCollector:
    def __init__(self, reaper: Reaper) -> None:
        self.reaper = reaper
        self.last_cycle = 0.0

    def collect(self) -> Iterator[Metric]:
        reaper = self.reaper
        reaped = CounterMetricFamily(
            "sockdoctor_reaped", "Sockets the reaper acted on, by rule, method and the "
            "outcome verified afterwards (not those another hand ended first).",
            labels=["rule", "method", "outcome"])
        counts = dict(reaper.totals)
        for rule in reaper.policy.rules:
            for method in rule.ladder:
                counts.setdefault((rule.name, method, "closed"), 0)
        for (rule_name, method, outcome), n in sorted(counts.items()):
            reaped.add_metric([untrusted(rule_name), method, outcome], n)
        yield reaped
        cycles = CounterMetricFamily("sockdoctor_reap_cycles", "Reap cycles run.",
                                     labels=["mode"])
        cycles.add_metric(["apply" if reaper.apply else "dry-run"], reaper.cycles)
        yield cycles
        given_up = GaugeMetricFamily(
            "sockdoctor_reap_given_up", "Sockets still there that the rule's ladder could "
            "not end (or a guard refused): reported once, left alone.", labels=["rule"])
        for rule in reaper.policy.rules:
            given_up.add_metric([untrusted(rule.name)], len(reaper.memory[rule.name].done_with))
        yield given_up
        last = GaugeMetricFamily("sockdoctor_reap_last_cycle_timestamp_seconds",
                                 "When the last reap cycle ran (Unix time).")
        last.add_metric([], self.last_cycle)
        yield last

    def describe(self) -> list[Metric]:
        return []


def registries(collector: ReapCollector) -> tuple[CollectorRegistry, CollectorRegistry]:
    """(for HTTP: the reaper's families and process_*, for a textfile: the families only)."""
    served = CollectorRegistry(auto_describe=False)
    served.register(collector)
    ProcessCollector(registry=served)
    textfile = CollectorRegistry(auto_describe=False)
    textfile.register(collector)
    return served, textfile
