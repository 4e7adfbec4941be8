"""Stop signals a command handles: Ctrl-C (SIGINT) and SIGTERM, what schedulers, `kill` and Kubernetes send.

SIGTERM is turned into `Terminated`, a KeyboardInterrupt, so every command stops the same way for both:
`finally` blocks run, nothing partial is published and the command prints its one "interrupted" line
(exit 143 instead of Ctrl-C's 130). Stdlib only: the command line installs it before anything heavy.
"""
from __future__ import annotations

import signal
import threading
from types import FrameType

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
