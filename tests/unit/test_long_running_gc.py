"""Commands that run for hours collect garbage cycles; short ones do not (cli.main()).

main() turns the cyclic collector off: a listing builds hundreds of thousands
of objects and no cycles. A daemon left like that would keep every cycle it
ever made, so each long-running command turns it back on, tuned (watch.tune_gc).
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from sockdoctor.cli import cli
from sockdoctor.watch import Sampler


@pytest.fixture
def as_main() -> Iterator[list[tuple[bool, tuple[int, int, int]]]]:
    """The collector as cli.main() leaves it; restored afterwards. Yields what was seen."""
    enabled, threshold = gc.isenabled(), gc.get_threshold()
    gc.disable()
    seen: list[tuple[bool, tuple[int, int, int]]] = []
    yield seen
    gc.unfreeze()
    gc.set_threshold(*threshold)
    (gc.enable if enabled else gc.disable)()


def look(seen: list) -> None:
    seen.append((gc.isenabled(), gc.get_threshold()))


def test_reap_runs_with_the_collector_on(as_main: list, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    policy = tmp_path / "reap.toml"
    policy.write_text('interval = "1s"\n[[rule]]\nname = "web"\nport = 8080\n')
    monkeypatch.setattr(Sampler, "run", lambda self, stop, on_sample: look(as_main))
    result = CliRunner().invoke(cli, ["reap", "--policy", str(policy), "--netns", "host"])
    assert result.exit_code == 0, result.output
    assert as_main == [(True, (50_000, 20, 20))]


def test_top_runs_with_the_collector_on(as_main: list,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    real = Sampler.sample

    def sample(self: Sampler) -> Any:
        look(as_main)
        return real(self)

    monkeypatch.setattr(Sampler, "sample", sample)
    result = CliRunner().invoke(cli, ["top", "--once", "--netns", "host"])
    assert result.exit_code == 0, result.output
    assert as_main == [(True, (50_000, 20, 20))]


def test_trace_runs_with_the_collector_on(as_main: list,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from sockdoctor.cli import trace as trace_cli
    from sockdoctor.watch import trace

    class Tracer:  # no tracefs needed: only the state the loop would run in is looked at
        def close(self) -> None:
            pass

    monkeypatch.setattr(trace, "open_tracer", lambda *a, **kw: Tracer())
    for name in ("_announce", "_summary"):
        monkeypatch.setattr(trace_cli, name, lambda tracer: None)
    monkeypatch.setattr(trace_cli, "_loop", lambda *a: look(as_main))
    result = CliRunner().invoke(cli, ["trace", "--ndjson"])
    assert result.exit_code == 0, result.output
    assert as_main == [(True, (50_000, 20, 20))]


def test_a_listing_leaves_the_collector_off(as_main: list) -> None:
    result = CliRunner().invoke(cli, ["ls", "--netns", "host", "--summary"])
    assert result.exit_code == 0, result.output
    assert not gc.isenabled()
