"""The benchmark run: plan the measurements, run each in its own process while sampling its peak RSS,
write results.json after every one (so an interrupted run resumes with --resume), then the targets and the table.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fruitpipe.benchmark import DEFAULT_MEASUREMENTS, MEASUREMENTS, dataset, report
from fruitpipe.benchmark.memory import PeakRss
from fruitpipe.image import models

logger = logging.getLogger(__name__)

BUCKET, PREFIX = "fruitpipe-bench", "images"
ALL = MEASUREMENTS
MEASURES_MODULE, EXTRA_MODULE = "fruitpipe.benchmark.measures", "fruitpipe.benchmark.extra"  # child entry points
FRUITS360_IMAGES = 90_483  # the size of Fruits 360 (100x100, 131 classes): `--only fruits360`
CLUSTER_IMAGES = 1_800  # the cluster runs' set: 100 per class (fewer if --images is smaller)


@dataclass(frozen=True)
class BenchOptions:
    """One benchmark run. Defaults are the issue's full run (about 15 min on 2 cores)."""

    images: int = 10_000  # the main data set (measurements 2, 3, 4, 7)
    scaling: tuple[int, ...] = (2_000, 10_000, 20_000)
    subset: int = 1_000  # baselines slower than 50 img/s stop here
    s3_images: int = 2_000
    latency_ms: float = 20.0
    limit_images: int = 1_280  # the embed levers' images
    limit_seconds: float = 6.0  # per thread / batch / process setting of the limit
    batch_size: int = 64
    only: tuple[str, ...] = DEFAULT_MEASUREMENTS
    resume: bool = False
    results: Path = Path("bench/results.json")
    doc: Path | None = Path("docs/performance.md")
    data_dir: Path = field(default_factory=lambda: models.cache_dir().parent / "bench-data")
    timeout_s: float = 1200.0  # per measurement: a hung baseline is recorded as failed, the others still run
    command: str = "fruitpipe bench"

    def __post_init__(self) -> None:
        unknown = sorted(set(self.only) - set(ALL))
        if unknown:
            raise ValueError(f"unknown measurement(s) {', '.join(unknown)}; known: {', '.join(ALL)}")
        if min(self.images, self.subset, self.s3_images, self.limit_images, self.batch_size, *self.scaling) < 2:
            raise ValueError("image counts and the batch size must be >= 2")
        if self.latency_ms < 0 or self.timeout_s <= 0:
            raise ValueError("latency must be >= 0 and the timeout > 0")

    def fingerprint(self) -> dict[str, Any]:
        """What must match for a resumed run to reuse earlier measurements."""
        keep = ("images", "scaling", "subset", "s3_images", "latency_ms", "limit_images", "limit_seconds", "batch_size")
        return {key: value for key, value in asdict(self).items() if key in keep} | {"scaling": list(self.scaling)}


@dataclass(frozen=True)
class Measurement:
    key: str  # results.json key
    measure: str  # name in the MEASURES table of `module`
    size: int  # images in the folder it reads
    params: dict[str, Any] = field(default_factory=dict)
    s3: bool = False
    module: str = MEASURES_MODULE  # run in the child as `python -m module measure PARAMS OUT`


def plan(options: BenchOptions) -> list[Measurement]:
    """The measurements to run, in order; a scaling size equal to the main size reuses the main run."""
    common = {"batch_size": options.batch_size, "subset": options.subset}
    steps = {
        "limit": [Measurement("limit", "limit", options.images, {**common, "limit_seconds": options.limit_seconds})],
        "fruitpipe": [Measurement("fruitpipe", "fruitpipe_run", options.images, common)],
        "scaling": [Measurement(f"fruitpipe_{n}", "fruitpipe_run", n, common)
                    for n in options.scaling if n != options.images],
        "s3": [Measurement(f"fruitpipe_s3_{options.s3_images}", "fruitpipe_run", options.s3_images, common, s3=True)],
    }
    bf16 = {**common, "precision": "bf16"}
    steps["bf16"] = [Measurement("limit_bf16", "limit", options.images,
                                 {**bf16, "limit_seconds": options.limit_seconds}),
                     Measurement("fruitpipe_bf16", "fruitpipe_run", options.images, bf16)]
    steps["fruits360"] = [Measurement("fruits360", "fruitpipe_run", FRUITS360_IMAGES, common)]
    steps["levers"] = lever_steps(options, common)
    steps |= extra_steps(options)
    chosen = []
    for name in ALL:
        if name in options.only:
            chosen += steps.get(name, [Measurement(name, name, options.images, common)])
    reference = "fruitpipe" if options.s3_images == options.images else f"fruitpipe_{options.s3_images}"
    if "s3" in options.only and reference not in [step.key for step in chosen]:  # the local run S3 is compared to
        main = Measurement(reference, "fruitpipe_run", options.s3_images, common)
        chosen.insert(next(index for index, step in enumerate(chosen) if step.s3), main)  # just before it
    return chosen


def extra_steps(options: BenchOptions) -> dict[str, list[Measurement]]:
    """The opt-in deployment measurements of benchmark/extra.py (standalone cluster, `fruitpipe serve`)."""
    command = {"command": options.command}
    return {
        "cluster": [Measurement("cluster", "cluster_scaling", min(options.images, CLUSTER_IMAGES),
                                {**command, "runs": 1}, module=EXTRA_MODULE)],
        # serve posts the bundled sample's photos, not the benchmark set: 2 is the least prepare() accepts
        "serve": [Measurement("serve", "serve_latency", 2, command, module=EXTRA_MODULE)],
    }


LEVERS: dict[str, dict[str, Any]] = {  # fruitpipe run variants, each against "lever_baseline" (the defaults)
    "lever_baseline": {},
    "lever_one_slot_two_ort_threads": {"conf": [["spark.task.cpus", "2"]]},
    "lever_batch_16": {"batch_size": 16},
    "lever_batch_128": {"batch_size": 128},
    "lever_arrow_64_records": {"conf": [["spark.sql.execution.arrow.maxRecordsPerBatch", "64"]]},
    "lever_partitions_of_1024": {"rows_per_partition": 1024},
    "lever_partitions_of_64": {"rows_per_partition": 64},
    "lever_no_worker_reuse": {"conf": [["spark.python.worker.reuse", "false"]]},
    "lever_image_size_192": {"image_size": 192},
    "lever_image_size_160": {"image_size": 160},
}


def lever_steps(options: BenchOptions, common: dict[str, Any]) -> list[Measurement]:
    """A/B runs at the main size, one after another: the raw-model levers in one process, then run variants."""
    steps = [Measurement("lever_embed", "embed_levers", options.images, {**common, "images": options.limit_images})]
    return steps + [Measurement(key, "fruitpipe_run", options.images, {**common, **variant})
                    for key, variant in LEVERS.items()]


def run(options: BenchOptions) -> dict[str, Any]:
    """Run every planned measurement (skipping finished ones on --resume) and write results + table."""
    results = _load(options)
    steps = plan(options)
    folders = dataset.prepare(options.data_dir, [step.size for step in steps])
    _warm_jvm_archive(folders[min(folders)])
    for step in steps:
        done = results["measurements"].get(step.key)
        if options.resume and done and "error" not in done:
            logger.info("%s: done in an earlier run, kept", step.key)
            continue
        logger.info("%s: %d images ...", step.key, step.size)
        results["measurements"][step.key] = _run_step(step, folders[step.size], options)
        _save(results, options)
    results["targets"] = report.targets(results["measurements"], options.images, options.scaling,
                                        options.s3_images)
    results["finished"] = _now()
    _save(results, options)
    if options.doc is not None:
        report.update_doc(options.doc, results)
    return results


def _warm_jvm_archive(folder: Path) -> None:
    """One unmeasured `fruitpipe run` on the smallest set, so that every measured Spark run maps the driver
    JVM's class archive (session.class_data_sharing) as a user's second and later runs do."""
    from fruitpipe.batch.session import class_archive_ready

    if class_archive_ready():
        return
    with tempfile.TemporaryDirectory(prefix="fruitpipe-bench-warm-") as work:
        subprocess.run([sys.executable, "-m", "fruitpipe", "run", "--input", str(folder), "--output", f"{work}/out",
                        "--json"],
                       capture_output=True, timeout=600, check=False)
    for _ in range(240):  # the JVM writes the archive after its Python process has gone
        if class_archive_ready():
            return
        time.sleep(0.5)
    logger.warning("no class-data-sharing archive for the driver JVM: measured runs start without it")


def _load(options: BenchOptions) -> dict[str, Any]:
    fresh = {"command": options.command, "started": _now(), "machine": machine(), "options": options.fingerprint(),
             "measurements": {}}
    if options.resume and options.results.is_file():
        earlier = json.loads(options.results.read_text(encoding="utf-8"))
        if earlier.get("options") == options.fingerprint():
            return {**fresh, "measurements": earlier.get("measurements", {})}
        logger.warning("%s was made with other options: starting afresh", options.results)
    return fresh


def _save(results: dict[str, Any], options: BenchOptions) -> None:
    options.results.parent.mkdir(parents=True, exist_ok=True)
    partial = options.results.with_name(options.results.name + ".partial")
    partial.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(partial, options.results)


def _run_step(step: Measurement, folder: Path, options: BenchOptions) -> dict[str, Any]:
    began = time.perf_counter()
    params = {**step.params, "folder": str(folder)}
    try:
        with (_s3_source(folder, options) if step.s3 else _nothing()) as s3:
            params.update(s3)
            result = _child(step.measure, params, options.timeout_s, step.module)
            result.update({key: s3[key] for key in ("upload_s", "latency_ms") if key in s3})
    except Exception as exc:  # one failed measurement must not lose the others
        logger.error("%s failed: %s", step.key, exc)
        result = {"error": f"{type(exc).__name__}: {exc}"}
    result["wall_s"] = round(time.perf_counter() - began, 1)
    result["dataset_images"] = step.size
    logger.info("%s: %s img/s in %.0f s", step.key, result.get("images_s", "-"), result["wall_s"])
    return result


def _child(measure: str, params: dict[str, Any], timeout_s: float, module: str = MEASURES_MODULE) -> dict[str, Any]:
    """One measure in a fresh Python process (own Spark/Ray/torch, clean RSS), its process tree sampled."""
    with tempfile.TemporaryDirectory(prefix="fruitpipe-bench-") as work:
        out = Path(work, "result.json")
        command = [sys.executable, "-m", module, measure, json.dumps(params), str(out)]
        env = {**os.environ, "PYSPARK_PYTHON": sys.executable}
        with open(Path(work, "stderr"), "wb") as stderr:
            process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr, env=env)
            with PeakRss(process.pid) as peak:
                try:
                    code = process.wait(timeout=timeout_s)
                except subprocess.TimeoutExpired:
                    _kill_tree(process)
                    raise TimeoutError(f"{measure} took longer than {timeout_s:.0f} s") from None
        if code != 0 or not out.is_file():
            tail = Path(work, "stderr").read_text(encoding="utf-8", errors="replace").strip().splitlines()[-5:]
            raise RuntimeError(f"{measure} exited with {code}: {' | '.join(tail)}")
        return {**json.loads(out.read_text(encoding="utf-8")), "peak_rss_mb": peak.result()}


def _kill_tree(process: subprocess.Popen[bytes]) -> None:
    """The child and what it started (its JVM, Spark's or Ray's workers), so nothing is left running."""
    import psutil

    try:
        tree = psutil.Process(process.pid).children(recursive=True)
    except psutil.Error:
        tree = []
    process.kill()
    for child in tree:
        with contextlib.suppress(psutil.Error):
            child.kill()
    process.wait()


@contextmanager
def _nothing() -> Iterator[dict[str, Any]]:
    yield {}


@contextmanager
def _s3_source(folder: Path, options: BenchOptions) -> Iterator[dict[str, Any]]:
    """The folder in a loopback moto S3, behind the latency proxy (both outside the measured process tree)."""
    from fruitpipe.devtools.faultproxy import proxy_process
    from fruitpipe.devtools.s3server import MotoServer, upload_folder, use_dummy_credentials

    use_dummy_credentials()
    with MotoServer() as moto:
        started = time.perf_counter()
        upload_folder(moto, folder, BUCKET, PREFIX)
        upload_s = round(time.perf_counter() - started, 1)
        with proxy_process(moto, options.latency_ms) as endpoint:
            yield {"uri": f"s3://{BUCKET}/{PREFIX}", "endpoint": endpoint, "latency_ms": options.latency_ms,
                   "upload_s": upload_s}


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    import psutil

    cpu = next((line.split(":", 1)[1].strip() for line in _read("/proc/cpuinfo").splitlines()
                if line.startswith("model name")), platform.processor())
    packages = ("pyspark", "onnxruntime", "torch", "ray", "numpy", "pillow", "pyarrow")
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "java": _java(),
        "versions": {name: models.package_version(name) for name in packages},
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def _java() -> str:
    from fruitpipe.batch.session import java_version

    try:
        return str(java_version())
    except ValueError as exc:
        return str(exc)


def _read(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError:
        return ""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
