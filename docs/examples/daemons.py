"""The exporter and the reaper from Python: what `sockdoctor exporter` and `reap` run.

    python docs/examples/daemons.py NETNS POLICY.toml [SECONDS]

Serves the exporter for NETNS on 127.0.0.1 (an ephemeral port, printed) in a
thread, runs one dry-run reap cycle of POLICY, then stops the exporter after
SECONDS (default 3).
"""

import sys
import threading

from sockdoctor.query import Query
from sockdoctor.reap.daemon import ReapSettings
from sockdoctor.reap.daemon import run as reap
from sockdoctor.watch import ExporterSettings, build_exporter

netns, policy = sys.argv[1], sys.argv[2]
seconds = float(sys.argv[3]) if len(sys.argv) > 3 else 3.0

# the exporter: built (and bound) first, then served until `stop` is set
exporter = build_exporter(Query(netns=netns),
                          ExporterSettings(listen=("127.0.0.1:0",), interval_s=1.0))
stop = threading.Event()
serving = threading.Thread(target=exporter.start, args=(stop,))
serving.start()
print("metrics at", *exporter.urls(), flush=True)

# the reaper: one dry-run cycle of the policy in that namespace
reaper = reap(policy, ReapSettings(once=True, netns=netns))
print("reap cycles:", reaper.cycles, flush=True)

stop.wait(seconds)
stop.set()
serving.join()
