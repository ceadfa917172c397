"""`sockdoctor exporter`: stuck sockets by namespace, process, port and age for Prometheus."""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any

import click

from .common import CONTEXT, DURATION, FILTER_HELP, build_query, filter_options

DEFAULT_LISTEN = ":19808"

EPILOG = FILTER_HELP + """
\b
A scrape never scans: the exporter samples every --interval (owners kept
between samples, /proc walked in full every --full-walk-every samples) and
serves the latest sample. A FILTER narrows what is exported; the doctor
still sees the listeners of the scanned namespaces.

\b
Endpoints: /metrics, /healthz (200 while samples succeed), / (a short page).
Metrics, alerts, dashboard, systemd and Kubernetes: docs/exporter.md.
Stops cleanly (exit 0) on SIGTERM or SIGINT.

\b
Examples:
  # http://*:19808/metrics, a sample every 15s
  sockdoctor exporter
  sockdoctor exporter --listen 127.0.0.1:19808 --interval 30s
  # for node_exporter's textfile collector
  sockdoctor exporter --textfile /var/lib/node_exporter/textfile
  # print one sample's metrics and exit
  sockdoctor exporter --once
  sockdoctor exporter --netns host state close-wait
"""


@click.command("exporter", context_settings=CONTEXT, epilog=EPILOG)
@filter_options
@click.option("--listen", metavar="ADDR:PORT",
              help=f"Where to serve HTTP [default: {DEFAULT_LISTEN}; with --textfile: "
                   "nowhere unless given].")
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
@click.option("--no-doctor", is_flag=True, help="No findings metrics at all.")
@click.option("--full-walk-every", default=20, show_default=True, type=click.IntRange(1),
              metavar="N", help="Walk all of /proc for owners every N samples.")
@click.option("--stuck-after", metavar="AGE", type=DURATION,
              help="The doctor's stuck threshold (see `sockdoctor doctor --help`) "
                   "[default: 10s]")
@click.option("--idle-after", metavar="AGE", type=DURATION,
              help="The doctor's idle threshold [default: 30m]")
def exporter_command(listen: str | None, interval: str, max_series: int,
                     labels: tuple[str, ...], textfile_dir: str | None, once: bool,
                     doctor_every: str, no_doctor: bool, full_walk_every: int,
                     stuck_after: str | None, idle_after: str | None, **kw: Any) -> None:
    """Export stuck TCP sockets (CLOSE-WAIT by process, port and age) to Prometheus.

    Serves /metrics for Prometheus, or writes a file for node_exporter's
    textfile collector. Run as root to see every process and network
    namespace; without root it exports what this user may see and says what
    is missing in sockdoctor_scan_incomplete.
    """
    from ..doctor import config_for
    from ..errors import UsageError
    from ..query import parse_duration
    from ..watch import Sampler, metrics, tune_gc
    from ..watch import exporter as ex

    seconds = parse_duration(interval) / 1000
    if seconds <= 0:
        raise UsageError("--interval must be longer than 0 (e.g. 15s)")
    if doctor_every != "auto" and not (doctor_every.isdigit() and int(doctor_every) >= 1):
        raise UsageError(f"--doctor-every {doctor_every}: give a number of samples (1, 4) "
                         "or auto")
    query = build_query(kw)
    textfile = ex.check_textfile_dir(textfile_dir) if textfile_dir else None
    sampler = Sampler(query, netns=query.netns, interval=seconds, doctor=not no_doctor,
                      doctor_config=config_for(stuck_after, idle_after),
                      full_walk_every=full_walk_every,
                      doctor_every=0 if doctor_every == "auto" else int(doctor_every))
    collector = ex.SampleCollector(metrics.Options(max_series=max_series,
                                                   pid="pid" in labels))
    exporter = ex.Exporter(sampler, collector, textfile=textfile)
    if not once and (listen is not None or textfile is None):
        host, port = ex.parse_listen(listen or DEFAULT_LISTEN)  # bound before the first
        exporter.server = ex.listen(host, port, ex.Site(exporter.served, collector, seconds))
    tune_gc()  # main() turned the cyclic collector off for short commands
    first = sampler.sample()  # the user's mistakes (unknown namespace...) end here, in one line
    if once:
        exporter.on_sample(first)
        if textfile is None:
            sys.stdout.buffer.write(ex.generate_latest(exporter.textfile_registry))
        return
    stop = _stop_on_signals()
    where = ex.bound_url(exporter.server) if exporter.server else f"writing {textfile}"
    exporter.on_sample(first)
    exporter.say(f"{where}, a sample every {seconds:g}s (first: {len(first.snapshot.sockets)} "
                 f"sockets in {first.duration_s:.2f}s)")
    del first  # the sampler and the collector keep what they need; this frame must not
    exporter.run(stop, wait_first=True)
    exporter.say("stopped")


def _stop_on_signals() -> threading.Event:
    """SIGTERM or SIGINT: finish the sample under way and exit 0; a second one: at once."""
    stop = threading.Event()

    def handler(signum: int, _frame: object) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop
