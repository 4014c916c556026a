"""Ctrl-C as a request to stop at the next safe point, rather than an exception at an arbitrary line.

Why: a KeyboardInterrupt can land anywhere - in the middle of a lift (the stream would lose poses that had left a
track's pending list but not reached the outputs) or of an optimizer step (training would save half-updated
weights, or nothing at all). Inside :func:`ctrl_c_deferred` the first Ctrl-C only sets a flag that the loop reads
between units of work (a frame, a training step); the loop finishes the unit in hand, saves or flushes, and ends.
A second Ctrl-C interrupts at once, for code that blocks. Off the main thread, where Python delivers no signals,
the flag is never set and nothing changes.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Any, Callable, Iterator


@contextlib.contextmanager
def ctrl_c_deferred() -> Iterator[Callable[[], bool]]:
    """Yield ``stop_requested()``: True once Ctrl-C was pressed inside the block. The previous handler is restored
    on the way out."""
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return
    requested = threading.Event()
    previous = signal.getsignal(signal.SIGINT)

    def ask_to_stop(signum: int, frame: Any) -> None:
        requested.set()
        signal.signal(signal.SIGINT, signal.default_int_handler)  # the second Ctrl-C raises KeyboardInterrupt

    signal.signal(signal.SIGINT, ask_to_stop)
    try:
        yield requested.is_set
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)
