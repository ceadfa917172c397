"""Text from processes and the kernel: escaped on the terminal, exact in JSON.

The processes here are synthetic (the names a hostile local user could give a
process with prctl(PR_SET_NAME)); tests/integration/test_hostile_names.py does
the same with real processes.
"""

from __future__ import annotations

import json

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sockdoctor import jsontext, snapshot_io
from sockdoctor.doctor import diagnose, from_json, render_text, to_json
from sockdoctor.doctor.synth import SnapshotBuilder
from sockdoctor.render import fmt, summary, table
from sockdoctor.render.jsonout import write_json, write_ndjson

# ESC [31m, a newline, a byte that is not UTF-8 (read with surrogateescape), a backslash.
HOSTILE_BYTES = b"\x1b[31mRED\nx\xff\\"
HOSTILE = HOSTILE_BYTES.decode("utf-8", "surrogateescape")
SHOWN = "\\x1b[31mRED\\nx\\xff\\\\"


def hostile_snapshot():
    b = SnapshotBuilder()
    b.netns(HOSTILE)
    b.process(4242, HOSTILE, netns=HOSTILE)
    b.listener(8080, pid=4242, netns=HOSTILE)
    b.sockets(5, "close-wait", "10.0.0.1:8080", "10.0.0.2", pid=4242, netns=HOSTILE,
              age_ms=60_000, recv_q=1)
    snap = b.build()
    snap.processes[4242].cmdline = [HOSTILE, "--flag", "\udc80"]
    snap.warnings.append(f"a note about {HOSTILE}")
    return snap


def assert_clean(text: str) -> None:
    """Nothing a terminal would act on: no escape, no stray control or undecodable byte."""
    for line in text.split("\n"):
        assert line.isprintable(), repr(line)
    assert "\x1b" not in text and "\udcff" not in text


@pytest.mark.parametrize("raw, shown", [
    ("nginx", "nginx"), ("a\tb", "a\\tb"), ("\x1b[2J", "\\x1b[2J"), ("x\x7f", "x\\x7f"),
    ("\udcff\udc80", "\\xff\\x80"), ("a\\b", "a\\\\b"), ("\u200bzw", "\\u200bzw"),
    ("üñí", "üñí"),
])
def test_untrusted_escapes_what_a_terminal_acts_on(raw: str, shown: str) -> None:
    assert fmt.untrusted(raw) == shown


def test_table_and_summaries_show_the_name_escaped_on_one_line() -> None:
    snap = hostile_snapshot()
    cols = table.Columns(processes=True, netns=True)
    lines = list(table.render(snap, cols))
    assert len(lines) == 1 + len(snap.sockets)  # no row split by the newline
    assert_clean("\n".join(lines))
    assert f'users:(("{SHOWN}",pid=4242,fd=' in lines[1]
    assert SHOWN in lines[1]  # the Netns column too
    text = "\n".join(summary.render(snap))
    assert_clean(text)
    assert f"{SHOWN}(4242)" in text
    assert "6 TCP sockets" in text


def test_doctor_report_text_is_escaped_and_json_exact() -> None:
    report = diagnose(hostile_snapshot())
    text = render_text(report)
    assert_clean(text)
    assert f"{SHOWN} (pid 4242) holds 5 CLOSE-WAIT sockets" in text
    assert f"[netns {SHOWN}]" in text
    doc = json.loads(to_json(report))
    finding = doc["findings"][0]
    assert finding["processes"][0]["comm"] == list(HOSTILE_BYTES)  # exact bytes
    assert finding["netns"] == list(HOSTILE_BYTES)
    assert "\\xff" in finding["title"]  # composed text: readable, like the terminal's
    again = from_json(to_json(report))
    assert again.findings[0].processes[0].comm == HOSTILE


def test_snapshot_round_trip_keeps_the_exact_bytes() -> None:
    snap = hostile_snapshot()
    data = snapshot_io.dumps(snap)
    doc = json.loads(data)
    assert doc["processes"]["4242"]["comm"] == list(HOSTILE_BYTES)
    assert doc["processes"]["4242"]["cmdline"] == [list(HOSTILE_BYTES), "--flag", [0x80]]
    assert doc["namespaces"][-1]["name"] == list(HOSTILE_BYTES)
    back = snapshot_io.loads(data)
    # composed sentences show the byte as the terminal does; data fields stay exact
    assert back.warnings == ["a note about \x1b[31mRED\nx\\xff\\"]
    assert msgspec.structs.replace(back, warnings=snap.warnings) == snap
    proc = back.processes[4242]
    assert proc.comm.encode("utf-8", "surrogateescape") == HOSTILE_BYTES


def test_ls_json_and_ndjson_keep_the_exact_bytes() -> None:
    snap = hostile_snapshot()

    class Sink:
        data = b""

        def write(self, chunk: bytes) -> None:
            self.data += chunk

    out = Sink()
    write_json(snap, out)  # type: ignore[arg-type]
    doc = json.loads(out.data)
    assert doc["namespaces"][-1]["name"] == list(HOSTILE_BYTES)
    owned = [r for r in doc["sockets"] if r.get("owners")]
    # comm is always text (escaped as the tables print it); the exact bytes beside it
    shown = fmt.untrusted(HOSTILE_BYTES.decode("utf-8", "surrogateescape"))
    assert owned and all(r["owners"][0]["comm"] == shown for r in owned)
    assert all(r["owners"][0]["comm_bytes"] == list(HOSTILE_BYTES) for r in owned)
    assert all(r["netns"] in ("host", list(HOSTILE_BYTES)) for r in doc["sockets"])
    lines = Sink()
    write_ndjson(snap, lines)  # type: ignore[arg-type]
    records = [json.loads(line) for line in lines.data.splitlines()]
    assert len(records) == len(snap.sockets)


def test_plain_documents_take_the_fast_path_unchanged() -> None:
    b = SnapshotBuilder()
    b.process(1, "nginx")
    snap = b.build()
    assert jsontext.encode(snap) == msgspec.json.encode(snap)
    assert jsontext.decode(msgspec.json.encode(snap), type(snap)) == snap


def test_a_byte_array_where_it_does_not_belong_is_still_a_validation_error() -> None:
    data = snapshot_io.dumps(hostile_snapshot()).replace(b'"hostname":"testhost"',
                                                         b'"hostname":[1,2]')
    with pytest.raises(Exception, match="hostname"):
        snapshot_io.loads(data)


def test_the_exporter_serves_hostile_names_as_readable_labels() -> None:
    from sockdoctor.watch.exporter import SampleCollector, registries
    from sockdoctor.watch.metrics import Options
    from sockdoctor.watch.sampler import Sample

    snap = hostile_snapshot()
    collector = SampleCollector(Options())
    collector.update(Sample(seq=1, started=snap.created, snapshot=snap, first_seen={},
                            duration_s=0.1, cpu_s=0.1))
    from prometheus_client import generate_latest

    text = b"".join(generate_latest(r) for r in registries(collector)).decode()
    # label values escaped as on the terminal (ESC, newline, the byte, the backslash),
    # then the exposition format doubles every backslash
    assert 'netns="\\\\x1b[31mRED\\\\nx\\\\xff\\\\\\\\",state="close_wait"} 5.0' in text
    assert "\x1b" not in text
    assert "\udcff" not in text


def _unescape(text: str) -> str:
    """The inverse of untrusted(): it exists, so two names never print alike."""
    import re

    named = {"\\": "\\", "n": "\n", "r": "\r", "t": "\t"}

    def one(m: re.Match[str]) -> str:
        kind, digits = m.group(1)[0], m.group(1)[1:]
        if kind in named and not digits:
            return named[kind]
        code = int(digits, 16)
        return chr(0xDC00 + code) if kind == "x" and code >= 0x80 else chr(code)

    return re.sub(r"\\(x[0-9a-f]{2}|u[0-9a-f]{4}|U[0-9a-f]{8}|[\\nrt])", one, text)


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet=st.characters(codec=None), max_size=20)
       | st.binary(max_size=20).map(lambda b: b.decode("utf-8", "surrogateescape")))
def test_the_escaping_is_injective_and_printable(name: str) -> None:
    """A byte 0xff and the text \\xff, a trailing newline, C1 characters (issue 15, item 8)."""
    from sockdoctor.jsontext import untrusted

    shown = untrusted(name)
    assert shown.isprintable() and _unescape(shown) == name
    assert untrusted("sd\udcffop") != untrusted("sd\\xffop")
    assert untrusted("name\n").endswith("\\n")


def test_frozen_values_with_tuples_keep_the_exact_bytes() -> None:
    """A frozen plan holds tuples, which msgspec.to_builtins keeps as tuples."""

    class Ref(msgspec.Struct, frozen=True):
        comm: str

    class Frozen(msgspec.Struct, frozen=True):
        owners: tuple[Ref, ...]
        notes: tuple[str, ...]

    doc = json.loads(jsontext.encode(Frozen((Ref("bad\udcffname"),), ("held by bad\udcffname",))))
    assert doc == {"owners": [{"comm": list(b"bad\xffname")}], "notes": ["held by bad\\xffname"]}
