"""A Spark Connect server on 127.0.0.1 for the tests: `with ConnectServer(folder) as url: ... sc://127.0.0.1:PORT`.

Started from the Spark that pip's pyspark ships (spark-submit of
`org.apache.spark.sql.connect.service.SparkConnectServer`, what `sbin/start-connect-server.sh` runs, but in
the foreground), with `--master local[2]` and a free gRPC port. Its executors' Python is this interpreter
and PYTHONPATH passes through, so they import the fruitpipe under test. It runs in its own process group:
stopping it takes its JVM and Python workers down, nothing is left behind. Logs are kept to explain failures.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyspark

from fruitpipe.devtools.processes import free_port, signal_group

SPARK_HOME = Path(pyspark.__file__).parent
SERVER_CLASS = "org.apache.spark.sql.connect.service.SparkConnectServer"
START_TIMEOUT_S = 120


class ConnectServer:
    """A Spark Connect server process; the context manager yields its `sc://127.0.0.1:PORT` URL."""

    def __init__(self, root: Path, master: str = "local[2]", conf: dict[str, str] | None = None) -> None:
        self.root, self.master, self.conf = root, master, dict(conf or {})
        self.port = 0
        self.log = root / "connect-server.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"sc://127.0.0.1:{self.port}"

    def __enter__(self) -> str:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self.url

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        conf = {"spark.connect.grpc.binding.address": "127.0.0.1", "spark.connect.grpc.binding.port": str(self.port),
                "spark.ui.enabled": "false", "spark.sql.session.timeZone": "UTC", **self.conf}
        args = [str(SPARK_HOME / "bin" / "spark-submit"), "--class", SERVER_CLASS, "--name", "fruitpipe-connect-test",
                "--master", self.master, "--driver-memory", "1g"]
        for key, value in conf.items():
            args += ["--conf", f"{key}={value}"]
        env = {**os.environ, "SPARK_HOME": str(SPARK_HOME), "SPARK_LOCAL_IP": "127.0.0.1",
               "PYSPARK_PYTHON": sys.executable, "SPARK_CONNECT_MODE": "0"}
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=self.root,
                                            start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._accepts():
            if self.process.poll() is not None:
                raise RuntimeError(f"the Spark Connect server exited with {self.process.returncode}\n{self.tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Spark Connect server did not listen on {self.port} in {START_TIMEOUT_S} s\n"
                                   f"{self.tail()}")
            time.sleep(0.3)

    def _accepts(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False

    def tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return f"--- Spark Connect server ({self.log}) ---\n" + "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """SIGTERM the server's process group (its JVM and Python workers), SIGKILL what is left after 20 s."""
        if self.process is None:
            return
        signal_group(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            signal_group(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        signal_group(self.process.pid, signal.SIGKILL)  # Python workers that outlived the JVM
        self.process = None
