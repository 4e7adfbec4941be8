"""A Spark standalone cluster on 127.0.0.1 for tests and `fruitpipe bench --only cluster`: a master and N workers.

Started from the Spark that pip's pyspark ships (`pyspark/bin/spark-class ...deploy.master.Master`
and `...deploy.worker.Worker`), on free ports, with small memory and 1 core per worker. Each worker
runs in its own process group, so `kill_worker` takes its executor and Python workers down with it
(as when a machine dies). Logs are kept to explain failures; everything is stopped on exit.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyspark

from fruitpipe.devtools.processes import free_port, signal_group

SPARK_HOME = Path(pyspark.__file__).parent
SPARK_CLASS = SPARK_HOME / "bin" / "spark-class"
START_TIMEOUT_S = 120


def get_json(url: str, timeout: float = 5.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.load(response)


@dataclass
class Daemon:
    """One Spark daemon process and the file its output goes to."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return f"--- {self.name} ({self.log}) ---\n" + "\n".join(text.splitlines()[-lines:])


@dataclass
class StandaloneCluster:
    """`with StandaloneCluster(tmp_path, workers=2) as cluster: ... cluster.master_url ...`"""

    root: Path
    workers: int = 2
    cores: int = 1
    memory: str = "1g"
    worker_env: dict[str, str] = field(default_factory=dict)  # e.g. PYSPARK_PYTHON of a bare interpreter
    master_url: str = ""
    web_url: str = ""
    daemons: list[Daemon] = field(default_factory=list)
    killed: list[Daemon] = field(default_factory=list)

    def __enter__(self) -> StandaloneCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        port, web_port = free_port(), free_port()
        self.master_url, self.web_url = f"spark://127.0.0.1:{port}", f"http://127.0.0.1:{web_port}"
        self._launch("master", "org.apache.spark.deploy.master.Master",
                     ["--host", "127.0.0.1", "--port", str(port), "--webui-port", str(web_port)], {})
        self._wait(lambda: self.status().get("status") == "ALIVE", "the master to come up")
        for index in range(self.workers):
            self.start_worker(index)
        self._wait(lambda: len(self.alive_workers()) == self.workers, f"{self.workers} workers to register")

    def start_worker(self, index: int) -> int:
        """Launch worker `index` (its work dir kept across restarts); returns its port."""
        work_dir = self.root / f"worker-{index}"
        work_dir.mkdir(exist_ok=True)
        port = free_port()
        self._launch(f"worker-{index}", "org.apache.spark.deploy.worker.Worker",
                     ["--host", "127.0.0.1", "--port", str(port), "--webui-port", str(free_port()),
                      "--cores", str(self.cores), "--memory", self.memory, "--work-dir", str(work_dir),
                      self.master_url], self.worker_env)
        return port

    def _launch(self, name: str, main_class: str, args: list[str], extra_env: dict[str, str]) -> None:
        env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PYSPARK_PYTHON")}
        env.update({"SPARK_HOME": str(SPARK_HOME), "SPARK_LOCAL_IP": "127.0.0.1", "SPARK_DAEMON_MEMORY": "256m",
                    "SPARK_LOG_DIR": str(self.root), **extra_env})
        restarts = sum(daemon.name == name for daemon in self.killed)
        log = self.root / (f"{name}.log" if not restarts else f"{name}.restart-{restarts}.log")  # keep the old log
        with log.open("wb") as out:
            process = subprocess.Popen([str(SPARK_CLASS), main_class, *args], stdout=out, stderr=subprocess.STDOUT,
                                       env=env, cwd=self.root, start_new_session=True)
        self.daemons.append(Daemon(name, process, log))

    def _wait(self, ready: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            for daemon in self.daemons:
                if daemon.process.poll() is not None:
                    raise RuntimeError(f"{daemon.name} exited with {daemon.process.returncode}\n{self.logs()}")
            try:
                if ready():
                    return
            except OSError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"timed out waiting for {what}\n{self.logs()}")

    def status(self) -> dict[str, Any]:
        """The master's JSON status: workers, active and completed applications."""
        status: dict[str, Any] = get_json(f"{self.web_url}/json/")
        return status

    def alive_workers(self) -> list[dict[str, Any]]:
        return [worker for worker in self.status().get("workers", []) if worker.get("state") == "ALIVE"]

    def worker(self, index: int) -> Daemon:
        return next(daemon for daemon in self.daemons if daemon.name == f"worker-{index}")

    def kill_worker(self, index: int) -> None:
        """SIGKILL the worker's process group: the worker, its executor and its Python workers."""
        daemon = self.worker(index)
        os.killpg(daemon.process.pid, signal.SIGKILL)
        daemon.process.wait(timeout=30)
        self.daemons.remove(daemon)
        self.killed.append(daemon)

    def restart_worker(self, index: int) -> None:
        """Bring a killed worker back (same work dir) and wait until the master has it (by its new port:
        the master may still list the killed one as alive until its heartbeat times out)."""
        port = self.start_worker(index)
        self._wait(lambda: any(worker.get("port") == port for worker in self.alive_workers()),
                   f"worker-{index} to register again")

    def executor_logs(self) -> str:
        parts = []
        for stderr in sorted(self.root.glob("worker-*/app-*/*/stderr")):
            lines = stderr.read_text(errors="replace").splitlines()
            parts.append(f"--- executor {stderr.parent.relative_to(self.root)} ---\n" + "\n".join(lines[-30:]))
        return "\n".join(parts)

    def logs(self) -> str:
        return "\n".join([*(daemon.tail() for daemon in [*self.daemons, *self.killed]), self.executor_logs()])

    def stop(self) -> None:
        """SIGTERM every daemon's process group (also when the daemon itself has exited: its executor
        and Python workers may not have), then SIGKILL what is left after 20 s."""
        for daemon in reversed(self.daemons):
            signal_group(daemon.process.pid, signal.SIGTERM)
        for daemon in self.daemons:
            try:
                daemon.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                signal_group(daemon.process.pid, signal.SIGKILL)
                daemon.process.wait(timeout=10)
        self.daemons.clear()
