"""Stopping a training run cleanly: SIGINT (Ctrl-C) or SIGTERM (a scheduler, torchrun's agent) asks the
trainer to stop at the end of the step it is in, write a checkpoint and say how to resume.

A second signal while stopping gets the handler that was there before (Ctrl-C twice aborts at once).
The exit status is the shell's for a process ended by that signal, 128 + its number (130, 143).
"""
from __future__ import annotations

import contextlib
import signal
import sys
import threading
from typing import Iterator

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    """Set by the first stop signal; `requested()` is what the trainer polls after each step."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def requested(self) -> bool:
        return self.signum is not None

    @property
    def exit_status(self) -> int:
        return 128 + (self.signum or 0)

    def _handle(self, signum: int, _frame: object) -> None:
        self.signum = signum
        self._restore()
        print(f"\ngedi-fast: {signal.Signals(signum).name} received: stopping at the end of this step and writing "
              f"a checkpoint (send it again to abort without one)", file=sys.stderr, flush=True)

    def _restore(self) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous = {}


@contextlib.contextmanager
def stop_on_signals() -> Iterator[StopRequest]:
    """A StopRequest that SIGINT and SIGTERM set while the block runs (outside the main thread, where
    Python cannot install handlers, one that nothing sets)."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    request._previous = {number: signal.getsignal(number) for number in STOP_SIGNALS}
    for number in STOP_SIGNALS:
        signal.signal(number, request._handle)
    try:
        yield request
    finally:
        request._restore()
