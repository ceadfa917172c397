"""The join of traced state changes to sockets, namespaces and owners, on synthetic data.

The kernel side is replaced by tables: sock_diag look-ups answer from a dict
of (netns, 4-tuple) -> Socket, processes' namespaces and descriptors from
dicts. Everything else is the real JoinMap.
"""

from __future__ import annotations

import socket

import pytest

from sockdoctor.linux.ringbuf import StateChange
from sockdoctor.model import Netns, Owner, Process, Snapshot, Socket, TcpState
from sockdoctor.watch import join as join_mod
from sockdoctor.watch.join import JoinMap

A, B = 4026531111, 4026532222  # two namespaces
SRV, CLI = "10.77.0.1", "10.77.0.2"
ESTAB, CW, CLOSE = TcpState.ESTABLISHED, TcpState.CLOSE_WAIT, TcpState.CLOSE


def raw(addr: str) -> bytes:
    return socket.inet_pton(socket.AF_INET, addr)


def change(skaddr: int, old: int, new: int, sport: int = 8000, dport: int = 40000,
           src: str = SRV, dst: str = CLI, ts: int = 1_000_000_000, task: int = 0,
           irq: bool = True) -> StateChange:
    return StateChange(ts, 0, task, irq, skaddr, old, new, socket.AF_INET, sport, dport,
                       raw(src), raw(dst))


def sk(netns: int, state: int, lport: int = 8000, pport: int = 40000, inode: int = 0,
       cookie: int = 0, owners: tuple[tuple[int, int], ...] = (), laddr: str = SRV,
       paddr: str = CLI) -> Socket:
    s = Socket(netns, socket.AF_INET, state, laddr, lport, paddr, pport, inode, cookie, 0, 0, 0)
    s.owners = [Owner(pid, fd) for pid, fd in owners]
    return s


def snapshot(sockets: list[Socket], created: float = 1e12) -> Snapshot:
    return Snapshot(created=created, hostname="h", kernel="k", sockets=sockets,
                    namespaces=[Netns(inode=A, name="ns-a", kind="named"),
                                Netns(inode=B, name="ns-b", kind="named")],
                    processes={10: Process(pid=10, comm="server")}, owners_scanned=True)


class Kernel:
    """What sock_diag, /proc/PID/ns/net and /proc/PID/fd would say."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.sockets: dict[tuple[int, tuple], Socket] = {}
        self.netns_of: dict[int, int] = {}
        self.fds: dict[int, dict[int, int]] = {}  # pid -> {inode: fd}
        self.lookups = 0
        monkeypatch.setattr(join_mod.sockdiag, "lookup_tuple", self.lookup)
        monkeypatch.setattr(join_mod.procfs, "netns_inode", lambda pid: self.netns_of.get(pid, 0))
        monkeypatch.setattr(join_mod, "thread_group", lambda tid: tid)

    def add(self, s: Socket) -> None:
        key = (s.family, s.local_addr, s.local_port, s.peer_addr, s.peer_port)
        self.sockets[(s.netns, key)] = s

    def lookup(self, sock: object, family: int, laddr: str, lport: int, paddr: str,
               pport: int, netns: int = 0) -> Socket | None:
        self.lookups += 1
        return self.sockets.get((netns, (family, laddr, lport, paddr, pport)))

    def join(self, namespaces: tuple[int, ...] = (A, B), allowed: set[int] | None = None
             ) -> JoinMap:
        j = JoinMap(lambda ns: object(), lambda: list(namespaces), clock_offset=0.0,
                    allowed=allowed)
        kernel = self

        class Owners:  # the OwnerCache's two methods the join uses
            def holders(self, inode: int) -> list[Owner]:
                return [Owner(pid, fds[inode]) for pid, fds in kernel.fds.items()
                        if inode in fds]

            def refresh_pids(self, pids, died=frozenset(), full=False) -> int:
                return 0

        j.owners = Owners()  # type: ignore[assignment]
        return j


def run(j: JoinMap, changes: list[StateChange]):
    attached = j.attach(changes)
    j.identify(list({id(tr): tr for _, tr, _ in attached}.values()))
    return attached


def test_a_socket_from_the_sample_gets_its_namespace_cookie_and_owner(monkeypatch) -> None:
    k = Kernel(monkeypatch)
    j = k.join()
    j.use(snapshot([sk(A, ESTAB, inode=77, cookie=5, owners=((10, 4),))]))
    [(_, tr, prev)] = run(j, [change(0x1, ESTAB, CW)])
    assert (tr.netns, tr.cookie, tr.inode, tr.owners) == (A, 5, 77, [(10, 4)])
    assert prev is None and k.lookups == 0  # the sample was enough


def test_a_socket_born_after_the_sample_is_looked_up_and_timed(monkeypatch) -> None:
    k = Kernel(monkeypatch)
    j = k.join()
    j.use(snapshot([sk(A, TcpState.LISTEN, pport=0, laddr="0.0.0.0", paddr="0.0.0.0",
                       inode=1, owners=((10, 3),))], created=0.5))
    k.add(sk(A, CW, inode=88, cookie=9))
    k.fds[10] = {88: 7}
    out = run(j, [change(0x2, TcpState.LISTEN, TcpState.SYN_RECV, ts=1_000_000_000),
                  change(0x2, TcpState.SYN_RECV, ESTAB, ts=1_001_000_000),
                  change(0x2, ESTAB, CW, ts=1_251_000_000)])
    tr = out[-1][1]
    assert (tr.netns, tr.inode, tr.cookie, tr.owners) == (A, 88, 9, [(10, 7)])
    assert [prev for _, _, prev in out] == [None, 1.0, 250.0]  # ms in the previous state


def test_the_same_four_tuple_in_two_namespaces_is_told_apart_by_state(monkeypatch) -> None:
    k = Kernel(monkeypatch)
    j = k.join()
    j.use(snapshot([], created=0.0))
    k.add(sk(A, CW, inode=1, cookie=1))
    k.add(sk(B, ESTAB, inode=2, cookie=2))
    [(_, tr, _)] = run(j, [change(0x3, ESTAB, CW)])
    assert tr.netns == A and not tr.candidates


def test_identical_sockets_in_two_namespaces_are_reported_ambiguous(monkeypatch) -> None:
    k = Kernel(monkeypatch)
    j = k.join()
    j.use(snapshot([], created=0.0))
    k.add(sk(A, CW, inode=1, cookie=1))
    k.add(sk(B, CW, inode=2, cookie=2))
    [(_, tr, _)] = run(j, [change(0x4, ESTAB, CW)])
    assert tr.netns == 0 and sorted(tr.candidates) == [A, B]
    assert "2 network namespaces" in tr.note and tr.settled


def test_process_context_names_the_namespace_first(monkeypatch) -> None:
    """connect() runs in the client's context: its namespace is the socket's."""
    k = Kernel(monkeypatch)
    k.netns_of[20] = B
    k.add(sk(A, ESTAB, lport=50000, pport=8000, laddr=CLI, paddr=SRV, inode=3, cookie=3))
    k.add(sk(B, ESTAB, lport=50000, pport=8000, laddr=CLI, paddr=SRV, inode=4, cookie=4))
    k.fds[20] = {4: 5}
    j = k.join()
    j.use(snapshot([], created=0.0))
    out = run(j, [change(0x5, CLOSE, TcpState.SYN_SENT, sport=0, dport=8000, src=CLI, dst=SRV,
                         task=20, irq=False),
                  change(0x5, TcpState.SYN_SENT, ESTAB, sport=50000, dport=8000, src=CLI,
                         dst=SRV)])
    tr = out[-1][1]
    assert (tr.netns, tr.inode, tr.owners, tr.creator) == (B, 4, [(20, 5)], 20)


def test_a_socket_closed_before_the_look_up_is_owned_by_its_closer(monkeypatch) -> None:
    k = Kernel(monkeypatch)
    j = k.join()
    j.use(snapshot([], created=0.0))
    out = run(j, [change(0x6, ESTAB, CW),
                  change(0x6, CW, TcpState.LAST_ACK, task=30, irq=False),
                  change(0x6, TcpState.LAST_ACK, CLOSE)])
    tr = out[0][1]
    assert tr.owners == [(30, None)] and "closed it" in tr.note


def test_a_queued_socket_names_the_listener_and_is_looked_up_again(monkeypatch) -> None:
    k = Kernel(monkeypatch)
    j = k.join()
    listener = sk(A, TcpState.LISTEN, pport=0, laddr="0.0.0.0", paddr="0.0.0.0", inode=1,
                  owners=((10, 3),))
    j.use(snapshot([listener], created=0.0))
    k.add(sk(A, CW, inode=0, cookie=6))  # in the accept queue: no inode yet
    [(_, tr, _)] = run(j, [change(0x7, ESTAB, CW)])
    assert "accept queue of pid 10" in tr.note and not tr.settled
    k.add(sk(A, CW, inode=99, cookie=6))  # accept()ed
    k.fds[10] = {99: 12}
    j.identify([tr])
    assert tr.owners == [(10, 12)] and tr.settled


def test_a_new_socket_at_a_reused_address_starts_a_new_track(monkeypatch) -> None:
    k = Kernel(monkeypatch)
    j = k.join()
    j.use(snapshot([sk(A, ESTAB, inode=77, cookie=5, owners=((10, 4),))]))
    first = run(j, [change(0x8, ESTAB, CW)])[0][1]
    j.finish(0x8, first)
    second = run(j, [change(0x8, TcpState.LISTEN, TcpState.SYN_RECV, dport=40001)])[0][1]
    assert second is not first and second.key[4] == 40001
    assert j.closed[(A, 5)] is first  # kept for its destroy event


def test_other_namespaces_are_not_looked_up_with_a_netns_filter(monkeypatch) -> None:
    k = Kernel(monkeypatch)
    k.netns_of[20] = B
    j = k.join(namespaces=(A,), allowed={A})
    j.use(snapshot([], created=0.0))
    [(_, tr, _)] = run(j, [change(0x9, CLOSE, TcpState.SYN_SENT, task=20, irq=False)])
    assert tr.netns == B and tr.settled and k.lookups == 0


def test_destroy_events_find_what_the_trace_knew(monkeypatch) -> None:
    k = Kernel(monkeypatch)
    j = k.join()
    j.use(snapshot([sk(A, CW, inode=77, cookie=5, owners=((10, 4),)),
                    sk(A, CW, pport=40002, inode=78, cookie=6, owners=((10, 8),))]))
    tr = run(j, [change(0xA, CW, CLOSE, task=40, irq=False)])[0][1]
    j.finish(0xA, tr)
    assert j.destroyed(sk(A, CLOSE, cookie=5)) is tr
    from_sample = j.destroyed(sk(A, CLOSE, pport=40002, cookie=6))
    assert from_sample is not None and from_sample.owners == [(10, 8)]
    assert j.destroyed(sk(B, CLOSE, cookie=6)) is None  # same cookie, other namespace


def test_owner_cache_refresh_of_a_known_process_reads_only_what_is_new(tmp_path, monkeypatch
                                                                      ) -> None:
    """The cache trace asks about new sockets: asked twice, the second look is cheap."""
    import os

    from sockdoctor.linux import ownercache, procfs

    proc = tmp_path / "4242" / "fd"
    proc.mkdir(parents=True)
    os.symlink("socket:[700]", proc / "3")
    os.symlink("/dev/null", proc / "4")
    monkeypatch.setattr(procfs, "PROC", str(tmp_path))
    cache = ownercache.OwnerCache()
    assert cache.refresh_pids([4242]) == 2
    assert [(o.pid, o.fd) for o in cache.holders(700)] == [(4242, 3)]
    assert cache.refresh_pids([4242]) == 0  # nothing changed: no readlink
    os.symlink("socket:[701]", proc / "5")
    assert cache.refresh_pids([4242]) == 1
    assert [(o.pid, o.fd) for o in cache.holders(701)] == [(4242, 5)]
    assert cache.refresh_pids([4242], full=True) == 3


def test_a_namespace_born_after_the_listing_is_found_by_listing_again(monkeypatch) -> None:
    """No hint, not in any known namespace: the namespaces are listed again, once."""
    NEW = 4026533333
    k = Kernel(monkeypatch)
    k.add(sk(NEW, ESTAB, inode=90, cookie=9))
    listed: list[int] = []

    def rediscover() -> list[int]:
        listed.append(1)
        return [NEW]

    j = JoinMap(lambda ns: object(), lambda: [A, B], clock_offset=0.0, rediscover=rediscover)
    j.use(snapshot([]))
    [(_, tr, _)] = run(j, [change(0x7, TcpState.SYN_RECV, ESTAB)])
    assert (tr.netns, tr.cookie, tr.inode) == (NEW, 9, 90)
    assert listed == [1]
