"""Benchmark: read + decode throughput (images/s) of the executor read path, local files vs S3.

    .venv/bin/python bench/s3_read.py [--per-class 112] [--latency-ms 20] [--repeats 2]

The same synthetic images (`fruitpipe sample-data`, ~2,000 by default) are loaded with
`fruitpipe.executor.worker.load_image` on a thread pool driven exactly as `featurize_partition`
drives it (chunks of batch_size submitted one ahead, read_threads workers), from:

  (a) local files;
  (b) a moto S3 server behind tests/faultproxy.py adding --latency-ms per request
      (read_threads 8, 16, 32);
  (c) the moto server directly (the server's own cost, without the added latency);
  (d) the proxy with no added latency (the proxy's own cost);
  (e) the proxy with the latency, serving the objects from memory after a first pass (no moto
      in the loop: what the read path does against a fast server that is 20 ms away).

The proxy runs as its own process (tests/faultproxy.py main), so it does not share the GIL with
the readers; moto, the proxy and the readers still share this host's CPUs.

Prints a markdown table and the ratio (b)/(a) (issue target >= 0.8) and writes bench/out/s3_read.json.
Only local processes are involved: dummy credentials are set for this process, no network beyond 127.0.0.1.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # s3server.py, faultproxy.py

from s3server import DUMMY_KEY_ID, DUMMY_SECRET, MotoServer, client  # noqa: E402

from fruitpipe import models, sampledata, storage  # noqa: E402
from fruitpipe.config import DecodeLimits, ExecutorSettings, S3Options  # noqa: E402
from fruitpipe.executor.worker import FeaturizeTask, Loaded, load_image  # noqa: E402

BUCKET, PREFIX = "bench-images", "sample"
TARGET_RATIO = 0.8


def use_dummy_credentials() -> None:
    """moto accepts anything; never let this process pick up real credentials or endpoints."""
    os.environ.update({"AWS_ACCESS_KEY_ID": DUMMY_KEY_ID, "AWS_SECRET_ACCESS_KEY": DUMMY_SECRET,
                       "AWS_DEFAULT_REGION": "us-east-1"})
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        os.environ.pop(name, None)


def upload(endpoint: str, folder: Path, relatives: list[str], threads: int = 16) -> None:
    s3 = client(endpoint)
    s3.create_bucket(Bucket=BUCKET)
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda rel: s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}/{rel}",
                                                Body=(folder / rel).read_bytes()), relatives))


@contextlib.contextmanager
def proxy_process(upstream: str, latency_ms: float, cache: bool = False) -> Iterator[str]:
    """tests/faultproxy.py as its own process; yields its endpoint."""
    command = [sys.executable, str(HERE.parent / "tests" / "faultproxy.py"), "--upstream", upstream,
               "--latency-ms", str(latency_ms), *(["--cache-objects"] if cache else [])]
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        endpoint = process.stdout.readline().strip()
        if not endpoint.startswith("http://"):
            raise RuntimeError(f"proxy did not start: {endpoint!r}")
        yield endpoint
    finally:
        process.stdin.close()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def make_task(read_threads: int, endpoint: str | None) -> FeaturizeTask:
    spec = models.resolve("efficientnet-lite0")
    settings = ExecutorSettings(read_threads=read_threads)
    return FeaturizeTask(model_file="unused-by-the-read-path", preprocessing=spec.preprocessing,
                         feature_dim=spec.feature_dim, limits=DecodeLimits(), path_col="path", output_col="features",
                         batch_size=settings.batch_size, read_threads=settings.read_threads,
                         s3=S3Options(endpoint_url=endpoint))


def read_all(uris: list[str], task: FeaturizeTask) -> tuple[int, int]:
    """featurize_partition's loading part: chunk k+1 is submitted before chunk k's results are taken."""
    storage.configure(task.s3)
    ok = failed = 0

    def take(futures: list[Future[Loaded]]) -> None:
        nonlocal ok, failed
        for future in futures:
            if future.result().pixels is not None:
                ok += 1
            else:
                failed += 1

    with ThreadPoolExecutor(max_workers=task.read_threads) as pool:
        pending: list[Future[Loaded]] | None = None
        for start in range(0, len(uris), task.batch_size):
            submitted = [pool.submit(load_image, uri, task) for uri in uris[start:start + task.batch_size]]
            if pending is not None:
                take(pending)
            pending = submitted
        if pending is not None:
            take(pending)
    return ok, failed


def measure(name: str, uris: list[str], task: FeaturizeTask, repeats: int, warm_all: bool = False) -> dict:
    read_all(uris if warm_all else uris[:task.batch_size], task)  # warm-up: client, connections (, cache)
    runs = []
    for _ in range(repeats):
        started = time.perf_counter()
        ok, failed = read_all(uris, task)
        seconds = time.perf_counter() - started
        if failed:
            raise RuntimeError(f"{name}: {failed} of {len(uris)} images failed to load")
        runs.append({"seconds": round(seconds, 3), "images_s": round(ok / seconds, 1)})
    best = max(runs, key=lambda run: run["images_s"])
    result = {"case": name, "read_threads": task.read_threads, "images": len(uris), "images_s": best["images_s"],
              "runs": runs}
    print(f"  {name:<40} threads={task.read_threads:<3} {best['images_s']:8.1f} img/s", flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--per-class", type=int, default=112, help="images per class (18 classes; default 112)")
    parser.add_argument("--latency-ms", type=float, default=20.0, help="latency added per request by the proxy")
    parser.add_argument("--threads", default="8,16,32", help="read_threads to try through the proxy")
    parser.add_argument("--repeats", type=int, default=2, help="timed passes per case (best is reported)")
    parser.add_argument("--json", default=str(HERE / "out" / "s3_read.json"), help="where to write the results")
    args = parser.parse_args(argv)
    use_dummy_credentials()
    default_threads = ExecutorSettings().read_threads
    sweep = sorted({int(t) for t in args.threads.split(",")} | {default_threads})

    with tempfile.TemporaryDirectory(prefix="fruitpipe-bench-") as work:
        folder = Path(work, "images")
        started = time.perf_counter()
        sampledata.synthesize(folder, args.per_class, seed=0)
        relatives = [rel for _, rel in storage.list_files(str(folder), (".jpg", ".jpeg", ".png"))]
        total_bytes = sum((folder / rel).stat().st_size for rel in relatives)
        print(f"{len(relatives)} images ({total_bytes / len(relatives) / 1024:.1f} KiB mean) synthesised in "
              f"{time.perf_counter() - started:.1f}s", flush=True)
        local_uris = [str(folder / rel) for rel in relatives]
        s3_uris = [f"s3://{BUCKET}/{PREFIX}/{rel}" for rel in relatives]

        results = [measure("(a) local files", local_uris, make_task(default_threads, None), args.repeats)]
        with MotoServer() as moto:
            started = time.perf_counter()
            upload(moto, folder, relatives)
            print(f"uploaded to moto in {time.perf_counter() - started:.1f}s", flush=True)
            for threads in sorted({default_threads, max(sweep)}):
                results.append(measure("(c) moto direct", s3_uris, make_task(threads, moto), args.repeats))
            with proxy_process(moto, 0.0) as endpoint:
                results.append(measure("(d) moto via proxy, +0 ms", s3_uris, make_task(default_threads, endpoint),
                                       args.repeats))
            with proxy_process(moto, args.latency_ms) as endpoint:
                for threads in sweep:
                    results.append(measure(f"(b) moto via proxy, +{args.latency_ms:g} ms", s3_uris,
                                           make_task(threads, endpoint), args.repeats))
            with proxy_process(moto, args.latency_ms, cache=True) as endpoint:
                for index, threads in enumerate(sweep):
                    results.append(measure(f"(e) in-memory via proxy, +{args.latency_ms:g} ms", s3_uris,
                                           make_task(threads, endpoint), args.repeats, warm_all=index == 0))

    local = results[0]["images_s"]
    for result in results:
        result["ratio_to_local"] = round(result["images_s"] / local, 3)
    b_default = next(r for r in results if r["case"].startswith("(b)") and r["read_threads"] == default_threads)
    b_best = max((r for r in results if r["case"].startswith("(b)")), key=lambda r: r["images_s"])
    summary = {
        "images": len(relatives),
        "mean_kib": round(total_bytes / len(relatives) / 1024, 1),
        "latency_ms": args.latency_ms,
        "default_read_threads": default_threads,
        "ratio_b_over_a": b_default["ratio_to_local"],
        "best_b": {"read_threads": b_best["read_threads"], "ratio_b_over_a": b_best["ratio_to_local"]},
        "target": TARGET_RATIO,
        "meets_target": b_default["ratio_to_local"] >= TARGET_RATIO,
        "host": {"cpus": os.cpu_count(), "python": platform.python_version(), "machine": platform.machine()},
        "ceiling_b_img_s": {str(t): round(t / (args.latency_ms / 1000), 1) for t in sweep} if args.latency_ms else None,
        "note": "moto, the proxy (own process) and the readers share this host's CPUs; (c), (d), (e) separate "
                "the server's, the proxy's and the latency's shares",
        "results": results,
    }

    print()
    print("| case | read_threads | images/s | vs local (a) |")
    print("|---|---:|---:|---:|")
    for result in results:
        print(f"| {result['case']} | {result['read_threads']} | {result['images_s']:.1f} | "
              f"{result['ratio_to_local']:.2f} |")
    print()
    if args.latency_ms:
        print(f"latency ceiling for one GET per image: read_threads / {args.latency_ms:g} ms = "
              + ", ".join(f"{t}: {v:.0f} img/s" for t, v in summary["ceiling_b_img_s"].items()))
    print(f"(b)/(a) at read_threads={default_threads}: {summary['ratio_b_over_a']:.2f} "
          f"(target >= {TARGET_RATIO}; best (b) {b_best['ratio_to_local']:.2f} at read_threads={b_best['read_threads']})")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
