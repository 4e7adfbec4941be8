"""Stop signals a command handles: Ctrl-C (SIGINT) and SIGTERM, what schedulers, `kill` and Kubernetes send.

SIGTERM is turned into `Terminated`, a KeyboardInterrupt, so every command stops the same way for both:
`finally` blocks run, nothing partial is published and the command prints its one "interrupted" line
(exit 143 instead of Ctrl-C's 130). Stdlib only: the command line installs it before anything heavy.
"""
from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

logger = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Terminated(KeyboardInterrupt):
    """SIGTERM received."""


def install_terminate_handler() -> None:
    """SIGTERM raises Terminated in the main thread (elsewhere Python cannot install handlers: no-op)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_terminated)


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated


def stop_error(signum: int) -> KeyboardInterrupt:
    """The exception a stop signal surfaces as."""
    return Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


class StopRequest:
    """Set by the first stop signal inside `stop_after_current`: finish the current unit, then stop."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.signum: int | None = None

    @property
    def requested(self) -> bool:
        return self.event.is_set()

    def wait(self, seconds: float) -> bool:
        """Sleep up to `seconds`, woken by a stop signal; True when a stop was requested."""
        return self.event.wait(seconds)


@contextmanager
def stop_after_current() -> Iterator[StopRequest]:
    """Inside the block the first SIGINT/SIGTERM only asks to stop (StopRequest), for a loop to finish its
    current pass; a second one goes to the handler in force before (inside a Spark session: cancel the
    jobs now). Main thread only; elsewhere the request is never set."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    previous: dict[int, Callable[[int, FrameType | None], object] | int | None] = {}

    def handle(signum: int, frame: FrameType | None) -> None:
        if not request.requested:
            request.signum = signum
            request.event.set()
            logger.warning("%s received: stopping after the current pass (send it again to stop now)",
                           signal.Signals(signum).name)
            return
        handler = previous[signum]
        if not callable(handler):
            raise stop_error(signum)
        handler(signum, frame)

    for signum in STOP_SIGNALS:
        previous[signum] = signal.signal(signum, handle)
    try:
        yield request
    finally:
        for stop_signal, handler in previous.items():
            signal.signal(stop_signal, handler if handler is not None else signal.SIG_DFL)
