"""`sockdoctor exporter`: stuck sockets by namespace, process, port and age for Prometheus."""

from __future__ import annotations

import sys
from typing import Any

import click

from ..ports import EXPORTER_LISTEN
from .common import CONTEXT, DURATION, FILTER_HELP, build_query, filter_options
from .web import check_path, web_options

# The optional families, each with --[no-]collector.NAME (watch/metrics.py COLLECTORS;
# written out here so that `--help` does not import the metrics code).
COLLECTORS = {
    "listen_queue": "accept queues (sockdoctor_listen_queue_*)",
    "process_fds": "descriptors of the processes holding stuck sockets "
                   "(sockdoctor_process_*_fds)",
    "ephemeral_ports": "sockdoctor_ephemeral_ports_used_ratio",
    "netns_info": "sockdoctor_netns_info",
}


def collector_options(command: Any) -> Any:
    for name, what in reversed(COLLECTORS.items()):
        command = click.option(f"--collector.{name}/--no-collector.{name}",
                               f"collector_{name}", default=True,
                               help=f"Export {what}.  [default: on]")(command)
    return command

EPILOG = FILTER_HELP + """
\b
A scrape never scans: the exporter samples every --interval (owners kept
between samples, /proc walked in full every --full-walk-every samples) and
serves the latest sample. A FILTER narrows what is exported; the doctor
still sees the listeners of the scanned namespaces.

\b
Endpoints: /metrics (--web.telemetry-path), /healthz (200 while samples
succeed), / (a short page). TLS, client certificates and basic auth: a
--web.config.file in exporter-toolkit's format. Metrics, alerts, dashboard,
systemd and Kubernetes: docs/exporter.md.
Stops cleanly (exit 0) on SIGTERM or SIGINT.

\b
Examples:
  # http://*:19808/metrics, a sample every 15s
  sockdoctor exporter
  sockdoctor exporter --web.listen-address 127.0.0.1:19808 --interval 30s
  # TLS and basic auth from exporter-toolkit's web config; no findings metrics
  sockdoctor exporter --web.config.file /etc/sockdoctor/web.yml --no-collector.doctor
  # for node_exporter's textfile collector
  sockdoctor exporter --textfile /var/lib/node_exporter/textfile
  # print one sample's metrics and exit
  sockdoctor exporter --once
  sockdoctor exporter --netns host state close-wait
"""


@click.command("exporter", context_settings=CONTEXT, epilog=EPILOG)
@filter_options
@web_options(f"{EXPORTER_LISTEN}; with --textfile: no HTTP unless given")
@click.option("--interval", default="15s", show_default=True, metavar="T",
              type=DURATION,
              help="Time between samples (10s, 1m).")
@click.option("--max-series", default=100, show_default=True, type=click.IntRange(1),
              metavar="N", help="Series per metric family; the rest is folded into "
                                "process=\"other\" (sums stay exact).")
@click.option("--label", "labels", multiple=True, type=click.Choice(["pid"]),
              help="Add an optional label: pid (one series per process; more series).")
@click.option("--textfile", "textfile_dir", metavar="DIR",
              help="Also write DIR/sockdoctor.prom (atomically) after each sample, for "
                   "node_exporter's textfile collector.")
@click.option("--once", is_flag=True,
              help="Take one sample, write it (--textfile) or print it, and exit.")
@click.option("--doctor-every", default="auto", show_default=True, metavar="N|auto",
              help="Run the doctor (findings metrics) on every N-th sample; auto: on every "
                   "sample while it costs under 2% of a CPU, less often on a big host.")
@click.option("--collector.doctor/--no-collector.doctor", "collector_doctor", default=True,
              help="Run the doctor: the findings metrics.  [default: on]")
@click.option("--no-doctor", is_flag=True, help="The same as --no-collector.doctor.")
@collector_options
@click.option("--web.disable-exporter-metrics", "no_own_metrics", is_flag=True,
              help="Leave out the exporter's own process_* and python_* metrics.")
@click.option("--full-walk-every", default=20, show_default=True, type=click.IntRange(1),
              metavar="N", help="Walk all of /proc for owners every N samples.")
@click.option("--stuck-after", metavar="AGE", type=DURATION,
              help="The doctor's stuck threshold (see `sockdoctor doctor --help`) "
                   "[default: 10s]")
@click.option("--idle-after", metavar="AGE", type=DURATION,
              help="The doctor's idle threshold [default: 30m]")
def exporter_command(listen: tuple[str, ...], telemetry_path: str, web_config: str | None,
                     interval: str, max_series: int, labels: tuple[str, ...],
                     textfile_dir: str | None, once: bool, doctor_every: str,
                     collector_doctor: bool, no_doctor: bool, no_own_metrics: bool,
                     full_walk_every: int, stuck_after: str | None, idle_after: str | None,
                     **kw: Any) -> None:
    """Export stuck TCP sockets (CLOSE-WAIT by process, port and age) to Prometheus.

    Serves /metrics for Prometheus, or writes a file for node_exporter's
    textfile collector. Run as root to see every process and network
    namespace; without root it exports what this user may see and says what
    is missing in sockdoctor_scan_incomplete.
    """
    from ..doctor import config_for
    from ..errors import UsageError
    from ..query import parse_duration
    from ..watch import exporter as ex

    seconds = parse_duration(interval) / 1000
    if seconds <= 0:
        raise UsageError("--interval must be longer than 0 (e.g. 15s)")
    if doctor_every != "auto" and not (doctor_every.isdigit() and int(doctor_every) >= 1):
        raise UsageError(f"--doctor-every {doctor_every}: give a number of samples (1, 4) "
                         "or auto")
    check_path(telemetry_path)
    doctor = collector_doctor and not no_doctor
    off = frozenset([*(name for name in COLLECTORS if not kw.pop(f"collector_{name}")),
                     *(() if doctor else ("doctor",))])
    query = build_query(kw)
    serve = not once and (listen or textfile_dir is None)
    settings = ex.ExporterSettings(
        listen=(tuple(listen) or (EXPORTER_LISTEN,)) if serve else (),
        telemetry_path=telemetry_path, web_config=web_config, interval_s=seconds,
        textfile_dir=textfile_dir, max_series=max_series, pid_label="pid" in labels,
        collectors_off=off, own_metrics=not no_own_metrics,
        doctor_config=config_for(stuck_after, idle_after), full_walk_every=full_walk_every,
        doctor_every=0 if doctor_every == "auto" else int(doctor_every))
    if once:
        _once(ex.build_exporter(query, settings))
    else:
        ex.serve_exporter(query, settings)


def _once(exporter: Any) -> None:
    """One sample: written to the textfile, else printed."""
    from ..watch import exporter as ex

    exporter.on_sample(exporter.sampler.sample())  # a user's mistake ends here, in one line
    if exporter.textfile is None:
        sys.stdout.buffer.write(ex.generate_latest(exporter.textfile_registry))
