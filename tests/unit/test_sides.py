"""One side rule for the exporter's labels and ls --json: server or client, and the service."""

from __future__ import annotations

from sockdoctor.doctor.synth import SnapshotBuilder
from sockdoctor.sides import DEFAULT_PORT_RANGE, Sides, port_range
from sockdoctor.watch import metrics
from sockdoctor.watch.sampler import Sample


def test_port_range_reads_the_sysctl_or_falls_back() -> None:
    assert port_range({"net.ipv4.ip_local_port_range": "40000\t40999"}) == (40000, 40999)
    for bad in ("", "x y", "5 1", "0 10", "1 70000"):
        assert port_range({"net.ipv4.ip_local_port_range": bad}) == DEFAULT_PORT_RANGE
    assert port_range({}) == DEFAULT_PORT_RANGE


def test_sides_of_server_client_and_listener_in_a_narrowed_range() -> None:
    b = SnapshotBuilder()
    b.netns("blue", sysctls={"net.ipv4.ip_local_port_range": "40000 40999"})
    lst = b.listener(40500, netns="blue")  # a listening port inside the range stays a service
    served = b.socket("close-wait", "10.0.0.1:40500", "10.0.0.2:40001", netns="blue")
    client = b.socket("close-wait", "10.0.0.1:40002", "10.0.0.9:5432", netns="blue")
    high = b.socket("established", "10.0.0.1:50000", "10.0.0.9:443", netns="blue")
    sides = Sides(b.build())
    assert sides.of(lst) == ("server", 40500)
    assert sides.of(served) == ("server", 40500)
    assert sides.of(client) == ("client", 5432)
    assert sides.of(high) == ("server", 50000)  # outside this namespace's range


def test_the_exporter_labels_come_from_the_same_rule() -> None:
    b = SnapshotBuilder()
    b.process(10, "app")
    b.listener(8080, pid=10)
    b.sockets(2, "close-wait", "10.0.0.1:8080", "10.0.0.2", pid=10)
    b.sockets(3, "close-wait", "10.0.0.1:45000", "10.0.0.9:5432", pid=10)
    snap = b.build()
    sides = Sides(snap)
    from_json = sorted({sides.of(sk) for sk in snap.sockets if sk.state == 8})
    view = metrics._View(snap, Sample(seq=1, started=0.0, snapshot=snap), metrics.Options())
    from_labels = sorted(("client" if client else "server", port)
                         for (_ns, _pid, client, port) in view.groups)
    assert from_json == from_labels == [("client", 5432), ("server", 8080)]
