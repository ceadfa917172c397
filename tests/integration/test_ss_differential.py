"""Differential test: our filter selects exactly the sockets `ss -Htan EXPR` lists.

A holder script builds a varied live population in a private namespace
(listeners, v4/v6/v4-mapped connections, CLOSE-WAIT/FIN-WAIT-2 pairs, accept
queue leftovers, SYN-SENT, SYN-RECV, fresh TIME-WAITs, a socket bound to lo),
then hundreds of random filter expressions are run through both `ss` and
`sockdoctor.inventory.scan`. Set SSFILTER_SEED to replay a run.
"""

from __future__ import annotations

import os
import random
import subprocess
import time
from collections.abc import Iterator

import pytest

from conftest import Script, allow_stuck_sockets_in
from sockdoctor import inventory
from sockdoctor.errors import FilterSyntaxError
from sockdoctor.lab.netlab import Lab
from sockdoctor.model import SS_COLUMN_NAMES
from sockdoctor.query import Query

pytestmark = pytest.mark.root

EXPRESSIONS = int(os.environ.get("SSFILTER_COUNT", "320"))

# Every client that is not explicitly given a source port lets the kernel pick
# one: ss's `autobound` asks the kernel whether the port was bound explicitly,
# which sock_diag never reports, so explicit client ports would make it differ.
HOLDER = r"""
socks = []

def listen(family, addr, port, backlog=16, dev=None, defer=0, v6only=None):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if dev:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, dev.encode())
    if defer:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, defer)
    if v6only is not None:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, v6only)
    s.bind((addr, port))
    s.listen(backlog)
    socks.append(s)
    return s

def connect(family, dst, src=None, block=True):
    c = socket.socket(family, socket.SOCK_STREAM)
    if src:
        c.bind((src, 0))
    if block:
        c.connect(dst)
    else:
        c.setblocking(False)
        c.connect_ex(dst)
    socks.append(c)
    return c

def pair(listener, family, dst, src=None):
    c = connect(family, dst, src)
    a, _ = listener.accept()
    socks.append(a)
    return c, a

v4, v6 = socket.AF_INET, socket.AF_INET6
l22 = listen(v4, "0.0.0.0", 22)
l80 = listen(v4, "127.0.0.1", 80)
l1023 = listen(v4, "127.0.0.5", 1023)
l1024 = listen(v4, "127.0.0.5", 1024)
l1025 = listen(v4, "127.0.0.6", 1025)
l_lo = listen(v4, "127.0.0.1", 8080, dev="lo")
l32767 = listen(v4, "127.0.0.1", 32767)
l32768 = listen(v4, "127.0.0.1", 32768)
l_defer = listen(v4, "127.0.0.1", 9000, defer=600)
l_full = listen(v4, "127.0.0.1", 5000, backlog=0)
l443 = listen(v6, "::1", 443)
l8443 = listen(v6, "::", 8443, v6only=0)
l2222 = listen(v6, "::", 2222, v6only=1)
l_fd = listen(v6, "fd00:1::1", 80)

for src in ("127.0.0.2", "127.0.0.3", "127.0.0.4"):
    pair(l80, v4, ("127.0.0.1", 80), src)
pair(l22, v4, ("127.0.0.1", 22))
pair(l22, v4, ("127.0.0.7", 22), "127.0.0.7")
pair(l1023, v4, ("127.0.0.5", 1023))
pair(l1024, v4, ("127.0.0.5", 1024), "127.0.0.8")
pair(l1025, v4, ("127.0.0.6", 1025))
pair(l_lo, v4, ("127.0.0.1", 8080))
pair(l32767, v4, ("127.0.0.1", 32767))
pair(l32768, v4, ("127.0.0.1", 32768), "127.0.0.9")
pair(l443, v6, ("::1", 443))
pair(l8443, v4, ("127.0.0.1", 8443))
pair(l8443, v6, ("::ffff:127.0.0.1", 8443))
pair(l8443, v6, ("::1", 8443))
pair(l2222, v6, ("::1", 2222))
pair(l_fd, v6, ("fd00:1::1", 80), "fd00:1::2")
pair(l80, v6, ("::ffff:127.0.0.1", 80))
connect(v4, ("127.0.0.1", 9000))          # SYN-RECV on the server (deferred accept)
connect(v4, ("127.0.0.1", 5000))          # fills the accept queue of :5000 ...
connect(v4, ("127.0.0.1", 5000), block=False)   # ... so these stay in SYN-SENT
connect(v6, ("::ffff:127.0.0.1", 5000), block=False)

# CLOSE-WAIT here / FIN-WAIT-2 there: the peer shuts down writing, keeps its socket
for listener, family, dst in ((l80, v4, ("127.0.0.1", 80)), (l443, v6, ("::1", 443)),
                              (l8443, v4, ("127.0.0.1", 8443)), (l22, v4, ("127.0.0.1", 22))):
    c, _ = pair(listener, family, dst)
    c.shutdown(socket.SHUT_WR)
# CLOSE-WAIT in the accept queue: never accepted
c = connect(v4, ("127.0.0.5", 1024))
c.shutdown(socket.SHUT_WR)

# TIME-WAIT on both sides: whoever closes first keeps it for 60 s
for listener, family, dst, client_first in ((l80, v4, ("127.0.0.1", 80), True),
                                            (l443, v6, ("::1", 443), True),
                                            (l1025, v4, ("127.0.0.6", 1025), False),
                                            (l8443, v4, ("127.0.0.1", 8443), False)):
    c, a = pair(listener, family, dst)
    first, second = (c, a) if client_first else (a, c)
    first.close()
    second.recv(1)
    second.close()
    socks.remove(c)
    socks.remove(a)
time.sleep(0.2)
emit({"ports": sorted({s.getsockname()[1] for s in socks if s.fileno() >= 0})})
wait()
"""

STATE_NAMES = ["established", "syn-sent", "syn-recv", "syn-rcv", "fin-wait-1", "fin-wait-2",
               "time-wait", "closed", "close", "unconnected", "close-wait", "last-ack",
               "listening", "closing", "all", "connected", "synchronized", "bucket", "big",
               "ESTABLISHED", "Time-Wait", "unknown"]
ADDRESSES = ["127.0.0.1", "127.0.0.2", "127.0.0.5", "127.0.0.6", "127.0.0.7", "0.0.0.0",
             "127.0.0.0/8", "127.0.0.0/30", "127.0.0.4/31", "127.0.0.0/255.255.255.248",
             "0.0.0.0/0", "0.0.0.0/8", "0/1", "127.1", "127/8", "*", "[::1]", "[::]",
             "[::ffff:127.0.0.1]", "[::ffff:127.0.0.0/104]", "::/0", "::1/128",
             "::ffff:0:0/96", "fd00:1::/32", "[fd00:1::2]", "localhost", "inet:127.0.0.1",
             "inet6:[::1]", "inet:0.0.0.0/0", "default", "any", "[127.0.0.1]", "0x7f.0.0.1",
             "0177.0.0.05", "127.0.0.1/0x1f", "127.0.0.1:ssh", "[::1]:https"]
OPERATORS = {"=": ["=", "==", "eq", ""], "!=": ["!=", "ne", "neq"], ">": [">", "gt"],
             "<": ["<", "lt"], ">=": [">=", "ge", "geq"], "<=": ["<=", "le", "leq"]}
AND_WORDS, OR_WORDS, NOT_WORDS = ["and", "&", "&&", ""], ["or", "|", "||"], ["not", "!"]
BROKEN = ["(", ")", "and", "src", "sport", "=", "!=", "[::1", "::1", "dev", "state", "08"]


class Generator:
    """Random ss filter words over the ports and addresses of the population."""

    THRESHOLDS = (0, 1, 22, 80, 443, 1023, 1024, 1025, 8080, 8443, 32767, 32768, 60999,
                  61000, 65535)

    def __init__(self, rng: random.Random, population: Population) -> None:
        self.rng, self.population = rng, population

    @property
    def ports(self) -> list[int]:
        return sorted(set(self.population.ports) | set(self.THRESHOLDS))

    def port(self) -> str:
        r = self.rng.random()
        if r < 0.05:
            return self.rng.choice(["*", "ssh", "http", "https", "0x50", "0120", "70000",
                                    "-1", "[443]", "*9"])
        value = str(self.rng.choice(self.ports))
        return ":" + value if r < 0.5 else value

    def host(self) -> str:
        addr = self.rng.choice(ADDRESSES)
        port = self.port().removeprefix(":")
        if addr == "*":
            return self.rng.choice(["*", "*:" + port, ":" + port])
        # every form takes a port: ss looks for the last ':' after any '/'
        return addr + ":" + port if self.rng.random() < 0.3 else addr

    def atom(self) -> list[str]:
        rng = self.rng
        kind = rng.choices(["port", "host", "dev", "auto"], [10, 8, 1, 1])[0]
        if kind == "port":
            op = rng.choice(list(OPERATORS))
            return [w for w in (rng.choice(["sport", "dport"]),
                                rng.choice(OPERATORS[op]), self.port()) if w]
        if kind == "host":
            eq = rng.choice(["", "", "=", "==", "eq"])
            return [w for w in (rng.choice(["src", "dst"]), eq, self.host()) if w]
        if kind == "dev":
            return ["dev", rng.choice(["", "=", "!=", "ne"]),
                    rng.choice(["lo", "1", "0", "if1", "0x1"])]
        return ["autobound"]

    def expr(self, depth: int = 0) -> list[str]:
        rng = self.rng
        r = rng.random()
        if depth >= 3 or r < 0.35:
            words = self.atom()
        elif r < 0.5:
            words = [rng.choice(NOT_WORDS), *self.group(depth + 1)]
        else:
            words = self.expr(depth + 1)
            for _ in range(rng.randint(1, 3)):
                joiner = rng.choice(AND_WORDS + OR_WORDS)
                words += ([joiner] if joiner else []) + self.group(depth + 1)
        return [w for w in words if w]

    def group(self, depth: int) -> list[str]:
        inner = self.expr(depth)
        if len(inner) > 3 or self.rng.random() < 0.2:
            return ["(", *inner, ")"]
        return inner

    def words(self) -> list[str]:
        rng = self.rng
        words: list[str] = []
        for _ in range(rng.choice([0, 0, 1, 1, 2])):
            words += [rng.choice(["state", "state", "exclude", "excl"]), rng.choice(STATE_NAMES)]
        if rng.random() < 0.85:
            words += self.expr()
        if rng.random() < 0.05:  # a broken filter: both must refuse it
            words.insert(rng.randint(0, len(words)), rng.choice(BROKEN))
        if len(words) > 3 and rng.random() < 0.2:  # ss splits words again on spaces
            i = rng.randint(0, len(words) - 2)
            words[i:i + 2] = [words[i] + rng.choice([" ", "\t", "  "]) + words[i + 1]]
        if rng.random() < 0.1:  # a backslash escapes the next character
            words = [w.replace("(", "\\(").replace(")", "\\)") for w in words]
        return words


def _endpoint(text: str) -> tuple[str, int]:
    addr, _, port = text.rpartition(":")
    if addr.startswith("["):
        addr = addr[1:-1]
    addr = addr.partition("%")[0]  # bound device suffix, as in 127.0.0.1%lo
    return ("::" if addr == "*" else addr), (0 if port == "*" else int(port))


def ss_rows(netns: str, words: list[str]) -> set[tuple] | None:
    """What `ss -Htan EXPR` lists as (state, local, peer); None when it refuses."""
    proc = subprocess.run(["ip", "netns", "exec", netns, "ss", "-Htan", "--", *words],
                          capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        return None
    rows = set()
    for line in proc.stdout.splitlines():
        fields = line.split()
        if len(fields) == 4:  # one state only: ss leaves the State column out
            fields = ["-", *fields]
        rows.add((fields[0], *_endpoint(fields[3]), *_endpoint(fields[4])))
    return rows


def our_rows(netns: str, words: list[str]) -> set[tuple] | None:
    try:
        query = Query.build(words)
    except FilterSyntaxError:
        return None
    snap = inventory.scan(query, netns=netns, owners=False)
    return {(SS_COLUMN_NAMES[s.state], s.local_addr, s.local_port, s.peer_addr, s.peer_port)
            for s in snap.sockets}


def compare(netns: str, words: list[str]) -> tuple[str, int | None]:
    """('' when ss and we agree, else the difference; rows ss listed, None if it refused)."""
    theirs, ours = ss_rows(netns, words), our_rows(netns, words)
    if theirs is None or ours is None:
        if theirs is ours:
            return "", None
        return ("ss refuses it but we accept it" if theirs is None else
                "ss accepts it but we refuse it"), None if theirs is None else len(theirs)
    if any(row[0] == "-" for row in theirs):
        if len({row[0] for row in ours}) > 1:
            return f"ss shows one state, we matched several: {sorted(ours)}", len(theirs)
        theirs, ours = {r[1:] for r in theirs}, {r[1:] for r in ours}
    if theirs == ours:
        return "", len(theirs)
    return f"only ss: {sorted(theirs - ours)}; only ours: {sorted(ours - theirs)}", len(theirs)


class Population:
    """The holder's sockets in one namespace; rebuilt in a fresh one when it gets old.

    TIME-WAIT sockets vanish 60 s after they were made: a comparison running
    while one expires could see it on one side only, so a population older
    than MAX_AGE is replaced before the next comparison.
    """

    MAX_AGE = 40.0

    def __init__(self, lab: Lab, request: pytest.FixtureRequest) -> None:
        self.request = request  # a lab made later must be allowed its stuck sockets too
        self.labs: list[Lab] = []
        self.netns, self.ports, self.born = "", [], 0.0
        self.fill(lab)

    def fill(self, lab: Lab) -> None:
        netns = lab.server.netns
        for addr in ("fd00:1::1/128", "fd00:1::2/128"):
            subprocess.run(["ip", "-n", netns, "addr", "add", addr, "dev", "lo", "nodad"],
                           check=True)
        report = Script(lab, lab.server, HOLDER).read()
        assert isinstance(report, dict)
        self.netns, self.ports, self.born = netns, report["ports"], time.monotonic()

    def fresh(self) -> str:
        if time.monotonic() - self.born > self.MAX_AGE:
            lab = Lab(f"t{os.getpid() % 10000}", pair=False)
            self.labs.append(lab)
            lab.up()
            allow_stuck_sockets_in(self.request, lab)
            self.fill(lab)
        return self.netns

    def close(self) -> None:
        for lab in self.labs:
            lab.down()


@pytest.fixture
def population(solo: Lab, request: pytest.FixtureRequest) -> Iterator[Population]:
    pop = Population(solo, request)
    yield pop
    pop.close()


def test_population_is_varied(population: Population) -> None:
    netns = population.fresh()
    rows = ss_rows(netns, [])
    assert rows is not None
    states = {row[0] for row in rows}
    assert {"LISTEN", "ESTAB", "CLOSE-WAIT", "FIN-WAIT-2", "TIME-WAIT", "SYN-SENT",
            "SYN-RECV"} <= states
    assert any(row[1].startswith("::ffff:") for row in rows)
    assert any(row[1] == "::1" for row in rows) and any(row[1] == "127.0.0.5" for row in rows)
    problem, listed = compare(netns, [])
    assert problem == "" and listed == len(rows)


# Cases where ss's answer surprised us; each is checked against the real ss too.
FIXED = [
    "sport = :80 or sport = :22 and dport = :1",   # one precedence level, left to right
    "! sport = :80 dport = :1",
    "src 127.0.0.1",                                # also the v4-mapped sockets
    "not src 0.0.0.0/8",                            # ss's own check compares raw bits
    "not dst ::/0",                                 # lists nothing at all
    "src localhost",                                # only the first address reaches the kernel
    "not src inet:127.0.0.1",                       # 'inet:' limits the whole listing to v4
    "src inet:127.0.0.1 or src inet6:[::1]",        # ... and the last such prefix wins
    "dev lo or src ::/0",                           # no bytecode with dev: everything matches
    "sport < 70000",                                # the kernel keeps 16 bits: sport < 4464
    "sport > -1",
    "sport >= *",
    "sport = -1",
    "not autobound",                                # accepted sockets count as autobound
    "state established exclude established",        # empty state set: ss's default set
    "state syn-recv",
    "state listening sport = :80",
    "src 127.1",                                    # 127.1.0.0, not inet_aton's 127.0.0.1
    "src 127.0.0.1/any",
    "src ::1",                                      # refused: needs brackets or a /len
    "sport = 08",                                   # refused: octal
    "state listening\tsport = :1024",               # one word: not a state word for ss
]


def test_surprising_cases_match_ss(population: Population) -> None:
    failures = []
    for text in FIXED:
        words = text.split(" ") if "\t" not in text else [text]
        problem, _ = compare(population.fresh(), words)
        if problem:
            failures.append(f"{text!r}: {problem}")
    assert not failures, "\n".join(failures)


def test_random_expressions_match_ss(population: Population,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    seed = int(os.environ.get("SSFILTER_SEED", random.randrange(1 << 32)))
    with capsys.disabled():
        print(f"\nss differential: seed={seed} (SSFILTER_SEED={seed} to replay)")
    gen = Generator(random.Random(seed), population)
    failures, listed = [], []
    for _ in range(EXPRESSIONS):
        netns = population.fresh()
        words = gen.words()
        problem, count = compare(netns, words)
        listed.append(count)
        if problem:
            failures.append(f"{words!r}: {problem}")
    total = len(ss_rows(population.fresh(), []) or ())
    refused = listed.count(None)
    some = sum(1 for n in listed if n and n < total)
    with capsys.disabled():
        print(f"ss differential: {len(listed)} filters, {refused} refused by both, "
              f"{some} listing some but not all of the {total} sockets")
    assert not failures, f"seed={seed}: {len(failures)} mismatches:\n" + "\n".join(failures[:10])
    # the comparison must have had something to compare
    assert refused < EXPRESSIONS // 4 and some > EXPRESSIONS // 3, f"seed={seed}: weak sample"


def test_filter_file_matches_ss(population: Population, tmp_path: os.PathLike) -> None:
    netns = population.fresh()
    path = os.path.join(tmp_path, "filter")
    with open(path, "w") as f:
        f.write("# comment\n( sport = :80 or\n  sport = :443 )\n0 ignored by ss\n"
                "and not dst 127.0.0.3\n")
    proc = subprocess.run(["ip", "netns", "exec", netns, "ss", "-Htan", "-F", path],
                          capture_output=True, text=True, timeout=30, check=True)
    theirs = {(f[0], *_endpoint(f[3]), *_endpoint(f[4]))
              for f in (line.split() for line in proc.stdout.splitlines())}
    ours = our_rows_file(netns, path)
    assert theirs and theirs == ours


def our_rows_file(netns: str, path: str) -> set[tuple]:
    snap = inventory.scan(Query.build(filter_file=path), netns=netns, owners=False)
    return {(SS_COLUMN_NAMES[s.state], s.local_addr, s.local_port, s.peer_addr, s.peer_port)
            for s in snap.sockets}
