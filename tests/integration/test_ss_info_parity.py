"""Differential tests: `ls -i` against `ss -ti`, and `ls -s` against `ss -s`.

A private namespace holds loopback connections that moved some data and then
went quiet: one pair with cubic, one with bbr (set per socket with
TCP_CONGESTION). Both tools list the same sockets; the test compares the
field names of the tcp_info line in order, and the values that do not move on
an idle socket. Fields newer than the installed ss (it is older than the
kernel here) are dropped from our side before comparing names, by name.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import Remote
from sockdoctor.lab.netlab import Lab

pytestmark = pytest.mark.root

# Fields that newer ss versions print and older ones do not (iproute2 6.7+ / 6.4+).
NEWER_THAN_SOME_SS = {"rcv_wnd", "rehash", "usec_ts"}
# Values that do not change on a socket nobody uses.
STABLE = {"cubic", "bbr", "wscale", "mss", "pmtu", "rcvmss", "advmss", "cwnd", "ssthresh",
          "bytes_sent", "bytes_acked", "bytes_received", "segs_out", "segs_in",
          "data_segs_out", "data_segs_in", "rcv_space", "rcv_ssthresh", "snd_wnd", "delivered",
          "app_limited", "ts", "sack"}
TWO_WORD = {"send", "pacing_rate", "delivery_rate"}


def bbr_available() -> bool:
    path = Path("/proc/sys/net/ipv4/tcp_available_congestion_control")
    if "bbr" not in path.read_text().split():
        subprocess.run(["modprobe", "tcp_bbr"], capture_output=True, check=False)
    return "bbr" in path.read_text().split()


@pytest.fixture(scope="module")
def quiet() -> Iterator[tuple[Lab, bool]]:
    """A namespace with two idle connected pairs (cubic, and bbr when the kernel has it)."""
    bbr = bbr_available()
    with Lab("ssinfo", pair=False) as lab:
        remote = Remote(lab, lab.server, "sdt-info")
        remote(f"""
            socks = []
            lst = socket.socket()
            lst.bind(("127.0.0.1", 0))
            lst.listen(8)
            for cc in ["cubic"] + (["bbr"] if {bbr} else []):
                c = socket.socket()
                c.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, cc.encode())
                c.connect(lst.getsockname())
                a, _ = lst.accept()
                c.sendall(b"x" * 100000)
                got = 0
                while got < 100000:
                    got += len(a.recv(100000))
                a.sendall(b"y" * 1000)
                c.recv(1000)
                socks += [c, a]
            time.sleep(0.3)
        """)
        yield lab, bbr


def run_in(ns: str, *argv: str, pure: bool = False) -> str:
    env = {**os.environ, "SOCKDOCTOR_PURE": "1"} if pure else None
    done = subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True,
                          timeout=60, check=True, env=env)
    return done.stdout


def fields(line: str) -> list[tuple[str, str]]:
    """(name, value) pairs of one tcp_info line; `send 1bps` is one field."""
    words, out = line.split(), []
    while words:
        word = words.pop(0)
        if word in TWO_WORD and words:
            out.append((word, words.pop(0)))
        else:
            name, _, value = word.partition(":")
            out.append((name, value))
    return out


def by_endpoints(text: str) -> dict[tuple[str, str], list[tuple[str, str]]]:
    """Socket line (local, peer) -> its tcp_info fields, from `-H` output of either tool."""
    result, key = {}, None
    for line in text.splitlines():
        if line.startswith("\t"):
            if key:
                result[key] = fields(line)
            continue
        cells = line.split()
        key = (cells[3], cells[4]) if cells and cells[0] == "ESTAB" else None
    return result


def test_info_line_matches_ss(quiet: tuple[Lab, bool]) -> None:
    lab, bbr = quiet
    ns = lab.server.netns
    ss = by_endpoints(run_in(ns, "ss", "-Htin"))
    ours = by_endpoints(run_in(ns, sys.executable, "-m", "sockdoctor", "ls", "-Htin", "-N", ns))
    assert len(ss) == (4 if bbr else 2)
    assert set(ours) == set(ss)
    ss_names = {name for line in ss.values() for name, _ in line}
    for key, theirs in ss.items():
        mine = [(n, v) for n, v in ours[key] if n in ss_names or n not in NEWER_THAN_SOME_SS]
        assert [n for n, _ in mine] == [n for n, _ in theirs], key
        assert {n: v for n, v in mine if n in STABLE} == \
            {n: v for n, v in theirs if n in STABLE}, key
    names = {n for line in ours.values() for n, _ in line}
    assert {"send", "pacing_rate", "delivery_rate", "minrtt", "rcv_space"} <= names


def test_bbr_details_match_ss(quiet: tuple[Lab, bool]) -> None:
    lab, bbr = quiet
    if not bbr:
        pytest.skip("tcp_bbr is not available on this kernel (modprobe tcp_bbr failed)")
    ns = lab.server.netns
    ss = run_in(ns, "ss", "-Htin")
    ours = run_in(ns, sys.executable, "-m", "sockdoctor", "ls", "-Htin", "-N", ns)
    pattern = re.compile(r"bbr:\(bw:\d+bps,mrtt:[\d.]+(?:,pacing_gain:[\d.]+,cwnd_gain:[\d.]+)?\)")
    theirs, mine = pattern.findall(ss), pattern.findall(ours)
    assert len(mine) == len(theirs) >= 2
    # the gains of the bbr socket that sent data are the same constants in both
    assert sorted(mine) == sorted(theirs)
    # the Python parser (no C extension) reads the same attribute
    pure = run_in(ns, sys.executable, "-m", "sockdoctor", "ls", "-Htin", "-N", ns, pure=True)
    assert sorted(pattern.findall(pure)) == sorted(mine)


def test_options_only_with_o(quiet: tuple[Lab, bool]) -> None:
    """ss prints ts/sack only with -o or -e, and so do we."""
    ns = quiet[0].server.netns
    plain = run_in(ns, sys.executable, "-m", "sockdoctor", "ls", "-Htin", "-N", ns)
    with_o = run_in(ns, sys.executable, "-m", "sockdoctor", "ls", "-Htino", "-N", ns)
    assert " ts sack " not in plain
    assert "\t ts sack cubic wscale:" in with_o


def summary_numbers(text: str) -> tuple[dict[str, int], list[str]]:
    tcp = re.search(r"^TCP:\s+(\d+) \(estab (\d+), closed (\d+), orphaned (\d+), "
                    r"timewait (\d+)\)", text, re.M)
    row = re.search(r"^TCP\s+(\d+)\s+(\d+)\s+(\d+)", text, re.M)
    assert tcp and row, text
    names = ("total", "estab", "closed", "orphaned", "timewait")
    return dict(zip(names, map(int, tcp.groups()), strict=True)), list(row.groups())


def test_summary_matches_ss(quiet: tuple[Lab, bool]) -> None:
    """The namespace's own numbers match ss's exactly; the total and `orphaned` are the
    kernel's host-wide counters (the same in every namespace), which other programs on
    the machine move between the two runs, so those only have to be ss's formula."""
    ns, bbr = quiet[0].server.netns, quiet[1]
    for _ in range(5):  # until the host-wide counters held still between the two runs
        theirs = summary_numbers(run_in(ns, "ss", "-s"))
        text = run_in(ns, sys.executable, "-m", "sockdoctor", "ls", "-s", "-N", ns)
        mine = summary_numbers(text)
        if mine == theirs:
            break
    own = ("estab", "timewait")
    assert {k: mine[0][k] for k in own} == {k: theirs[0][k] for k in own}
    assert mine[0]["estab"] == (4 if bbr else 2)
    sockets = str(1 + (4 if bbr else 2))  # the listener and the connected pairs, all IPv4
    assert mine[1] == theirs[1] == [sockets, sockets, "0"]  # the TCP row: total, IP, IPv6
    assert text.startswith("Total: ")
    assert "Transport Total     IP        IPv6" in text
    assert "leaves out" in text
