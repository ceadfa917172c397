"""Hostile snapshot files: a bomb, deep nesting, bad fields, raw escapes (issue 15, item 5).

Each is exit 6 and one sentence, in bounded memory, never a traceback; a file
that does load renders without a crash and without a raw control byte.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import sys
import time
from contextlib import redirect_stdout
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sockdoctor import snapshot_io
from sockdoctor.doctor.synth import SnapshotBuilder
from sockdoctor.errors import BadSnapshotError

SPACES = 16 << 20  # one gzip member: 16 MiB of JSON whitespace, ~16 KB compressed
RSS_LIMIT_KB = 300 * 1024


def sample() -> dict:
    b = SnapshotBuilder()
    b.process(4242, "python3")
    b.listener(8080, pid=4242)
    b.sockets(3, "close-wait", "10.0.0.1:8080", "10.0.0.2", pid=4242, age_ms=600_000)
    b.sockets(1, "established", "[fd00::1]:443", "[fd00::2]:50000")
    return json.loads(snapshot_io.dumps(b.build()))


def run_measured(args: list[str]) -> tuple[int, str, int, float]:
    """Exit code, stderr, peak RSS (KiB) of this one child, seconds to finish."""
    with open(os.devnull, "wb") as null, open(os.devnull, "rb") as nothing:
        err_r, err_w = os.pipe()
        start = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-m", "sockdoctor", *args], stdin=nothing,
                                stdout=null, stderr=err_w)
        os.close(err_w)
        with os.fdopen(err_r, "rb") as f:
            err = f.read().decode(errors="replace")
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, err, usage.ru_maxrss, time.monotonic() - start


def one_sentence(err: str) -> None:
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert "\x1b" not in err and "\x07" not in err


@pytest.mark.slow
def test_a_gzip_bomb_is_refused_in_bounded_memory(tmp_path: Path) -> None:
    member = gzip.compress(b" " * SPACES, compresslevel=9)
    bomb = tmp_path / "bomb.json.gz"
    with bomb.open("wb") as f:
        f.write(gzip.compress(b'{"schema": "sockdoctor.snapshot/1",'))
        for _ in range(128):  # 2 GiB of whitespace in ~2 MB
            f.write(member)
    assert bomb.stat().st_size < 3 << 20
    code, err, rss_kb, seconds = run_measured(["ls", "--from", str(bomb)])
    assert code == 6, err
    one_sentence(err)
    assert "inflates to more than" in err
    assert rss_kb < RSS_LIMIT_KB, f"peak RSS {rss_kb} KiB"
    print(f"bomb: {bomb.stat().st_size} bytes, peak RSS {rss_kb // 1024} MiB, {seconds:.2f} s")


def test_a_large_real_snapshot_inflates_within_the_cap() -> None:
    doc = sample()
    doc["warnings"] = ["x" * 1000] * 20_000  # 20 MB that compresses 1000 times
    data = gzip.compress(json.dumps(doc).encode())
    assert len(snapshot_io.loads(data).warnings) == 20_000  # under the 64 MiB floor


@pytest.mark.parametrize("where", ["unknown", "warnings", "sockets"])
def test_deep_nesting_is_a_corrupt_snapshot(where: str) -> None:
    doc = sample()
    deep = json.dumps(doc)[:-1] + f', "{where}": ' + "[" * 200_000 + "]" * 200_000 + "}"
    with pytest.raises(BadSnapshotError, match=r"nested deeper|warnings|sockets"):
        snapshot_io.loads(deep.encode(), "deep.json")


def test_deep_nesting_through_the_cli(tmp_path: Path) -> None:
    path = tmp_path / "deep.json"
    path.write_text(json.dumps(sample())[:-1] + ', "x": ' + "[" * 200_000 + "]" * 200_000
                    + "}")
    for command in ("ls", "doctor"):
        code, err, _, _ = run_measured([command, "--from", str(path)])
        assert code == 6, err
        one_sentence(err)


BAD_FIELDS = [
    ("state", 99, "sockets[0].state"),
    ("state", 0, "sockets[0].state"),
    ("local_port", 10**30, "sockets[0].local_port"),
    ("peer_port", -5, "sockets[0].peer_port"),
    ("local_port", 65536, "sockets[0].local_port"),
    ("recv_q", -1, "sockets[0].recv_q"),
    ("family", 7, "sockets[0].family"),
    ("local_addr", "\x1b]0;owned\x07\x1b[2J", "sockets[0].local_addr"),
    ("peer_addr", "10.0.0.300", "sockets[0].peer_addr"),
    ("local_addr", "fd00::1", "sockets[0].local_addr"),  # IPv6 text in an IPv4 socket
    ("age_ms", -3, "sockets[0].age_ms"),
    ("owners", [{"pid": -1, "fd": 3}], "sockets[0].owners[0].pid"),
]


@pytest.mark.parametrize(("field", "value", "named"), BAD_FIELDS)
def test_every_socket_field_is_checked(field: str, value: object, named: str) -> None:
    doc = sample()
    doc["sockets"][0][field] = value
    with pytest.raises(BadSnapshotError, match=r"^corrupt snapshot: s\.json: ") as err:
        snapshot_io.loads(json.dumps(doc).encode(), "s.json")
    assert named in str(err.value) and "\n" not in str(err.value)
    assert "\x1b" not in str(err.value)


def test_created_must_be_a_time() -> None:
    doc = sample()
    doc["created"] = 12345
    for value, named in (("1e999", "corrupt snapshot"), ("-1", "created"),
                         ("1e300", "created")):
        text = json.dumps(doc).replace('"created": 12345', f'"created": {value}')
        with pytest.raises(BadSnapshotError, match=named):
            snapshot_io.loads(text.encode(), "s.json")


@pytest.mark.parametrize("command", ["ls", "doctor"])
def test_state_99_and_raw_escapes_through_the_cli(tmp_path: Path, command: str) -> None:
    for field, value in (("state", 99), ("peer_addr", "\x1b]0;owned\x07\x1b[2J")):
        doc = sample()
        doc["sockets"][1][field] = value
        path = tmp_path / "bad.json"
        path.write_text(json.dumps(doc))
        code, err, _, _ = run_measured([command, "--from", str(path)])
        assert code == 6, err
        one_sentence(err)
        assert "corrupt snapshot" in err and field in err


# --- mutated valid snapshots: load or refuse, never crash -------------------------------

SCALARS = st.one_of(st.none(), st.booleans(), st.integers(min_value=-2, max_value=70_000),
                    st.integers(min_value=-2**70, max_value=2**70),
                    st.floats(allow_nan=False), st.text(max_size=12),
                    st.sampled_from(["\x1b[2J", "::1", "10.0.0.1", "close-wait", "\udcff"]))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=6)


def _paths(value: object, path: tuple = ()) -> list[tuple]:
    found = [path] if path else []
    if isinstance(value, dict):
        for k, v in value.items():
            found += _paths(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found += _paths(v, (*path, i))
    return found


def _at(doc: object, path: tuple) -> object:
    for key in path:
        doc = doc[key]  # type: ignore[index]
    return doc


DOC = sample()
PATHS = _paths(DOC)
SCALAR_PATHS = [p for p in PATHS if not isinstance(_at(DOC, p), (dict, list))]


def _mutate(doc: dict, path: tuple, value: object) -> dict:
    doc = json.loads(json.dumps(doc))
    target = doc
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return doc


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(PATHS) | st.sampled_from(SCALAR_PATHS),
                          st.integers(min_value=-2, max_value=70_000) | VALUES),
                min_size=1, max_size=3))
def test_mutated_snapshots_load_or_are_refused(mutations: list) -> None:
    doc = DOC
    for path, value in mutations:
        try:
            doc = _mutate(doc, path, value)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier mutation removed the path
    data = json.dumps(doc).encode("utf-8", "surrogatepass")
    try:
        snap = snapshot_io.loads(data, "m.json")
    except BadSnapshotError as exc:
        assert "\n" not in str(exc)
        return
    _render(snap)


def _render(snap: object) -> None:
    """What `ls` and `doctor` print for a loaded snapshot: no crash, no raw control byte."""
    from sockdoctor.doctor import diagnose, render_text
    from sockdoctor.render import summary, table

    out = io.StringIO()
    with redirect_stdout(out):
        print("\n".join(table.render(snap, table.Columns(processes=True, info=True,
                                                         mem=True, extended=True,
                                                         timers=True))))
        print("\n".join(summary.render(snap)))
        print(render_text(diagnose(snap)))
    assert "\x1b" not in out.getvalue()
