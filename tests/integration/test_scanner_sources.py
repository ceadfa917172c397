"""inventory.Scanner with each owner source, on live sockets in a namespace the test made.

The /proc walk is the reference; the kernel engine's iter/task_file walk and
the sampler's cache (after changes it must follow without a full walk) give
the same holders and process facts. `doctor --interval` is the sampler: one
scan per sample, the second without a full walk.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable

import pytest

from bpfengine import need_engine
from conftest import Remote
from sockdoctor import inventory
from sockdoctor.cli import main
from sockdoctor.lab.netlab import Lab
from sockdoctor.linux.bpf.owners import KernelWalk
from sockdoctor.linux.ownercache import CachedOwners
from sockdoctor.linux.owners import OwnerSource, ProcWalk
from sockdoctor.model import Snapshot
from sockdoctor.query import Query
from sockdoctor.watch import Sampler

pytestmark = pytest.mark.root

HOLD = """
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(64)
port = srv.getsockname()[1]
conns = []
def connect(n):
    for _ in range(n):
        c = socket.create_connection(("127.0.0.1", port)); a, _ = srv.accept()
        conns.extend([c, a])
connect(6)
conns.append(os.dup(conns[0].fileno()))                    # one socket, two descriptors
child = 0
def fork():                                                # shares every descriptor
    global child
    child = os.fork()
    if child == 0:
        time.sleep(3600); os._exit(0)
result = 1
"""
# closes two sockets and connects one pair: the lowest numbers, just freed, are reused
CHURN = "connect(3); conns.pop(3).close(); conns.pop(3).close(); connect(1); result = 1"


def held(snap: Snapshot) -> dict[int, list[tuple[int, int]]]:
    """cookie -> sorted (pid, fd) of every owned socket."""
    return {sk.cookie: sorted((o.pid, o.fd) for o in sk.owners)
            for sk in snap.sockets if sk.owners}


def facts(snap: Snapshot) -> dict[int, tuple[str, int]]:
    return {pid: (p.comm, p.fd_count) for pid, p in snap.processes.items()}


def scanned(source: OwnerSource, lab: Lab, scanner: inventory.Scanner | None = None
            ) -> Snapshot:
    scanner = scanner or inventory.Scanner(source)
    return scanner.scan(Query(), evidence=True, netns=lab.server.netns)


@pytest.fixture
def holder(solo: Lab) -> Remote:
    remote = Remote(solo, solo.server, "sdt-holder")
    remote(HOLD)
    yield remote
    remote("if child: os.kill(child, 9); os.waitpid(child, 0)\nresult = 1")


def test_the_kernel_walk_gives_the_owners_of_the_proc_walk(solo: Lab, holder: Remote) -> None:
    need_engine()
    holder("fork(); result = 1")
    reference = scanned(ProcWalk(), solo)
    kernel = scanned(KernelWalk(), solo)
    assert held(kernel) == held(reference)
    assert len(held(reference)) == 13  # the listener and 6 pairs
    assert any(len(h) == 4 for h in held(reference).values())  # dup'd, then forked
    assert facts(kernel) == facts(reference)


def cached(forced_gap: int = 3) -> tuple[CachedOwners, list[str]]:
    walks: list[str] = []

    def walker() -> OwnerSource:
        walks.append("full")
        return ProcWalk()
    return CachedOwners(full_walk_every=1000, walker=walker, forced_gap=forced_gap), walks


def test_the_cache_follows_changes_without_a_full_walk(solo: Lab, holder: Remote) -> None:
    source, walks = cached()
    scanner = inventory.Scanner(source, source.facts)
    first = scanned(source, solo, scanner)
    assert source.last.full and held(first) == held(scanned(ProcWalk(), solo))
    holder(CHURN)  # new sockets, closed ones, descriptor numbers reused for others
    second = scanned(source, solo, scanner)
    assert not source.last.full and walks == ["full"]
    reference = scanned(ProcWalk(), solo)
    assert held(second) == held(reference)
    assert len(held(second)) == 1 + 2 * (6 + 3 + 1) - 2
    assert facts(second) == facts(reference)


def test_an_exact_cache_walks_when_a_reused_number_hides_a_new_socket(solo: Lab,
                                                                       holder: Remote) -> None:
    """The closed sockets live on in a forked child, so the parent's reused numbers look
    unchanged to the cache: with forced_gap=1 (doctor --interval) it walks at once."""
    holder("fork(); result = 1")
    source, walks = cached(forced_gap=1)
    scanner = inventory.Scanner(source, source.facts)
    scanned(source, solo, scanner)
    holder(CHURN)
    second = scanned(source, solo, scanner)
    assert source.last.full and walks == ["full", "full"]
    assert held(second) == held(scanned(ProcWalk(), solo))


def test_the_sampler_keeps_each_namespaces_sysctls_between_full_walks(solo: Lab) -> None:
    sampler = Sampler(netns=solo.server.netns, doctor=False)
    first, second = sampler.sample(), sampler.sample()
    assert not second.full_walk
    (ns1,), (ns2,) = first.snapshot.namespaces, second.snapshot.namespaces
    assert "net.ipv4.tcp_fin_timeout" in ns1.sysctls
    assert ns2.sysctls == ns1.sysctls
    assert second.snapshot.sysctls == first.snapshot.sysctls


def counting(monkeypatch: pytest.MonkeyPatch, cls: type, name: str, into: list[str]) -> None:
    real: Callable = getattr(cls, name)

    def counted(self: object, *args: object, **kw: object) -> object:
        into.append(f"{cls.__name__}.{name}")
        return real(self, *args, **kw)
    monkeypatch.setattr(cls, name, counted)


def test_doctor_interval_scans_once_per_sample(solo: Lab, holder: Remote,
                                               monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    scans: list[str] = []
    walks: list[str] = []
    counting(monkeypatch, inventory.Scanner, "scan", scans)
    counting(monkeypatch, ProcWalk, "start", walks)
    counting(monkeypatch, KernelWalk, "start", walks)
    monkeypatch.setattr(sys, "argv", ["sockdoctor", "doctor", "--json", "--netns",
                                      solo.server.netns, "--interval", "1s"])
    with pytest.raises(SystemExit) as ended:
        main()
    assert ended.value.code in (0, 1, 2)
    assert len(scans) == 2  # one for each sample: the first, then one after the interval
    assert len(walks) == 1  # the second sample read only what changed in /proc
    report = json.loads(capsys.readouterr().out)
    assert report["snapshot"]["interval_s"] >= 1
