"""The kernel engine in tests: skip where it cannot load, but fail in CI.

Under CI=true (or SOCKDOCTOR_REQUIRE_BPF=1) a machine where the engine does
not load fails the BPF tests instead of skipping them, as
SOCKDOCTOR_REQUIRE_FAST does for the C extension: a silent fallback would
test nothing of the engine.
"""

from __future__ import annotations

import os

import pytest

from sockdoctor.linux import bpf


def required() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes")
               for v in ("CI", "SOCKDOCTOR_REQUIRE_BPF"))


def need_engine() -> None:
    """Skip (or fail, when required) unless the engine loads here and is wanted."""
    reason = bpf._probe()
    if os.geteuid() != 0:
        reason = reason or "not root"
    if reason:
        if required():
            pytest.fail(f"the BPF engine does not load here: {reason}")
        pytest.skip(f"the BPF engine does not load here: {reason}")


def force_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine itself, whatever the run's mode (.ci/fast-checks runs the suite with
    SOCKDOCTOR_PURE=1): forced on for this test, which is skipped (or fails in CI)
    where it cannot load."""
    monkeypatch.delenv("SOCKDOCTOR_PURE", raising=False)
    monkeypatch.setenv("SOCKDOCTOR_ENGINE", "bpf")
    need_engine()


# Remote code (conftest.Remote) shared by the destroy and keepalive tests: a
# listener on loopback and `pair(sport)`, a client and its accepted server end.
PAIRS = """
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(64)
port = srv.getsockname()[1]
def pair(sport=0):
    c = socket.socket(); c.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    c.bind(("127.0.0.1", sport)); c.connect(("127.0.0.1", port))
    return c, srv.accept()[0]
"""
