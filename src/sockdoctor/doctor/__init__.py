"""The doctor: rules over a Snapshot that name the cause of stuck sockets.

    from sockdoctor.doctor import diagnose, render_text
    report = diagnose(snapshot, previous=None)
    print(render_text(report)); raise SystemExit(report.exit_code)

Pure Python over model objects: no I/O, no root. docs/doctor.md lists the
rules, their thresholds and the JSON schema of a report.
"""

from __future__ import annotations

from .config import DoctorConfig, config_for
from .engine import diagnose
from .finding import RULES, Finding, ProcessRef, Report, SnapshotMeta, Summary
from .report import from_json, json_schema, render_text, to_json

__all__ = [
    "RULES",
    "DoctorConfig",
    "Finding",
    "ProcessRef",
    "Report",
    "SnapshotMeta",
    "Summary",
    "config_for",
    "diagnose",
    "from_json",
    "json_schema",
    "render_text",
    "to_json",
]
