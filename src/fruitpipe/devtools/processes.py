"""Start a Python subprocess alongside the tests or the benchmark, its output kept in files, stopped if left running."""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    """A loopback TCP port free right now (for a child server to bind)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def signal_group(pid: int, signal_number: int) -> None:
    """Signal a child's whole process group (started with start_new_session); gone already is fine."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal_number)


@contextmanager
def background_python(args: list[str], folder: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`python args...` with stdout/stderr in folder/stdout and folder/stderr; workers use this Python."""
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable}
    with open(folder / "stdout", "wb") as stdout, open(folder / "stderr", "wb") as stderr:
        process = subprocess.Popen([sys.executable, *args], stdout=stdout, stderr=stderr, env=env)
    try:
        yield process
    finally:
        if process.poll() is None:  # still running: a server, or tests cut short
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
