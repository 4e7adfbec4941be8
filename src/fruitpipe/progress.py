"""What a long command shows while it runs: stage, done / total, rate, ETA. Stdlib only, no Spark.

A terminal gets one live line on stderr, rewritten with `\\r` and cleared when a stage ends, so the
results printed on stdout stay exactly what they were. Anywhere else (CI, a pipe, a log file) a
rewritten line would be garbage: there the same numbers become log records, one when a stage starts
and ends and one about every 10% of a counted stage. `--quiet` is the silent reporter. Who counts
(Spark's task tracker, the upload loop, a scoring loop) calls `update` from any thread.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from enum import Enum
from typing import TextIO

logger = logging.getLogger("fruitpipe.progress")

LOG_STEP = 0.10  # a log line about every 10% of a counted stage
REDRAW_SECONDS = 0.2  # a terminal line is rewritten at most this often
CLEAR = "\r\x1b[K"  # back to the line's start, erase to its end


class Mode(Enum):
    LIVE = "live"  # a terminal: one rewritten line
    LOG = "log"  # not a terminal: log records per stage and per 10%
    OFF = "off"  # --quiet, and library callers that pass no reporter


@dataclass(frozen=True)
class Snapshot:
    """Where a stage is: what the line says. `total` None: not counted (only the time shows)."""

    stage: str
    elapsed: float
    done: int = 0
    total: int | None = None
    unit: str = "img"
    bytes_done: int | None = None
    total_bytes: int | None = None

    @property
    def rate(self) -> float | None:
        """Units per second so far (None before any time passed)."""
        return self.done / self.elapsed if self.elapsed > 0 else None

    @property
    def eta(self) -> float | None:
        """Seconds left at the rate so far: by bytes when they are known (uploads), else by units."""
        if self.total_bytes and self.bytes_done:
            return self.elapsed * (self.total_bytes - self.bytes_done) / self.bytes_done
        if self.total is None or not self.done:
            return None
        return self.elapsed * max(0, self.total - self.done) / self.done

    @property
    def fraction(self) -> float | None:
        return None if not self.total else min(1.0, self.done / self.total)


def clock(seconds: float) -> str:
    """0:07, 12:30, 1:02:03."""
    whole = max(0, round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def render(snap: Snapshot) -> str:
    """The one line: `featurize  120 / 1,170 img  35.2 img/s  ETA 0:30` (upload: MB/s)."""
    parts = [snap.stage]
    if snap.total is not None:
        parts.append(f"{snap.done:,} / {snap.total:,} {snap.unit}")
        if snap.bytes_done is not None and snap.elapsed > 0:
            parts.append(f"{snap.bytes_done / 1e6 / snap.elapsed:.1f} MB/s")
        elif snap.rate is not None:  # 0.0 while the first tasks load the model: honest, and the line keeps its shape
            parts.append(f"{snap.rate:.1f} {snap.unit}/s")
        eta = snap.eta
        parts.append(f"ETA {clock(eta)}" if eta is not None and snap.done < snap.total else clock(snap.elapsed))
    else:
        parts.append(clock(snap.elapsed))
    return "  ".join(parts)


class Reporter:
    """The progress of one command; thread-safe (Spark's tracker is polled from a daemon thread)."""

    def __init__(self, stream: TextIO | None, mode: Mode, now: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream
        self.mode = mode if stream is not None else Mode.OFF
        self._now = now
        self._lock = threading.Lock()
        self._snap: Snapshot | None = None
        self._began = 0.0
        self._drawn_at = -math.inf
        self._logged_step = 0
        self._shown = False

    @classmethod
    def for_stream(cls, stream: TextIO, quiet: bool = False) -> Reporter:
        """Live on a terminal, log records elsewhere, nothing with quiet."""
        if quiet:
            return cls(None, Mode.OFF)
        return cls(stream, Mode.LIVE if _isatty(stream) else Mode.LOG)

    @classmethod
    def silent(cls) -> Reporter:
        return cls(None, Mode.OFF)

    @property
    def enabled(self) -> bool:
        return self.mode is not Mode.OFF

    @contextmanager
    def stage(self, name: str, total: int | None = None, unit: str = "img", total_bytes: int | None = None,
              steps: bool = True) -> Iterator[None]:
        """Report `name` while the block runs; its end (also by an error or Ctrl-C) clears the line.
        `steps` False: off a terminal, only the stage's end line (no start and ~10% lines)."""
        self._start(name, total, unit, total_bytes, steps)
        try:
            yield
        except BaseException:
            self._end(completed=False)
            raise
        self._end(completed=True)

    def update(self, done: int, bytes_done: int | None = None) -> None:
        """The current stage's count so far (from any thread)."""
        with self._lock:
            if self._snap is None or self.mode is Mode.OFF:
                return
            self._snap = replace(self._snap, elapsed=self._now() - self._began, done=done, bytes_done=bytes_done)
            if self.mode is Mode.LIVE:
                self._draw(force=False)
            else:
                self._log_step()

    def before_log(self, record: logging.LogRecord) -> bool:
        """A logging filter for the stderr handler: a log record must not land in the middle of the
        live line, so the line is cleared first (the next update draws it again)."""
        with self._lock:
            self._clear()
        return True

    def _start(self, name: str, total: int | None, unit: str, total_bytes: int | None, steps: bool) -> None:
        with self._lock:
            self._began = self._now()
            self._snap = Snapshot(name, 0.0, 0, total, unit, 0 if total_bytes else None, total_bytes)
            self._logged_step = 0 if steps else int(1 / LOG_STEP)
            if self.mode is Mode.LIVE:
                self._draw(force=True)
            elif self.mode is Mode.LOG and total is not None and steps:  # a counted stage: its size now, steps follow
                logger.info("%s: started (%s %s)", name, f"{total:,}", unit)

    def _end(self, completed: bool) -> None:
        with self._lock:
            snap = self._snap
            self._snap = None
            if snap is None:
                return
            snap = _final(snap, self._now() - self._began, completed)
            if self.mode is Mode.LIVE:
                self._clear()
            elif self.mode is Mode.LOG and completed:  # a stage that failed: the command's error line says so
                logger.info("%s (done)", render(snap))

    def _draw(self, force: bool) -> None:
        assert self.stream is not None and self._snap is not None
        at = self._now()
        if not force and at - self._drawn_at < REDRAW_SECONDS:
            return
        self._drawn_at = at
        self.stream.write(CLEAR + render(self._snap))
        self.stream.flush()
        self._shown = True

    def _clear(self) -> None:
        if self._shown and self.stream is not None:
            self.stream.write(CLEAR)
            self.stream.flush()
            self._shown = False

    def _log_step(self) -> None:
        snap = self._snap
        if snap is None or snap.fraction is None:
            return
        step = int(snap.fraction / LOG_STEP + 1e-9)
        if step > self._logged_step and snap.done < (snap.total or 0):
            self._logged_step = step
            logger.info("%s (%d%%)", render(snap), round(100 * snap.fraction))


def _final(snap: Snapshot, elapsed: float, completed: bool) -> Snapshot:
    """The stage's last numbers: a completed counted stage did all of its total."""
    if not completed:
        return replace(snap, elapsed=elapsed)
    return replace(snap, elapsed=elapsed, done=snap.total if snap.total is not None else snap.done,
                   bytes_done=snap.total_bytes if snap.total_bytes is not None else snap.bytes_done)


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or unusual stream: treat as not a terminal
        return False
