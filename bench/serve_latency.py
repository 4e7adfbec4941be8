"""Benchmark: latency and throughput of `fruitpipe serve` with N concurrent clients.

    .venv/bin/python bench/serve_latency.py [--model MODEL_DIR] [--clients 1,2,4,8] [--requests 400]
                                            [--servers 1x2,2x1] [--output bench/serve_results.json]

A real server process (uvicorn, started like `fruitpipe serve --port 0`) is measured over loopback
HTTP: N client threads (one keep-alive httpx connection each) POST the bundled sample's Test photos
(270 JPEGs, 100x100) as multipart uploads, back to back, `--requests` in total per point after a
warm-up. Latency is the client's wall time per request (upload, decode, CNN, PCA, classifier,
JSON); `inference_ms` is the server's own time in `predict_bytes` (queueing excluded).

`--servers TxC`: T ONNX Runtime threads per inference, C inferences at a time (`--threads T
--concurrency C`; 1x2 is `fruitpipe serve`'s default on 2 cores). Without --model, a model is
trained on the bundled sample first (`fruitpipe run` + `fruitpipe train`, a few minutes) in a
temporary folder.

The clients share the 2 cores with the server; their CPU time, the server's and everything else's
(other load on the machine) are recorded per point, with the load average, so the figures can be
read in context. Writes bench/serve_results.json and prints a markdown table. Target: p95 < 50 ms.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import psutil

from fruitpipe.devtools.serveprocess import running_server
from fruitpipe.sampledata import bundled_sample_dir

HERE = Path(__file__).resolve().parent
TARGET_P95_MS = 50.0
WARM_UP_REQUESTS = 30
# clients send without Nagle's delay, as browsers and curl do (httpx leaves it on by default)
NO_DELAY = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]


def sample_photos() -> list[tuple[str, bytes]]:
    test = Path(bundled_sample_dir()) / "Test"
    return [(path.name, path.read_bytes()) for path in sorted(test.glob("*/*.jpg"))]


def train_model(folder: Path) -> Path:
    """`fruitpipe run` + `fruitpipe train` on the bundled sample, as a user would."""
    run_output, model_dir = folder / "run", folder / "model"
    for args in (["run", "--output", str(run_output), "--master", "local[2]"],
                 ["train", "--features", str(run_output), "--output", str(model_dir), "--master", "local[2]"]):
        subprocess.run([sys.executable, "-m", "fruitpipe.cli", *args], check=True, stdout=subprocess.DEVNULL)
    return model_dir


class Load:
    """CPU seconds of the whole machine, the server and this process (the clients) between start and stop."""

    def __init__(self, server_pid: int) -> None:
        self.server = psutil.Process(server_pid)
        self.me = psutil.Process()

    @staticmethod
    def _busy(times) -> float:
        return times.user + times.system + getattr(times, "nice", 0.0) + getattr(times, "irq", 0.0) + \
            getattr(times, "softirq", 0.0) + getattr(times, "steal", 0.0)

    def _sample(self) -> tuple[float, float, float, float]:
        server, me = self.server.cpu_times(), self.me.cpu_times()
        return (time.perf_counter(), self._busy(psutil.cpu_times()), server.user + server.system, me.user + me.system)

    def start(self) -> None:
        self.loadavg = os.getloadavg()
        self.begin = self._sample()

    def stop(self) -> dict[str, object]:
        end = self._sample()
        wall, machine, server, clients = (b - a for a, b in zip(self.begin, end))
        return {
            "loadavg_1_5_15_before": [round(x, 2) for x in self.loadavg],
            "cpu_cores_used": {"machine": round(machine / wall, 2), "server": round(server / wall, 2),
                               "clients": round(clients / wall, 2),
                               "other": round(max(machine - server - clients, 0.0) / wall, 2)},
        }


def measure(base_url: str, photos: list[tuple[str, bytes]], clients: int, requests: int,
            load: Load) -> dict[str, object]:
    """`requests` uploads spread over `clients` threads, back to back; latencies in ms."""
    latencies: list[float] = []
    inference: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()
    issued = iter(range(requests))

    def client() -> None:
        with httpx.Client(base_url=base_url, timeout=120, transport=httpx.HTTPTransport(socket_options=NO_DELAY)) as http:
            while True:
                with lock:
                    index = next(issued, None)
                if index is None:
                    return
                name, data = photos[index % len(photos)]
                started = time.perf_counter()
                response = http.post("/predict", files={"file": (name, data, "image/jpeg")})
                elapsed = (time.perf_counter() - started) * 1000.0
                with lock:
                    if response.status_code == 200:
                        latencies.append(elapsed)
                        inference.append(response.json()["inference_ms"])
                    else:
                        failures.append(f"{response.status_code} {response.text[:200]}")

    threads = [threading.Thread(target=client) for _ in range(clients)]
    load.start()
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    context = load.stop()
    values = np.asarray(latencies)
    return {
        "clients": clients, "requests": requests, "ok": len(latencies), "failed": len(failures),
        "failures": failures[:5], "wall_s": round(wall, 3),
        "throughput_img_s": round(len(latencies) / wall, 1),
        "latency_ms": {name: round(float(np.percentile(values, q)), 2) for name, q in
                       (("p50", 50), ("p95", 95), ("p99", 99), ("max", 100))} | {"mean": round(float(values.mean()), 2)},
        "server_inference_ms": {"p50": round(float(np.percentile(inference, 50)), 2),
                                "p95": round(float(np.percentile(inference, 95)), 2)},
        "server_cpu_ms_per_request": round(context["cpu_cores_used"]["server"] * wall * 1000.0 / max(len(latencies), 1), 1),
        **context,
    }


def run_server_config(model_dir: Path, spec: str, clients: list[int], requests: int,
                      photos: list[tuple[str, bytes]]) -> list[dict[str, object]]:
    threads, concurrency = (int(part) for part in spec.split("x"))
    with tempfile.TemporaryDirectory(prefix="fruitpipe-serve-bench-") as logs, \
            running_server(model_dir, Path(logs), "--threads", str(threads), "--concurrency", str(concurrency)) as server:
        load = Load(server.process.pid)
        measure(server.base_url, photos, 1, WARM_UP_REQUESTS, load)
        points = []
        for count in clients:
            point = {"server": {"onnx_threads": threads, "concurrency": concurrency},
                     **measure(server.base_url, photos, count, requests, load)}
            print(row(point), flush=True)
            points.append(point)
        return points


def row(point: dict) -> str:
    latency, cpu, server = point["latency_ms"], point["cpu_cores_used"], point["server"]
    return (f"| {server['onnx_threads']}x{server['concurrency']} | {point['clients']} | {point['ok']}/{point['requests']} "
            f"| {latency['p50']:.1f} | {latency['p95']:.1f} | {latency['p99']:.1f} | {point['throughput_img_s']:.1f} "
            f"| {point['server_inference_ms']['p50']:.1f} | {cpu['server']:.2f} / {cpu['clients']:.2f} / {cpu['other']:.2f} "
            f"| {point['loadavg_1_5_15_before'][0]:.2f} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="model folder from 'fruitpipe train' (default: train one)")
    parser.add_argument("--clients", default="1,2,4,8", help="concurrent clients, comma-separated")
    parser.add_argument("--requests", type=int, default=400, help="measured requests per point")
    parser.add_argument("--servers", default="1x2,2x1", help="server configs TxC: ONNX threads x concurrency")
    parser.add_argument("--output", type=Path, default=HERE / "serve_results.json")
    args = parser.parse_args()
    clients = [int(part) for part in args.clients.split(",")]
    photos = sample_photos()
    with tempfile.TemporaryDirectory(prefix="fruitpipe-serve-model-") as scratch:
        model_dir = args.model or train_model(Path(scratch))
        print("| server TxC | clients | ok | p50 ms | p95 ms | p99 ms | img/s | server inference p50 ms "
              "| cores: server / clients / other | load 1 min |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        points = [point for spec in args.servers.split(",")
                  for point in run_server_config(model_dir, spec, clients, args.requests, photos)]
    results = {
        "what": "fruitpipe serve: POST /predict of 100x100 JPEGs (bundled sample Test split) over loopback HTTP",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "images": {"count": len(photos), "mean_bytes": round(sum(len(d) for _, d in photos) / len(photos))},
        "target_p95_ms": TARGET_P95_MS,
        "points": points,
    }
    args.output.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.output}")
    return 0 if all(point["failed"] == 0 for point in points) else 1


if __name__ == "__main__":
    sys.exit(main())
