"""Ctrl-C or SIGTERM during a Spark session of ours: cancel Spark's jobs, then raise KeyboardInterrupt
(`signals.Terminated` for SIGTERM) in plain Python.

PySpark's own SIGINT handler calls into the JVM from inside the signal handler, while the main thread
is usually blocked in a py4j call on the same connection: py4j then logs "Exception while sending
command" and "KeyboardInterrupt while sending command" with tracebacks, and stopping the session while
tasks still run makes the JVM print stack traces too. Here the handler never raises inside py4j: it
cancels the jobs from a thread (the running action then fails), and the KeyboardInterrupt is raised as
soon as the main thread is back in Python code; any error the cancelled action raised becomes that
KeyboardInterrupt. Before the session stops, the killed tasks are waited for, so the JVM stops quietly.
"""
from __future__ import annotations

import _thread
import logging
import select
import signal
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from pyspark.sql import SparkSession

from fruitpipe import sparkapi
from fruitpipe.signals import STOP_SIGNALS, stop_error

logger = logging.getLogger(__name__)
RETRY_SECONDS = 0.2  # how often the main thread is nudged until it leaves py4j
SETTLE_SECONDS = 15.0  # the longest killed tasks are waited for before the session stops


class _Interrupt:
    """One Ctrl-C's (or SIGTERM's) state: received (jobs being cancelled), raised (the main thread has it),
    finished (the session's block is over: stop nudging); `signum` is the first signal received."""

    def __init__(self, spark: SparkSession) -> None:
        self.spark = spark
        self.signum = signal.SIGINT
        self.received = threading.Event()
        self.raised = threading.Event()
        self.finished = threading.Event()
        self._lock = threading.Lock()

    def handle(self, signum: int, frame: FrameType | None) -> None:
        """The Python-level handler (main thread, whenever it runs bytecode next)."""
        self.start(signum)
        if self.raised.is_set() or not _inside_py4j(frame):
            self.raised.set()
            raise self.error()

    def error(self) -> KeyboardInterrupt:
        return stop_error(self.signum)

    def start(self, signum: int) -> None:
        """Cancel once, from a thread of its own."""
        with self._lock:
            if self.received.is_set():
                return
            self.signum = signal.Signals(signum)
            self.received.set()
        threading.Thread(target=self._cancel, name="fruitpipe-interrupt", daemon=True).start()

    def watch(self, wakeup: socket.socket) -> None:
        """The signal may land on any thread, and then the main thread's blocking py4j read is not
        interrupted: Python's C handler writes the signal number to the wakeup socket, read here."""
        with wakeup:
            while not self.finished.is_set():
                ready, _, _ = select.select([wakeup], [], [], RETRY_SECONDS)
                received = wakeup.recv(64) if ready else b""
                for signum in STOP_SIGNALS:  # unless another handler (signals.stop_after_current) took over
                    if signum in received and signal.getsignal(signum) == self.handle:
                        self.start(signum)

    def _cancel(self) -> None:
        """Silence Spark's complaints about killed tasks, cancel every job, then nudge the main thread
        (the same signal, simulated) until it raises."""
        logger.debug("signal %d: cancelling Spark's jobs", self.signum)
        try:
            sparkapi.quiet_logs(self.spark, "OFF")
            sparkapi.cancel_all_jobs(self.spark)
        except Exception:  # the session may be stopping already
            logger.debug("cancelling Spark jobs failed", exc_info=True)
        while not self.raised.wait(RETRY_SECONDS) and not self.finished.is_set():
            _thread.interrupt_main(self.signum)

    def settle(self) -> None:
        """Wait (bounded) until no task of ours runs, so stopping the session kills nothing mid-flight."""
        try:
            sparkapi.wait_until_no_task_runs(self.spark, SETTLE_SECONDS)
        except Exception:  # the session may be stopping already
            logger.debug("waiting for killed tasks failed", exc_info=True)


def _inside_py4j(frame: FrameType | None) -> bool:
    while frame is not None:
        if str(frame.f_globals.get("__name__", "")).startswith("py4j"):
            return True
        frame = frame.f_back
    return False


@contextmanager
def cancel_on_interrupt(spark: SparkSession) -> Iterator[None]:
    """Inside the block, Ctrl-C (SIGTERM) cancels the session's jobs and surfaces as KeyboardInterrupt
    (Terminated); see the module docstring. Only the main thread can own signals: elsewhere (a server
    thread) nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    interrupt = _Interrupt(spark)
    wakeup, wakeup_writer = socket.socketpair()
    wakeup_writer.setblocking(False)
    previous = {signum: signal.signal(signum, interrupt.handle) for signum in STOP_SIGNALS}
    previous_fd = signal.set_wakeup_fd(wakeup_writer.fileno(), warn_on_full_buffer=False)
    threading.Thread(target=interrupt.watch, args=(wakeup,), name="fruitpipe-sigint", daemon=True).start()
    try:
        yield
    except Exception as exc:
        if interrupt.received.is_set():  # the cancelled action's error is the interrupt's doing
            interrupt.raised.set()
            raise interrupt.error() from exc
        raise
    finally:
        interrupt.finished.set()
        if interrupt.received.is_set():
            interrupt.settle()
        signal.set_wakeup_fd(previous_fd)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        wakeup_writer.close()
