"""Deterministic kill points for the reliability tests: $FRUITPIPE_FAULT names a point and a count.

`FRUITPIPE_FAULT=worker-after-segment:2` kills a Python worker (os._exit) right after its task wrote its
2nd journal segment; `driver-after-segments:3` SIGKILLs the driver once the pass has 3 segments;
`driver-before-publish` and `driver-before-success` SIGKILL the driver there (with its process group
when it leads one). Unset (always, outside
tests), every call here is one dictionary look-up. Stdlib only: executors import it.
"""
from __future__ import annotations

import logging
import os
import signal

logger = logging.getLogger(__name__)

FAULT_ENV = "FRUITPIPE_FAULT"
DRIVER_PID_ENV = "FRUITPIPE_FAULT_DRIVER_PID"  # set by the driver when a fault is armed; workers inherit it
MARK_ENV = "FRUITPIPE_FAULT_MARK"  # file a point appends its name to before it fires (the test's proof)


def armed(name: str) -> int | None:
    """The count at which point `name` fires, or None when $FRUITPIPE_FAULT does not name it."""
    spec = os.environ.get(FAULT_ENV, "")
    point, _, count = spec.partition(":")
    if point != name:
        return None
    return int(count) if count else 1


def reached(name: str, count: int = 1) -> None:
    """Point `name` reached for the `count`-th time: die here when it is armed for that count. A worker
    point exits the worker; a driver point kills the driver (from a worker too, through its pid)."""
    if armed(name) != count:
        return
    logger.warning("fault point %s reached (%d): dying", name, count)
    mark = os.environ.get(MARK_ENV)
    if mark:
        with open(mark, "a", encoding="utf-8") as handle:
            handle.write(f"{name}:{count}:{os.getpid()}\n")
    if name.startswith("worker-"):
        os._exit(17)
    _kill_driver(int(os.environ.get(DRIVER_PID_ENV) or os.getpid()))


def _kill_driver(pid: int) -> None:
    """SIGKILL the driver; when it leads its own process group (the tests start it so), the whole group
    (its JVM and local workers) dies at once, as when the driver's machine goes, so no worker keeps
    writing segments after the "death"."""
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    os.kill(pid, signal.SIGKILL)


def arm_driver() -> None:
    """On the driver, before Spark starts: tell local workers (they inherit the environment) our pid."""
    if os.environ.get(FAULT_ENV):
        os.environ[DRIVER_PID_ENV] = str(os.getpid())
