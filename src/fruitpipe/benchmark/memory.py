"""Peak resident memory of a process tree (a measurement's child, its JVM, its Python workers), sampled in a thread."""
from __future__ import annotations

import threading
from collections import defaultdict

import psutil

MB = 1024 * 1024


def role(process: psutil.Process, root_pid: int) -> str:
    """driver (the measurement's own Python), jvm, or workers (everything else: Spark's or Ray's processes)."""
    if process.pid == root_pid:
        return "driver"
    try:
        name = process.name()
    except psutil.Error:
        return "workers"
    return "jvm" if name == "java" else "workers"


class PeakRss:
    """`with PeakRss(pid) as peak:` ... `peak.result()` -> MB by role and in total (sums of RSS, so shared
    pages of forked workers count once per process: an upper bound)."""

    def __init__(self, pid: int, interval_s: float = 0.25) -> None:
        self.pid = pid
        self.interval_s = interval_s
        self.peaks: dict[str, float] = defaultdict(float)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="peak-rss", daemon=True)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval_s)

    def sample(self) -> None:
        try:
            root = psutil.Process(self.pid)
            tree = [root, *root.children(recursive=True)]
        except psutil.Error:
            return
        totals: dict[str, float] = defaultdict(float)
        for process in tree:
            try:
                totals[role(process, self.pid)] += process.memory_info().rss / MB
            except psutil.Error:
                continue
        totals["total"] = sum(totals.values())
        totals["driver_and_python_workers"] = totals["driver"] + totals["workers"]
        for key, value in totals.items():
            self.peaks[key] = max(self.peaks[key], value)

    def result(self) -> dict[str, float]:
        return {key: round(value, 1) for key, value in sorted(self.peaks.items())}
