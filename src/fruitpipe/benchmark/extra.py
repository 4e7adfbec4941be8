"""The opt-in measurements of `fruitpipe bench` that run fruitpipe as it is deployed, not as a library.

- **cluster** (`--only cluster`): `fruitpipe run --master spark://...` on a Spark standalone cluster on this
  machine (`fruitpipe.devtools.standalone`: a master and 1-core workers on 127.0.0.1, from pip's pyspark),
  first with 1 worker, then with 2, on the benchmark's synthetic Fruits 360-style images. It gives the
  per-core featurize throughput (the sizing table in deploy/emr/README.md is built on it) and the scaling
  efficiency = rate(2 workers) / (2 x rate(1 worker)); the best of `runs` runs per size is kept and the
  1-minute load average before each run is recorded.
- **serve** (`--only serve`): latency and throughput of a real `fruitpipe serve` process (uvicorn on a free
  loopback port, `fruitpipe.devtools.serveprocess`) with N concurrent clients. Each client thread holds one
  keep-alive connection and POSTs the bundled sample's Test photos (270 JPEGs, 100x100) back to back,
  `requests` per point after a warm-up. Latency is the client's wall time per request (upload, decode,
  CNN, PCA, classifier, JSON); `server_inference_ms` is the server's own time in `answer_bytes` (queueing
  excluded). Server configs "TxC": T ONNX Runtime threads per inference, C inferences at a time (1x2 is
  `fruitpipe serve`'s default on 2 cores). Without a `model` parameter a model is trained on the bundled
  sample first (`fruitpipe run` + `fruitpipe train`, a few minutes). The clients share the cores with the
  server, so the CPU use of the server, the clients and everything else is recorded per point, with the
  load average. Target: p95 < 50 ms.

Each runs in its own process like the measures of `measures.py`, through the same contract:
`python -m fruitpipe.benchmark.extra NAME PARAMS_JSON OUT_JSON`. Not tests: the rates depend on the machine.
"""
from __future__ import annotations

import json
import logging
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from fruitpipe.batch.manifest import RunManifest
from fruitpipe.devtools.serveprocess import running_server
from fruitpipe.devtools.standalone import StandaloneCluster
from fruitpipe.image.sampledata import bundled_sample_dir

logger = logging.getLogger(__name__)

Params = dict[str, Any]
Photo = tuple[str, bytes]

# ---------------------------------------------------------------- cluster scaling

CLUSTER_SIZES = (1, 2)  # workers of 1 core each
CLUSTER_CONF = ["spark.executor.memory=1g", "spark.scheduler.minRegisteredResourcesRatio=1.0",
                "spark.scheduler.maxRegisteredResourcesWaitingTime=120s", "spark.ui.enabled=false"]


def cluster_scaling(params: Params) -> dict[str, Any]:
    """`fruitpipe run` on 1 then 2 standalone workers over `params["folder"]`; best of `runs` runs per size."""
    images, repeats = Path(params["folder"]), int(params.get("runs", 1))
    with tempfile.TemporaryDirectory(prefix="fruitpipe-scaling-") as tmp:
        runs = [_run_on_cluster(workers, images, Path(tmp), index)
                for workers in CLUSTER_SIZES for index in range(repeats)]
    best = {w: max((r for r in runs if r["workers"] == w), key=lambda r: r["featurize_img_s"]) for w in CLUSTER_SIZES}
    return {
        "machine": _machine_name(),
        "runs": runs,
        "per_core_featurize_img_s": best[1]["featurize_img_s"],
        "scaling_efficiency": round(best[2]["featurize_img_s"] / (2 * best[1]["featurize_img_s"]), 3),
        "command": params.get("command", "fruitpipe bench --only cluster"),
    }


def _run_on_cluster(workers: int, images: Path, scratch: Path, index: int) -> dict[str, Any]:
    """One `fruitpipe run --json` on a fresh cluster of `workers` 1-core workers; the manifest's figures."""
    with StandaloneCluster(scratch / f"cluster-{workers}-{index}", workers=workers, memory="1536m") as cluster:
        command = _run_command(cluster.master_url, images, scratch / f"out-{workers}-{index}")
        load = os.getloadavg()[0]
        logger.info("cluster: %d worker(s), run %d ...", workers, index + 1)
        result = subprocess.run(command, capture_output=True, text=True, check=False,
                                env={**os.environ, "PYSPARK_PYTHON": sys.executable})
        if result.returncode:
            logger.error("fruitpipe run failed:\n%s\n%s", result.stderr[-3000:], cluster.logs())
            last = result.stderr.strip().splitlines()[-1:] or ["no output"]
            raise RuntimeError(f"fruitpipe run on {workers} worker(s) exited with {result.returncode}: {last[0]}")
    manifest = RunManifest.loads(result.stdout, f"the manifest printed by fruitpipe run on {workers} worker(s)")
    timings = manifest.timings_s
    return {"workers": workers, "cores": workers, "images": manifest.counts.listed,
            "featurize_s": timings.stages["featurize"], "featurize_img_s": manifest.featurize_img_s,
            "total_s": timings.total, "load_avg_1m_before": round(load, 2)}


def _run_command(master_url: str, images: Path, output: Path) -> list[str]:
    command = [sys.executable, "-m", "fruitpipe", "run", "--json", "--master", master_url,
               "--input", str(images), "--output", str(output)]
    for pair in CLUSTER_CONF:
        command += ["--conf", pair]
    return command


def _machine_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    models = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
              if line.startswith("model name")] if cpuinfo.exists() else []
    return f"{os.cpu_count()} cores" + (f", {models[0]}" if models else "")


# ---------------------------------------------------------------- serve latency

SERVE_CLIENTS = (1, 2, 4, 8)
SERVE_REQUESTS = 400  # measured requests per point
SERVE_SERVERS = ("1x2", "2x1")  # ONNX Runtime threads x concurrent inferences
TARGET_P95_MS = 50.0
WARM_UP_REQUESTS = 30
# clients send without Nagle's delay, as browsers and curl do (httpx leaves it on by default)
NO_DELAY = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]


def serve_latency(params: Params) -> dict[str, Any]:
    """Every server config x every client count against a `fruitpipe serve` process; "error" if requests failed."""
    clients = [int(count) for count in params.get("clients", SERVE_CLIENTS)]
    requests, servers = int(params.get("requests", SERVE_REQUESTS)), list(params.get("servers", SERVE_SERVERS))
    photos = sample_photos()
    with tempfile.TemporaryDirectory(prefix="fruitpipe-serve-model-") as scratch:
        model_dir = Path(params["model"]) if params.get("model") else _train_model(Path(scratch))
        extra = tuple(str(arg) for arg in params.get("server_args", ()))  # e.g. ("--tta", "4")
        points = [point for spec in servers
                  for point in _serve_config(model_dir, spec, clients, requests, photos, extra)]
    result = {
        "what": "fruitpipe serve: POST /predict of 100x100 JPEGs (bundled sample Test split) over loopback HTTP",
        "command": params.get("command", "fruitpipe bench --only serve"),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "images": {"count": len(photos), "mean_bytes": round(sum(len(d) for _, d in photos) / len(photos))},
        "target_p95_ms": TARGET_P95_MS,
        "points": points,
    }
    failed = sum(int(point["failed"]) for point in points)
    return result | ({"error": f"{failed} request(s) failed"} if failed else {})


def sample_photos() -> list[Photo]:
    test = Path(bundled_sample_dir()) / "Test"
    return [(path.name, path.read_bytes()) for path in sorted(test.glob("*/*.jpg"))]


def _train_model(folder: Path) -> Path:
    """`fruitpipe run` + `fruitpipe train` on the bundled sample, as a user would."""
    run_output, model_dir = folder / "run", folder / "model"
    logger.info("serve: training a model on the bundled sample in %s ...", folder)
    for args in (["run", "--output", str(run_output), "--master", "local[2]"],
                 ["train", "--features", str(run_output), "--output", str(model_dir), "--master", "local[2]"]):
        subprocess.run([sys.executable, "-m", "fruitpipe.cli", *args], check=True, stdout=subprocess.DEVNULL)
    return model_dir


def _serve_config(model_dir: Path, spec: str, clients: list[int], requests: int,
                  photos: list[Photo], extra: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """One server process ("TxC", plus `extra` serve flags), warmed up, then one point per client count."""
    threads, concurrency = (int(part) for part in spec.split("x"))
    server_args = ("--threads", str(threads), "--concurrency", str(concurrency), *extra)
    with tempfile.TemporaryDirectory(prefix="fruitpipe-serve-bench-") as logs, \
            running_server(model_dir, Path(logs), *server_args) as server:
        load = CpuLoad(server.process.pid)
        measure(server.base_url, photos, 1, WARM_UP_REQUESTS, load)
        points = []
        for count in clients:
            point = {"server": {"onnx_threads": threads, "concurrency": concurrency},
                     **measure(server.base_url, photos, count, requests, load)}
            logger.info("serve: %s", row(point))
            points.append(point)
        return points


class CpuLoad:
    """CPU seconds of the whole machine, the server and this process (the clients) between start and stop."""

    def __init__(self, server_pid: int) -> None:
        self.server = psutil.Process(server_pid)
        self.me = psutil.Process()
        self.loadavg: tuple[float, float, float] = (0.0, 0.0, 0.0)
        self.begin: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)

    @staticmethod
    def _busy(times: Any) -> float:
        return sum(getattr(times, name, 0.0) for name in ("user", "system", "nice", "irq", "softirq", "steal"))

    def _sample(self) -> tuple[float, float, float, float]:
        server, me = self.server.cpu_times(), self.me.cpu_times()
        return (time.perf_counter(), self._busy(psutil.cpu_times()), server.user + server.system, me.user + me.system)

    def start(self) -> None:
        self.loadavg = os.getloadavg()
        self.begin = self._sample()

    def stop(self) -> dict[str, Any]:
        wall, machine, server, clients = (b - a for a, b in zip(self.begin, self._sample(), strict=True))
        return {
            "loadavg_1_5_15_before": [round(x, 2) for x in self.loadavg],
            "cpu_cores_used": {"machine": round(machine / wall, 2), "server": round(server / wall, 2),
                               "clients": round(clients / wall, 2),
                               "other": round(max(machine - server - clients, 0.0) / wall, 2)},
        }


@dataclass
class _Tally:
    """What the client threads record, under one lock; `issued` hands out request numbers."""

    requests: int
    latencies: list[float] = field(default_factory=list)
    inference: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    issued: Iterator[int] = field(init=False)

    def __post_init__(self) -> None:
        self.issued = iter(range(self.requests))

    def next_request(self) -> int | None:
        with self.lock:
            return next(self.issued, None)


def measure(base_url: str, photos: list[Photo], clients: int, requests: int, load: CpuLoad) -> dict[str, Any]:
    """`requests` uploads spread over `clients` threads, back to back; latencies in ms."""
    tally = _Tally(requests)
    threads = [threading.Thread(target=_client, args=(base_url, photos, tally)) for _ in range(clients)]
    load.start()
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    return _summary(tally, clients, wall, load.stop())


def _client(base_url: str, photos: list[Photo], tally: _Tally) -> None:
    """One keep-alive connection posting photos until no request number is left."""
    import httpx  # the test extra's HTTP client, as in the server tests

    transport = httpx.HTTPTransport(socket_options=NO_DELAY)
    with httpx.Client(base_url=base_url, timeout=120, transport=transport) as http:
        while (index := tally.next_request()) is not None:
            name, data = photos[index % len(photos)]
            started = time.perf_counter()
            response = http.post("/predict", files={"file": (name, data, "image/jpeg")})
            elapsed = (time.perf_counter() - started) * 1000.0
            with tally.lock:
                if response.status_code == 200:
                    tally.latencies.append(elapsed)
                    tally.inference.append(response.json()["inference_ms"])
                else:
                    tally.failures.append(f"{response.status_code} {response.text[:200]}")


def _summary(tally: _Tally, clients: int, wall: float, context: dict[str, Any]) -> dict[str, Any]:
    ok = len(tally.latencies)
    return {
        "clients": clients, "requests": tally.requests, "ok": ok, "failed": len(tally.failures),
        "failures": tally.failures[:5], "wall_s": round(wall, 3),
        "throughput_img_s": round(ok / wall, 1),
        "latency_ms": _percentiles(tally.latencies, (("p50", 50), ("p95", 95), ("p99", 99), ("max", 100)), mean=True),
        "server_inference_ms": _percentiles(tally.inference, (("p50", 50), ("p95", 95))),
        "server_cpu_ms_per_request": round(context["cpu_cores_used"]["server"] * wall * 1000.0 / max(ok, 1), 1),
        **context,
    }


def _percentiles(values: list[float], quantiles: tuple[tuple[str, int], ...], mean: bool = False
                 ) -> dict[str, float | None]:
    """Rounded percentiles (and the mean); None for each when no request succeeded."""
    array = np.asarray(values, dtype=float)
    found: dict[str, float | None] = {name: round(float(np.percentile(array, q)), 2) if array.size else None
                                      for name, q in quantiles}
    if mean:
        found["mean"] = round(float(array.mean()), 2) if array.size else None
    return found


def row(point: dict[str, Any]) -> str:
    """One point as a line of the markdown table of README's "Serving latency"."""
    latency, cpu, server = point["latency_ms"], point["cpu_cores_used"], point["server"]
    return (f"| {server['onnx_threads']}x{server['concurrency']} | {point['clients']} "
            f"| {point['ok']}/{point['requests']} | {_ms(latency['p50'])} | {_ms(latency['p95'])} "
            f"| {_ms(latency['p99'])} | {point['throughput_img_s']:.1f} | {_ms(point['server_inference_ms']['p50'])} "
            f"| {cpu['server']:.2f} / {cpu['clients']:.2f} / {cpu['other']:.2f} "
            f"| {point['loadavg_1_5_15_before'][0]:.2f} |")


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


# ---------------------------------------------------------------- the child process

MEASURES: dict[str, Callable[[Params], dict[str, Any]]] = {
    "cluster_scaling": cluster_scaling,
    "serve_latency": serve_latency,
}


def main(argv: list[str]) -> int:
    """NAME PARAMS_JSON OUT_JSON: run one measure, write its result (the harness's child process)."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    name, params, out = argv[0], json.loads(argv[1]), Path(argv[2])
    out.write_text(json.dumps(MEASURES[name](params)), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
