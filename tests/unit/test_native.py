"""Which implementation the hot loops use: the C build only when it matches the code."""

from __future__ import annotations

import os
import sys
import types

import pytest

import sockdoctor
from sockdoctor.linux import native


@pytest.mark.skipif(native.fast is None and os.environ.get("SOCKDOCTOR_REQUIRE_FAST") != "1",
                    reason="sockdoctor._fast is not built (or SOCKDOCTOR_PURE=1)")
def test_the_built_extension_is_the_one_this_code_expects() -> None:
    assert native.fast is not None and native.fast.ABI == native.ABI


def test_an_older_build_is_not_used_and_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    older = types.ModuleType("sockdoctor._fast")  # a build from before ABI existed
    monkeypatch.setitem(sys.modules, "sockdoctor._fast", older)
    monkeypatch.setattr(sockdoctor, "_fast", older, raising=False)
    monkeypatch.delenv("SOCKDOCTOR_PURE", raising=False)
    monkeypatch.setattr(native, "_stale", False)
    assert native._load() is None
    monkeypatch.setattr(native, "fast", None)
    assert "older build than this code: reinstall sockdoctor" in native.describe()
