"""`sockdoctor reap`: policy-driven, audited relief while the code fix is on its way.

    policy = load("reap.toml")                 # ReapPolicy: rules, interval (policy.py)
    reaper = Reaper(policy, apply=False, host=host_facts(), audit_log=None)
    cycle = reaper.cycle(sampler.sample())     # one cycle (reaper.py): a plan per rule

The reaper consumes the sampler (sockdoctor.watch) and acts through the kill
core (sockdoctor.remedy); see docs/reap.md.
"""

from __future__ import annotations

from .policy import PolicyError, ReapPolicy, Rule, load, parse
from .reaper import Cycle, Reaper, RuleResult

__all__ = ["Cycle", "PolicyError", "ReapPolicy", "Reaper", "Rule", "RuleResult", "load",
           "parse"]
