"""Signal handling for the commands that run until told to stop: one helper for all.

kill --yes, the exporter, the reaper and trace each turn some signals into
an action (stop after the current step, reload, interrupt) while they run,
and restore the previous handlers afterwards. Only the main thread may
install handlers; elsewhere (a library caller's worker thread) nothing is
installed and the caller stops them its own way.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager


@contextmanager
def handling(actions: Mapping[int, Callable[[], None]]) -> Iterator[bool]:
    """Call actions[signum]() on each of those signals while inside; yields whether installed."""
    if threading.current_thread() is not threading.main_thread():
        yield False
        return
    previous = {s: signal.signal(s, lambda signum, _frame: actions[signum]())
                for s in actions}
    try:
        yield True
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@contextmanager
def stop_on_signals(*signums: int, again_interrupts: bool = False
                    ) -> Iterator[threading.Event]:
    """An Event set by SIGINT/SIGTERM (or `signums`) instead of dying, while inside.

    again_interrupts: a second signal raises KeyboardInterrupt (the daemons:
    the first finishes the step under way, the second stops at once).
    """
    stop = threading.Event()

    def on_signal() -> None:
        if again_interrupts and stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    with handling(dict.fromkeys(signums or (signal.SIGINT, signal.SIGTERM), on_signal)):
        yield stop


def interrupt() -> None:
    """An action for handling(): end like Ctrl-C."""
    raise KeyboardInterrupt
