"""`fruitpipe serve` as its own process on 127.0.0.1 (a free port chosen by the OS), for the tests and the benchmark."""
from __future__ import annotations

import re
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from fruitpipe.devtools.processes import background_python

LISTENING = re.compile(r"on (http://127\.0\.0\.1:\d+)/")
STARTUP_GUARD_S = 180  # a guard against a hung start, not a measurement


@dataclass(frozen=True)
class ServerProcess:
    base_url: str
    process: subprocess.Popen[bytes]


@contextmanager
def running_server(model_dir: str | Path, folder: Path, *extra_args: str) -> Iterator[ServerProcess]:
    """`fruitpipe serve --model model_dir --port 0 extra_args...`, output in `folder`; ready once /health answers."""
    args = ["-m", "fruitpipe.cli", "serve", "--model", str(model_dir), "--host", "127.0.0.1", "--port", "0",
            *extra_args]
    with background_python(args, folder) as process:
        base_url = _wait_until_listening(process, folder / "stderr")
        _wait_until_healthy(base_url, process)
        yield ServerProcess(base_url, process)  # leaving the block terminates the server


def _wait_until_listening(process: subprocess.Popen[bytes], stderr: Path) -> str:
    deadline = time.monotonic() + STARTUP_GUARD_S
    while time.monotonic() < deadline:
        found = LISTENING.search(stderr.read_text(errors="replace"))
        if found:
            return found.group(1)
        if process.poll() is not None:
            raise RuntimeError(f"fruitpipe serve exited with {process.returncode}:\n{stderr.read_text()}")
        time.sleep(0.2)
    raise RuntimeError(f"fruitpipe serve did not start within {STARTUP_GUARD_S} s:\n{stderr.read_text()}")


def _wait_until_healthy(base_url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + STARTUP_GUARD_S
    while True:
        try:
            with urllib.request.urlopen(f"{base_url}/health", timeout=10) as response:
                if response.status == 200:
                    return
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(f"fruitpipe serve at {base_url} never answered /health") from None
        time.sleep(0.2)
