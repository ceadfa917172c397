"""The package's public names: every one in __all__ resolves, and the list is complete."""

from __future__ import annotations

import subprocess
import sys

import sockdoctor


def test_all_lists_every_export_and_each_resolves() -> None:
    assert set(sockdoctor.__all__) == {*sockdoctor._EXPORTS, "__version__"}
    for name in sockdoctor.__all__:
        assert getattr(sockdoctor, name) is not None


def test_guard_is_the_same_function_whatever_was_imported_first() -> None:
    code = ("import sockdoctor.leakguard as m, sockdoctor; from sockdoctor import guard; "
            "print(m.guard is sockdoctor.guard is guard, type(guard()).__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.split() == ["True", "Guard"]


def test_importing_sockdoctor_stays_cheap() -> None:
    """The lazy exports must not pull in the guard (ctypes, /proc readers) up front."""
    code = ("import sys, sockdoctor; "
            "print(sorted(m for m in sys.modules if m.startswith('sockdoctor')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "['sockdoctor']"


def test_errors_and_the_sampler_are_public() -> None:
    """A caller catches sockdoctor's errors by class and reads the CLI's exit code."""
    assert issubclass(sockdoctor.FilterSyntaxError, sockdoctor.UsageError)
    assert issubclass(sockdoctor.WriteError, sockdoctor.SockdoctorError)
    assert sockdoctor.BadSnapshotError.exit_code == 6 and sockdoctor.WriteError.exit_code == 7
    with_sampler = sockdoctor.Sampler
    assert with_sampler.__module__ == "sockdoctor.watch.sampler"
