"""The ss filter language: grammar, semantics on synthetic sockets, errors, properties.

Expected answers for the odd cases come from running iproute2 6.1's ss; the
integration test tests/integration/test_ss_differential.py checks the same
cases against the real ss on live sockets.
"""

from __future__ import annotations

import io
import ipaddress
import itertools
import socket
from dataclasses import dataclass
from pathlib import Path

import msgspec
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from sockdoctor import ssfilter
from sockdoctor.errors import FilterSyntaxError, NotFoundError, PermissionDeniedError
from sockdoctor.linux import procfs
from sockdoctor.model import Netns, Socket, TcpState
from sockdoctor.query import Query
from sockdoctor.ssfilter import (
    SS_ALL,
    SS_CONN,
    evaluate,
    leaves,
    parse,
    read_filter_file,
    states_from_names,
)

LOCALHOST = [ssfilter.Prefix(socket.AF_INET, 32, 0x7F000001 << 96),
             ssfilter.Prefix(socket.AF_INET6, 128, 1)]


@pytest.fixture(autouse=True)
def no_dns(monkeypatch: pytest.MonkeyPatch) -> None:
    """Host names resolve from a fixed table: tests never ask DNS."""
    table = {"localhost": LOCALHOST}

    def fake(name: str, fam: int) -> list[ssfilter.Prefix]:
        return [p for p in table.get(name, []) if fam in (0, p.family)]
    monkeypatch.setattr(ssfilter, "resolve_host", fake)


def sk(local: str, lport: int, peer: str = "10.9.9.9", pport: int = 50000, *,
       state: int = TcpState.ESTABLISHED, ifindex: int = 0) -> Socket:
    family = socket.AF_INET6 if ":" in local else socket.AF_INET
    return Socket(netns=1, family=family, state=state, local_addr=local, local_port=lport,
                  peer_addr=peer, peer_port=pport, inode=1, cookie=1, uid=0, recv_q=0,
                  send_q=0, ifindex=ifindex)


def matches(text: str, s: Socket) -> bool:
    expr = parse(text.split(" ")).expr
    assert expr is not None
    return expr.match(s)


def tree(text: str) -> str:
    expr = parse(text.split(" ")).expr
    return str(expr)


V4 = sk("127.0.0.1", 80, "127.0.0.2", 40000)
V6 = sk("::1", 443, "::1", 50000)
MAPPED = sk("::ffff:127.0.0.1", 8443, "::ffff:127.0.0.3", 36000)
LISTEN6 = sk("::", 8443, "::", 0, state=TcpState.LISTEN)
BOUND_LO = sk("127.0.0.1", 8080, ifindex=1)


# --- words and tokens ---------------------------------------------------------

def test_words_are_split_again_on_spaces_and_tabs() -> None:
    assert tree("sport = :80") == tree("sport\t=  :80") == "sport = :80"
    assert str(parse(["sport = :80 or", "dport = :1"]).expr) == "sport = :80 | dport = :1"


def test_backslash_escapes_the_next_character() -> None:
    assert str(parse([r"\( sport = \:80 \)"]).expr) == "sport = :80"
    tokens = ssfilter.tokens.split_word(r"a\ b c\\", 10)
    assert [(t.text, t.pos) for t in tokens] == [("a b", 10), ("c\\", 15)]


def test_parentheses_must_be_words_of_their_own() -> None:
    with pytest.raises(FilterSyntaxError):
        parse(["(sport", "=", ":80)"])


# --- states -------------------------------------------------------------------

def bit(*states: int) -> int:
    return sum(1 << s for s in states)


@pytest.mark.parametrize(("name", "mask"), [
    ("established", bit(TcpState.ESTABLISHED)), ("syn-sent", bit(TcpState.SYN_SENT)),
    ("syn-recv", bit(TcpState.SYN_RECV)), ("syn-rcv", bit(TcpState.SYN_RECV)),
    ("fin-wait-1", bit(TcpState.FIN_WAIT1)), ("fin-wait-2", bit(TcpState.FIN_WAIT2)),
    ("time-wait", bit(TcpState.TIME_WAIT)), ("closed", bit(TcpState.CLOSE)),
    ("close", bit(TcpState.CLOSE)), ("unconnected", bit(TcpState.CLOSE)),
    ("close-wait", bit(TcpState.CLOSE_WAIT)), ("last-ack", bit(TcpState.LAST_ACK)),
    ("listening", bit(TcpState.LISTEN)), ("closing", bit(TcpState.CLOSING)),
    ("unknown", 1), ("all", SS_ALL), ("CLOSE-WAIT", bit(TcpState.CLOSE_WAIT)),
    ("connected", SS_ALL & ~bit(TcpState.CLOSE, TcpState.LISTEN)),
    ("synchronized", SS_ALL & ~bit(TcpState.CLOSE, TcpState.LISTEN, TcpState.SYN_SENT)),
    ("bucket", bit(TcpState.SYN_RECV, TcpState.TIME_WAIT)),
    ("big", SS_ALL & ~bit(TcpState.SYN_RECV, TcpState.TIME_WAIT)),
])
def test_state_names_and_groups(name: str, mask: int) -> None:
    assert parse(["state", name]).states == mask
    assert parse(["exclude", name]).states == (SS_ALL & ~mask or SS_CONN)


def test_state_words_accumulate_in_order() -> None:
    assert parse([]).states is None
    assert parse(["sport", "=", ":1"]).states is None
    assert parse(["state", "listening", "state", "close-wait"]).states == bit(
        TcpState.LISTEN, TcpState.CLOSE_WAIT)
    assert parse(["state", "connected", "excl", "established"]).states == (
        SS_ALL & ~bit(TcpState.CLOSE, TcpState.LISTEN, TcpState.ESTABLISHED))
    assert parse(["exclude", "listening", "state", "listening"]).states == SS_ALL
    parsed = parse(["state", "listening", "sport", "=", ":22"])
    assert parsed.states == bit(TcpState.LISTEN) and str(parsed.expr) == "sport = :22"


def test_an_empty_state_set_falls_back_to_ss_default() -> None:
    # ss ignores a state mask of 0 and keeps its built-in default set
    assert parse(["state", "established", "exclude", "established"]).states == SS_CONN
    assert parse(["exclude", "all"]).states == SS_CONN


def test_state_words_only_count_at_the_start_and_whole() -> None:
    for words in (["sport", "=", ":1", "state", "listening"], ["state listening"],
                  ["State", "listening"]):
        with pytest.raises(FilterSyntaxError):
            parse(words)


@pytest.mark.parametrize(("words", "position", "fragment"), [
    (["state"], 5, "expected a state name after 'state'"),
    (["state", "listen"], 6, "'listen' is not a state name"),
    (["exclude", "bogus", "state", "all"], 8, "'bogus' is not a state name"),
])
def test_state_errors(words: list[str], position: int, fragment: str) -> None:
    with pytest.raises(FilterSyntaxError) as info:
        parse(words)
    assert info.value.position == position and fragment in str(info.value)


def test_states_from_names_accepts_friendly_spellings() -> None:
    assert states_from_names(["CLOSE_WAIT", "listen", "estab"]) == bit(
        TcpState.CLOSE_WAIT, TcpState.LISTEN, TcpState.ESTABLISHED)
    assert states_from_names(["fin-wait2", "bucket"]) == bit(
        TcpState.FIN_WAIT2, TcpState.SYN_RECV, TcpState.TIME_WAIT)
    with pytest.raises(FilterSyntaxError, match="'napping' is not a TCP state"):
        states_from_names(["napping"])


# --- grammar ------------------------------------------------------------------

@pytest.mark.parametrize(("text", "canonical"), [
    # one precedence level, grouped from the left, unlike C or SQL
    ("sport = :1 or sport = :2 and sport = :3", "( sport = :1 | sport = :2 ) & sport = :3"),
    ("sport = :1 and sport = :2 or sport = :3", "( sport = :1 & sport = :2 ) | sport = :3"),
    ("sport = :1 or sport = :2 or sport = :3", "sport = :1 | sport = :2 | sport = :3"),
    ("sport = :1 sport = :2", "sport = :1 & sport = :2"),
    ("sport = :1 or sport = :2 sport = :3", "( sport = :1 | sport = :2 ) & sport = :3"),
    ("! sport = :1 dport = :2", "! sport = :1 & dport = :2"),
    ("not not sport = :1", "! ! sport = :1"),
    ("sport = :1 or ( sport = :2 and sport = :3 )", "sport = :1 | ( sport = :2 & sport = :3 )"),
    ("( ( ( sport = :1 ) ) )", "sport = :1"),
    ("not ( sport = :1 or sport = :2 )", "! ( sport = :1 | sport = :2 )"),
    ("src 127.0.0.1", "src 127.0.0.1"),
    ("dst = 10.0.0.0/8:80", "dst 10.0.0.0/8:80"),
    ("sport :22", "sport = :22"),
    ("sport > 1024", "! sport <= 1024"),
    ("dport < 1024", "! dport >= 1024"),
    ("dport != 80", "! dport = 80"),
    ("dev != lo", "! dev = lo"),
    ("autobound", "autobound"),
])
def test_structure(text: str, canonical: str) -> None:
    assert tree(text) == canonical


@pytest.mark.parametrize(("base", "spellings"), [
    ("=", ["==", "eq"]), ("!=", ["ne", "neq"]), (">", ["gt"]), ("<", ["lt"]),
    (">=", ["ge", "geq"]), ("<=", ["le", "leq"]),
])
def test_every_operator_spelling(base: str, spellings: list[str]) -> None:
    for kw in ("sport", "dport"):
        for spelling in spellings:
            assert tree(f"{kw} {spelling} :80") == tree(f"{kw} {base} :80")


@pytest.mark.parametrize("spelling", ["and", "&", "&&", ""])
def test_and_spellings(spelling: str) -> None:
    text = f"sport = :1 {spelling} dport = :2".replace("  ", " ")
    assert tree(text) == "sport = :1 & dport = :2"


@pytest.mark.parametrize("spelling", ["or", "|", "||"])
def test_or_spellings(spelling: str) -> None:
    assert tree(f"sport = :1 {spelling} dport = :2") == "sport = :1 | dport = :2"


@pytest.mark.parametrize("spelling", ["src", "src =", "src ==", "src eq"])
def test_address_equal_spellings(spelling: str) -> None:
    assert tree(f"{spelling} 127.0.0.1") == "src 127.0.0.1"


# --- errors -------------------------------------------------------------------

@pytest.mark.parametrize(("text", "position", "fragment"), [
    ("dport = )", 8, "expected a port after 'dport =' but found ')'"),
    ("sport = :80 and", 15, "expected a condition after 'and' but the filter ended"),
    ("and sport = :80", 0, "expected a condition but found 'and'"),
    ("( )", 2, "expected a condition inside '( )'"),
    ("( sport = :80", 13, "expected ')' but the filter ended"),
    ("sport = :80 )", 12, "found ')' without a matching '('"),
    ("src != 1.2.3.4", 4, "'!=' cannot follow 'src'; write 'not src ...' instead"),
    ("src > 1.2.3.4", 4, "'>' cannot follow 'src'"),
    ("dev > lo", 4, "'>' cannot follow 'dev'"),
    ("src", 3, "expected an address after 'src' but the filter ended"),
    ("sport = :80 :81", 12, "expected 'and', 'or' or another condition but found ':81'"),
    ("src ::1", 4, "write IPv6 addresses in brackets"),
    ("src 1.2.3.999", 4, "'1.2.3.999' is not an address"),
    ("src [::1", 4, "opens '[' without closing it"),
    ("sport = 08", 8, "'08' is not a port number or a TCP service name"),
    ("sport = \x00", 8, "is not a port number"),
    ("sport = 1:2", 8, "is not a port number"),
    ("dst 10.0.0.1:nosuchservice", 4, "'nosuchservice' in '10.0.0.1:nosuchservice'"),
    ("fwmark 0x1", 0, "'fwmark' conditions are not supported"),
    ("cgroup /", 0, "'cgroup' conditions are not supported"),
    ("src unix:/tmp/x", 4, "'unix:' addresses never match TCP sockets"),
    ("dev nosuchdevice0", 4, "is not a network device"),
    ("sport = :1 state listening", 11, "'state' must come first"),
    ("src inet:1.2.3.4 or src [::1]", 24, "'::1' is not an IPv4 address, and an 'inet:'"),
])
def test_errors_point_at_the_token(text: str, position: int, fragment: str) -> None:
    with pytest.raises(FilterSyntaxError) as info:
        parse(text.split(" "))
    err = info.value
    assert err.text == text and err.position == position
    assert fragment in str(err)
    assert f"\n  {text}\n  {' ' * position}^" in str(err)  # the caret for the CLI


def test_error_positions_count_whole_words() -> None:
    with pytest.raises(FilterSyntaxError) as info:
        parse(["state", "listening", "sport = :80 or", ")"])
    assert info.value.text == "state listening sport = :80 or )"
    assert info.value.position == len("state listening sport = :80 or ")


def test_very_deep_nesting_is_refused_cleanly() -> None:
    with pytest.raises(FilterSyntaxError, match="nested too deeply"):
        parse(["("] * 500 + ["sport", "=", ":1"] + [")"] * 500)


# --- semantics ----------------------------------------------------------------

@pytest.mark.parametrize(("text", "sock", "expected"), [
    ("sport = :80", V4, True), ("sport = 80", V4, True), ("sport = :81", V4, False),
    ("dport = :40000", V4, True), ("sport = ssh", sk("10.0.0.1", 22), True),
    ("sport = http", V4, True), ("sport = 0x50", V4, True), ("sport = 0120", V4, True),
    ("sport = [80]", V4, True), ("sport = *", V4, True), ("sport = *99", V4, True),
    ("sport = -1", V4, True), ("sport != :80", V4, False),
    ("sport > 79", V4, True), ("sport > 80", V4, False), ("sport >= 80", V4, True),
    ("sport < 81", V4, True), ("sport < 80", V4, False), ("sport <= 80", V4, True),
    ("src 127.0.0.1", V4, True), ("src 127.0.0.2", V4, False), ("dst 127.0.0.2", V4, True),
    ("src 127.0.0.0/8", V4, True), ("src 127.0.0.0/255.0.0.0", V4, True),
    ("src 127.0.0.0/0x8", V4, True), ("src 127/8", V4, True), ("src 127.1", V4, False),
    ("src 127.1", sk("127.1.0.0", 1), True), ("src 0177.0.0.1", V4, True),
    ("src 127.0.0.1:80", V4, True), ("src 127.0.0.1:81", V4, False),
    ("src 127.0.0.0/8:80", V4, True), ("src *:80", V4, True), ("src *80", V4, True),
    ("src :80", V4, True), ("src *", V6, True), ("src 127.0.0.1:", V4, True),
    ("src [127.0.0.1]:80", V4, True), ("src [::1]:443", V6, True), ("src [::1]443", V6, True),
    ("src [::1]", V4, False), ("src ::1/128", V6, True), ("src ::1/128:443", V6, True),
    ("src any", V6, True), ("src default", V4, True), ("src all:80", V4, True),
    ("src 127.0.0.1/any", LISTEN6, False), ("src 127.0.0.1/any", MAPPED, True),
    # a v4 condition also selects v4-mapped IPv6 sockets; a v6 one never selects v4 sockets
    ("src 127.0.0.1", MAPPED, True), ("dst 127.0.0.3", MAPPED, True),
    ("src [::ffff:127.0.0.1]", MAPPED, True), ("src [::ffff:127.0.0.1]", V4, False),
    ("src 0.0.0.0/0", V6, False), ("src 0.0.0.0/0", MAPPED, True),
    ("src ::/0", V4, False), ("src ::/0", MAPPED, True),
    ("dev lo", BOUND_LO, True), ("dev 1", BOUND_LO, True), ("dev if1", BOUND_LO, True),
    ("dev 0x1", BOUND_LO, True), ("dev lo", V4, False), ("dev 0", V4, True),
    ("dev != lo", V4, True),
])
def test_match(text: str, sock: Socket, expected: bool) -> None:
    assert matches(text, sock) is expected


@pytest.mark.parametrize(("text", "sock", "expected"), [
    # the kernel keeps 16 bits of a compared port, ss itself compares ints: both must agree
    ("sport < 70000", sk("10.0.0.1", 4463), True),
    ("sport < 70000", sk("10.0.0.1", 4464), False),
    ("sport >= 70000", sk("10.0.0.1", 65535), False),
    ("sport > -1", sk("10.0.0.1", 1), False),
    ("sport >= *", sk("10.0.0.1", 65534), False),  # '*' is -1: 65535 to the kernel
    ("sport >= *", sk("10.0.0.1", 65535), True),
    ("sport <= *", sk("10.0.0.1", 1), False),
    ("not sport <= *", sk("10.0.0.1", 1), False),
    # ss compares raw address bits whatever the family, the kernel does not
    ("not src 0.0.0.0/8", V6, False),
    ("not src 0.0.0.0/16", MAPPED, False),
    ("not src 0.0.0.0/8", V4, True),
    ("not dst ::/0", V4, False),
    ("not dst ::/0", V6, False),
    # a host name: ss checks every address, the kernel only the first
    ("src localhost", sk("127.0.0.1", 1), True),
    ("src localhost", MAPPED, True),
    ("src localhost", V6, False),
    # with `dev` there is no bytecode: only ss's own (raw bit) verdict counts
    ("dev lo or src ::/0", V4, True),
    ("dev 7 or src ::/0", V4, True),
    # 'inet:'/'inet6:' limit the whole listing to one family, wherever they stand
    ("src inet:127.0.0.1", MAPPED, False),
    ("not src inet:127.0.0.1", V6, False),
    ("not src inet:127.0.0.1", sk("127.0.0.2", 1), True),
    ("src inet:127.0.0.1 or src inet6:[::1]", V4, False),
    ("src inet:127.0.0.1 or src inet6:[::1]", V6, True),
    ("src inet:127.0.0.1 or src inet6:[::1]", MAPPED, True),
    ("sport = inet6:443", V6, True),
    ("src inet:127.0.0.1 or src default", LISTEN6, False),
])
def test_match_quirks(text: str, sock: Socket, expected: bool) -> None:
    assert matches(text, sock) is expected


def autobound_in(text: str, ranges: dict[int, str]) -> ssfilter.Expr:
    """`text` compiled, having learned each namespace's recorded port range."""
    expr = parse(text.split(" ")).expr
    assert expr is not None
    expr.learn([Netns(inode=ns, name=f"ns{ns}", kind="named",
                      sysctls={"net.ipv4.ip_local_port_range": r} if r else {})
                for ns, r in ranges.items()])
    return expr


def test_autobound() -> None:
    expr = autobound_in("autobound", {1: "32768 60999"})
    client = sk("127.0.0.1", 40000)
    server_side = sk("127.0.0.1", 80)
    listener = sk("127.0.0.1", 40000, state=TcpState.LISTEN)
    assert expr.match(client)
    assert not expr.match(server_side) and not expr.match(listener)
    # the kernel counts accepted sockets as autobound: `not autobound` skips them
    negated = autobound_in("not autobound", {1: "32768 60999"})
    assert not negated.match(server_side)
    assert negated.match(sk("0.0.0.0", 22, state=TcpState.LISTEN))


def test_autobound_judges_each_socket_by_its_own_namespace() -> None:
    expr = autobound_in("autobound", {1: "32768 60999", 2: "10000 10099", 3: ""})
    here, there, old_file = (msgspec.structs.replace(sk("10.0.0.1", port), netns=ns)
                             for ns, port in ((1, 10050), (2, 10050), (3, 40000)))
    assert not expr.match(here) and expr.match(there)
    # a namespace recorded without a range (an older file): the kernel's default range
    assert expr.match(old_file)
    assert not expr.match(msgspec.structs.replace(old_file, local_port=10050))
    # `dev` leaves only ss's own verdict: the same rule there
    dev = autobound_in("autobound and not dev lo", {1: "32768 60999", 2: "10000 10099"})
    assert dev.match(there) and not dev.match(here)


def test_autobound_outside_any_snapshot_reads_this_namespace(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    sysctl = tmp_path / "sys/net/ipv4/ip_local_port_range"
    sysctl.parent.mkdir(parents=True)
    sysctl.write_text("20000\t20010\n")
    monkeypatch.setattr(procfs, "PROC", str(tmp_path))
    expr = autobound_in("autobound", {})
    assert expr.match(sk("127.0.0.1", 20005)) and not expr.match(sk("127.0.0.1", 40000))
    sysctl.unlink()  # read once: what the filter took stays
    assert expr.match(sk("127.0.0.1", 20010))
    assert ssfilter.PortRanges().here() == (1024, 4999)  # unreadable: ss's own fallback


def test_dev_turns_off_the_kernel_verdict() -> None:
    assert parse(["dev", "lo", "or", "sport", "=", ":1"]).expr.kernel is False
    assert parse(["sport", "=", ":1"]).expr.kernel is True


def test_address_memo_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(leaves, "_CACHE_LIMIT", 4)
    expr = parse(["src", "10.0.0.0/8"]).expr
    assert expr is not None
    results = [expr.match(sk(f"10.0.0.{i}", 1)) for i in range(20)]
    results += [expr.match(sk(f"11.0.0.{i}", 1)) for i in range(20)]
    assert results == [True] * 20 + [False] * 20


# --- filter files -------------------------------------------------------------

def test_filter_file(tmp_path: pytest.TempPathFactory) -> None:
    path = tmp_path / "f"  # type: ignore[operator]
    path.write_text("# a comment\nsport = :80 or\n0 is a comment too for ss\n  dport = :1\n"
                    "state\n")
    words = read_filter_file(str(path))
    assert words == ["sport = :80 or", "  dport = :1", "\\state"]
    with pytest.raises(FilterSyntaxError, match="'state' must come first"):
        parse(words)


def test_filter_file_words_follow_the_command_line(tmp_path: pytest.TempPathFactory) -> None:
    path = tmp_path / "f"  # type: ignore[operator]
    path.write_text("dport = :22\n")
    q = Query.build(["state", "established", "sport", "=", ":1"], filter_file=str(path))
    assert q.text == "state established sport = :1 dport = :22"
    assert str(q.expr) == "sport = :1 & dport = :22"


def test_filter_file_errors(tmp_path: pytest.TempPathFactory) -> None:
    with pytest.raises(NotFoundError, match="does not exist"):
        read_filter_file(str(tmp_path / "missing"))  # type: ignore[operator]
    long = tmp_path / "long"  # type: ignore[operator]
    long.write_text("sport = :1 " + " " * 1011 + "\n")  # 1022 with its newline: too long
    with pytest.raises(FilterSyntaxError, match=r"line 1 .* is longer"):
        read_filter_file(str(long))
    long.write_text("sport = :1 " + " " * 1010 + "\n")
    assert len(read_filter_file(str(long))) == 1


def test_filter_file_permission(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_a: object, **_k: object) -> None:
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(ssfilter.tokens, "open", refuse, raising=False)
    with pytest.raises(PermissionDeniedError):
        read_filter_file("/some/file")


def test_filter_file_from_stdin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("sport = :1\n"))
    assert read_filter_file("-") == ["sport = :1"]


# --- properties ---------------------------------------------------------------

GARBAGE_WORDS = st.sampled_from([
    "(", ")", "!", "not", "and", "&", "&&", "or", "|", "||", "src", "dst", "sport", "dport",
    "dev", "autobound", "=", "==", "!=", ">", "<", ">=", "<=", "eq", "ne", "gt", "lt", "ge",
    "le", "state", "exclude", "listening", "all", ":80", "80", "*", "*:22", "[::1]",
    "[::1]:22", "127.0.0.1", "10.0.0.0/8", "::/0", "localhost", "inet:", "inet6:[::1]",
    "lo", "0x10", "-1", "70000", "\\", "\\(", "[", "]", "/", ":", "1.2.3.4/33", "ssh",
    "fwmark", "unix:x",
])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(GARBAGE_WORDS, st.text(max_size=12)), max_size=12))
@example(["src", "\\"])  # a lone backslash once made an empty address that rendered as 'src '
def test_garbage_raises_only_filter_syntax_errors(words: list[str]) -> None:
    try:
        parsed = parse(words)
    except FilterSyntaxError as err:
        assert 0 <= err.position <= len(" ".join(words))
        assert str(err).strip()
        return
    if parsed.expr is not None:  # whatever parsed must also evaluate and render
        for s in (V4, V6, MAPPED, BOUND_LO):
            assert isinstance(parsed.expr.match(s), bool)
        assert str(parse([str(parsed.expr)]).expr) == str(parsed.expr)


# Generated trees over conditions on which the kernel and ss agree, so the
# reference below can use plain meanings: the property checks the grammar
# (precedence, grouping, spellings, word splitting) and the evaluation.

@dataclass(frozen=True)
class Cond:
    text: str
    test: object  # Callable[[Socket], bool]
    atomic: bool = True  # usable as an operand without parentheses


PREFIXES = ["10.0.0.0/8", "10.1.0.0/16", "127.0.0.1", "127.0.0.0/30", "192.168.1.0/24",
            "[::1]", "[fe80::/10]", "[::ffff:10.0.0.0/104]"]
SOCKETS = st.builds(
    sk,
    st.sampled_from(["10.0.0.1", "10.1.2.3", "127.0.0.1", "127.0.0.3", "192.168.1.9", "::1",
                     "fe80::1", "::ffff:10.0.0.1", "::ffff:127.0.0.2", "2001:db8::1"]),
    st.integers(0, 65535),
    st.sampled_from(["10.0.0.2", "127.0.0.2", "::1", "::ffff:192.168.1.1", "fe80::2"]),
    st.integers(0, 65535),
)
PORT_OPS = {"": int.__eq__, "=": int.__eq__, "==": int.__eq__, "eq": int.__eq__,
            "!=": int.__ne__, "ne": int.__ne__, "neq": int.__ne__, ">": int.__gt__,
            "gt": int.__gt__, "<": int.__lt__, "lt": int.__lt__, ">=": int.__ge__,
            "ge": int.__ge__, "geq": int.__ge__, "<=": int.__le__, "le": int.__le__,
            "leq": int.__le__}


def _in_prefix(address: str, prefix: str) -> bool:
    net = ipaddress.ip_network(prefix.strip("[]"), strict=False)
    ip = ipaddress.ip_address(address)
    if net.version == 4 and ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.version == net.version and ip in net


@st.composite
def conditions(draw: st.DrawFn) -> Cond:
    side = draw(st.sampled_from(["s", "d"]))
    if draw(st.booleans()):
        op = draw(st.sampled_from(sorted(PORT_OPS)))
        port = draw(st.integers(0, 65535))
        spelled = draw(st.sampled_from([str(port), f":{port}", hex(port)]))
        attr = "local_port" if side == "s" else "peer_port"
        text = " ".join(w for w in (f"{side}port", op, spelled) if w)
        return Cond(text, lambda s: PORT_OPS[op](getattr(s, attr), port))
    prefix = draw(st.sampled_from(PREFIXES))
    attr = "local_addr" if side == "s" else "peer_addr"
    eq = draw(st.sampled_from(["", "=", "==", "eq"]))
    text = " ".join(w for w in ("src" if side == "s" else "dst", eq, prefix) if w)
    return Cond(text, lambda s: _in_prefix(getattr(s, attr), prefix))


def _operand(c: Cond) -> str:
    return c.text if c.atomic else f"( {c.text} )"


@st.composite
def expressions(draw: st.DrawFn, depth: int = 0) -> Cond:
    kind = draw(st.sampled_from(["leaf", "not", "chain"] if depth < 3 else ["leaf"]))
    if kind == "leaf":
        return draw(conditions())
    if kind == "not":
        inner = draw(expressions(depth + 1))
        word = draw(st.sampled_from(["!", "not"]))
        return Cond(f"{word} {_operand(inner)}", lambda s: not inner.test(s))  # type: ignore[operator]
    left = draw(expressions(depth + 1))
    text, test = left.text, left.test
    for _ in range(draw(st.integers(1, 3))):
        right = draw(expressions(depth + 1))
        op = draw(st.sampled_from(["and", "&", "&&", "", "or", "|", "||"]))
        # one precedence level grouped from the left: the left side needs no parentheses
        text = " ".join(w for w in (text, op, _operand(right)) if w)
        if op in ("or", "|", "||"):
            test = (lambda a, b: lambda s: a(s) or b(s))(test, right.test)
        else:
            test = (lambda a, b: lambda s: a(s) and b(s))(test, right.test)
    if draw(st.booleans()):
        return Cond(f"( {text} )", test)
    return Cond(text, test, atomic=False)


@st.composite
def worded(draw: st.DrawFn, text: str) -> list[str]:
    """Split the text into words, sometimes several tokens to a word as ss allows."""
    words = text.split(" ")
    out: list[str] = []
    for w in words:
        if out and draw(st.integers(0, 4)) == 0:
            out[-1] += draw(st.sampled_from([" ", "\t", "  "])) + w
        else:
            out.append(w)
    return out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_generated_expressions_match_their_meaning(data: st.DataObject) -> None:
    cond = data.draw(expressions())
    words = data.draw(worded(cond.text))
    expr = parse(words).expr
    assert expr is not None
    canonical = parse(str(expr).split(" ")).expr
    assert canonical is not None and str(canonical) == str(expr)
    for s in data.draw(st.lists(SOCKETS, min_size=1, max_size=8)):
        expected = cond.test(s)  # type: ignore[operator]
        assert expr.match(s) is expected, (cond.text, s)
        assert canonical.match(s) is expected


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_both_verdict_modes_agree_where_they_cannot_differ(data: st.DataObject) -> None:
    """The two-bit evaluator and the boolean one give the same answer on exact trees."""
    cond = data.draw(expressions())
    expr = parse(cond.text.split(" ")).expr
    assert expr is not None
    # force the two-bit path everywhere
    paired = evaluate._compile_pair(expr.tree, set(), expr.port_ranges)
    for s in data.draw(st.lists(SOCKETS, min_size=1, max_size=5)):
        assert (paired(s) == ssfilter.BOTH) is expr.match(s)


@pytest.mark.parametrize("n", [2, 3, 4, 5])
def test_and_and_or_of_n_parts_stop_where_python_would(n: int) -> None:
    """Unrolled for two and three parts, a loop beyond: each answers as all()/any()
    and calls no part after the one that decides."""
    for verdicts in itertools.product([True, False], repeat=n):
        for every in (True, False):
            called: list[int] = []
            parts = [lambda sk, i=i, v=v, seen=called: seen.append(i) or v
                     for i, v in enumerate(verdicts)]
            got = evaluate._junction(parts, every)(None)  # type: ignore[arg-type]
            assert got is (all(verdicts) if every else any(verdicts))
            decided = next((i for i, v in enumerate(verdicts) if v is not every), n - 1)
            assert called == list(range(decided + 1))


SPELLINGS = ("close-wait", "close_wait", "CLOSE-WAIT", "CLOSE_WAIT", "closewait", "Close_Wait",
             " close-wait ")


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_every_spelling_of_a_state_is_read_everywhere(spelling: str) -> None:
    cw = bit(TcpState.CLOSE_WAIT)
    assert states_from_names([spelling]) == cw
    assert parse(["state", spelling.strip()]).states == cw
    assert parse(["state", "all", "exclude", spelling.strip()]).states == SS_ALL & ~cw
    assert Query.build(states=[spelling]).states == cw


def test_multi_word_states_in_any_spelling() -> None:
    assert states_from_names(["FIN_WAIT_2", "finwait1", "Time_Wait", "SYN_RECV"]) == bit(
        TcpState.FIN_WAIT2, TcpState.FIN_WAIT1, TcpState.TIME_WAIT, TcpState.SYN_RECV)


def test_a_filter_file_may_start_with_state_words(tmp_path: pytest.TempPathFactory) -> None:
    path = tmp_path / "f"  # type: ignore[operator]
    path.write_text("state close-wait\n")
    assert Query.build(filter_file=str(path)).states == bit(TcpState.CLOSE_WAIT)
    path.write_text("# the leaks\nstate close_wait exclude listening\nsport = :80\n")
    q = Query.build(["state", "established"], filter_file=str(path))
    assert q.states == bit(TcpState.ESTABLISHED, TcpState.CLOSE_WAIT)
    assert str(q.expr) == "sport = :80"
    path.write_text("sport = :80\nstate close-wait\n")  # not at the head: still an error
    with pytest.raises(FilterSyntaxError, match="'state' must come first"):
        Query.build(filter_file=str(path))
