"""Writing to stdout for a reader that may leave early (`sockdoctor ls | head`)."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator


@contextlib.contextmanager
def reader_may_leave() -> Iterator[None]:
    """Output to a reader that may go away (`| head`): stop writing, keep the exit status.

    click turns a broken pipe into exit 1, which means "warnings" for doctor
    and "some sockets survived" for kill; a command that prints inside this
    block still exits with its own status.
    """
    try:
        yield
        sys.stdout.flush()
    except BrokenPipeError:
        silence_stdout()


def silence_stdout() -> None:
    """After the reader of a pipe went away (`| head`), exit without a traceback."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
