"""Stopping politely: SIGTERM and SIGINT are recorded, and acted on where the work can be saved.

SLURM, Kubernetes, ``timeout`` and Ctrl+C ask a process to stop with SIGTERM or SIGINT, then kill it if it does not.
Inside :func:`catching_stop_signals` such a signal is only recorded (:func:`received`); the code that can save its
work checks for it at safe points: :class:`~lightning_meta.callbacks.CheckpointOnSignal` at the next optimizer step
boundary of a fit, a :class:`~lightning_meta.tooling.sweep.Sweep` before its next cell. The same signal a second time
stops at once (``KeyboardInterrupt``). A process that stops this way exits with ``128 + signal`` (143 for SIGTERM, 130
for SIGINT: :func:`exit_status`), as shells report a process the signal killed, so a scheduler can tell a stop it
asked for from a success and requeue the job.

Blocks nest and share one record; each installs the handlers (only the main thread can), the outermost one puts
back the ones it found. A signal still unanswered when it ends is raised again then, so it is not lost.

Examples:
    >>> import os, signal
    >>> with catching_stop_signals():
    ...     os.kill(os.getpid(), signal.SIGTERM)  # recorded: the process goes on
    ...     print(signal.Signals(received()).name, exit_status(received()))
    ...     acknowledge()  # answered: not raised again when the block ends
    SIGTERM 143
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
Listener = Callable[[int], None]


class _Record:
    """The process's one record of stop signals."""

    def __init__(self) -> None:
        self.received: int | None = None  # the first stop signal since the outermost block began
        self.answered = False
        self.depth = 0
        self.previous: dict[int, Any] = {}
        self.listeners: list[Listener] = []


_record = _Record()


def received() -> int | None:
    """The first stop signal received inside the current :func:`catching_stop_signals` blocks, or ``None``."""
    return _record.received


def acknowledge() -> None:
    """Say that the received signal was answered (the work saved, the stop under way): the end of the outermost
    block will not raise it again."""
    _record.answered = True


def exit_status(signum: int) -> int:
    """The exit status of a process stopped by signal ``signum``: ``128 + signum``."""
    return 128 + signum


def request(signum: int) -> None:
    """Record ``signum`` as if it had been received (inside a block)."""
    if _record.received is None:
        _record.received = signum


def _handle(signum: int, frame: FrameType | None) -> None:
    if _record.received == signum:  # asked twice: stop now
        raise KeyboardInterrupt
    request(signum)
    for listener in list(_record.listeners):
        listener(signum)


@contextmanager
def catching_stop_signals(listener: Listener | None = None) -> Iterator[None]:
    """Record SIGTERM and SIGINT while the block runs (see the module docstring); ``listener(signum)`` is called
    from the handler at each one, e.g. to pass it on to worker processes. Outside the main thread the handlers
    cannot be installed and the signals keep their usual effect."""
    outermost = _record.depth == 0
    if outermost:
        _record.received, _record.answered = None, False
        if threading.current_thread() is threading.main_thread():
            _record.previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    _record.depth += 1
    if threading.current_thread() is threading.main_thread():  # every block: a library may have replaced them
        for stop in STOP_SIGNALS:
            signal.signal(stop, _handle)
    if listener is not None:
        _record.listeners.append(listener)
    try:
        yield
    finally:
        if listener is not None:
            _record.listeners.remove(listener)
        _record.depth -= 1
        if outermost:
            for signum, handler in _record.previous.items():
                signal.signal(signum, signal.SIG_DFL if handler is None else handler)  # None: not set from Python
            _record.previous = {}
            pending = None if _record.answered else _record.received
            _record.received, _record.answered = None, False
            if pending is not None:
                signal.raise_signal(pending)
