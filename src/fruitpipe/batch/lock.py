"""One writer per output: `<output>/_fruitpipe/lock.json` names its owner and is refreshed by a heartbeat.

A second run on the same output is refused with one line naming the owner. A lock whose owner is gone
(a process of this host that no longer exists, or no heartbeat for $FRUITPIPE_LOCK_STALE_S seconds,
default 60) is taken over, and the log says so: a killed run never blocks the output for good.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

from fruitpipe import storage
from fruitpipe.storage import Store

logger = logging.getLogger(__name__)

LOCK = "_fruitpipe/lock.json"
STALE_ENV, HEARTBEAT_ENV = "FRUITPIPE_LOCK_STALE_S", "FRUITPIPE_LOCK_HEARTBEAT_S"


@dataclass(frozen=True)
class Owner:
    """Who holds the output: a run on a host, its pid, and when it last said it was alive."""

    run_id: str
    host: str
    pid: int
    heartbeat: float  # time.time() of the last refresh

    @classmethod
    def me(cls, run_id: str) -> Owner:
        return cls(run_id, socket.gethostname(), os.getpid(), time.time())

    def gone(self, stale_after: float) -> str | None:
        """Why this owner no longer holds the lock, or None while it may still be running."""
        if self.host == socket.gethostname() and not _alive(self.pid):
            return f"its process {self.pid} on this host is gone"
        silent = time.time() - self.heartbeat
        return f"no heartbeat for {silent:.0f} s" if silent > stale_after else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _read(store: Store, uri: str) -> Owner | None:
    try:
        raw = json.loads(store.read_bytes(uri))
        return Owner(str(raw["run_id"]), str(raw["host"]), int(raw["pid"]), float(raw["heartbeat"]))
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError):  # a torn or foreign file: treat as stale
        return Owner("unknown", "unknown", -1, 0.0)


def _write(store: Store, uri: str, owner: Owner) -> None:
    store.write_bytes(uri, (json.dumps(asdict(owner)) + "\n").encode("utf-8"))


def acquire(store: Store, output: str, run_id: str) -> Owner:
    """Take the output's lock for `run_id`; ValueError (one line) while another live run holds it."""
    uri = storage.join(output, LOCK)
    stale_after = float(os.environ.get(STALE_ENV) or 60)
    held = _read(store, uri)
    if held is not None and held.run_id != run_id:
        reason = held.gone(stale_after)
        if reason is None:
            age = time.time() - held.heartbeat
            raise ValueError(f"{storage.redact(output)} is being written by another fruitpipe run ({held.run_id}, "
                             f"pid {held.pid} on {held.host}, alive {age:.0f} s ago); wait for it to finish "
                             "(a dead run's lock is taken over after "
                             f"{stale_after:.0f} s)")
        logger.warning("taking over the lock of run %s on %s (%s)", held.run_id, storage.redact(output), reason)
    mine = Owner.me(run_id)
    _write(store, uri, mine)
    if (_read(store, uri) or mine).run_id != run_id:  # another run took it at the same moment
        raise ValueError(f"{storage.redact(output)} was just taken by another fruitpipe run; try again later")
    return mine


@contextmanager
def held(store: Store, output: str, run_id: str) -> Iterator[None]:
    """Hold the output's lock for the block, refreshed every $FRUITPIPE_LOCK_HEARTBEAT_S seconds (default
    10); released at the end, whatever happens (a killed process leaves it to be taken over)."""
    owner = acquire(store, output, run_id)
    uri = storage.join(output, LOCK)
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(float(os.environ.get(HEARTBEAT_ENV) or 10)):
            try:
                _write(store, uri, Owner(owner.run_id, owner.host, owner.pid, time.time()))
            except Exception:  # a missed beat is not fatal: the next one may pass
                logger.debug("lock heartbeat failed", exc_info=True)

    thread = threading.Thread(target=beat, name="fruitpipe-lock", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        current = _read(store, uri)
        if current is not None and current.run_id == run_id:
            store.remove(uri)
