"""Throughput on a Spark standalone cluster of 1 worker vs 2 workers (1 core each) on this machine.

    .venv/bin/python bench/cluster_scaling.py [--per-class 100] [--runs 1]

Uses fruitpipe.devtools.standalone (master + workers on 127.0.0.1 from pip's pyspark), runs
`fruitpipe run --master spark://...` on a synthesised Fruits 360-like set, and writes
bench/out/cluster_scaling.json: per-core featurize throughput (feeds the sizing table in
deploy/emr/README.md) and the scaling efficiency = rate(2 workers) / (2 x rate(1 worker)).
Not a test: rates depend on the machine and its load (the 1-minute load average is recorded).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from fruitpipe import sampledata
from fruitpipe.devtools.standalone import StandaloneCluster

ROOT = Path(__file__).resolve().parents[1]

CONF = ["spark.executor.memory=1g", "spark.scheduler.minRegisteredResourcesRatio=1.0",
        "spark.scheduler.maxRegisteredResourcesWaitingTime=120s", "spark.ui.enabled=false"]


def run_on_cluster(workers: int, images: Path, scratch: Path, index: int) -> dict:
    with StandaloneCluster(scratch / f"cluster-{workers}-{index}", workers=workers, memory="1536m") as cluster:
        output = scratch / f"out-{workers}-{index}"
        command = [sys.executable, "-m", "fruitpipe", "run", "--json", "--master", cluster.master_url,
                   "--input", str(images), "--output", str(output)]
        for pair in CONF:
            command += ["--conf", pair]
        load = os.getloadavg()[0]
        result = subprocess.run(command, capture_output=True, text=True,
                                env={**os.environ, "PYSPARK_PYTHON": sys.executable})
        if result.returncode:
            raise SystemExit(f"run failed:\n{result.stderr[-3000:]}\n{cluster.logs()}")
    manifest = json.loads(result.stdout)
    timings = manifest["timings_s"]
    return {"workers": workers, "cores": workers, "images": manifest["counts"]["listed"],
            "featurize_s": timings["featurize"], "featurize_img_s": manifest["featurize_img_s"],
            "total_s": timings["total"], "load_avg_1m_before": round(load, 2)}


def machine() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    models = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
              if line.startswith("model name")] if cpuinfo.exists() else []
    return f"{os.cpu_count()} cores" + (f", {models[0]}" if models else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=100, help="images per class (18 classes)")
    parser.add_argument("--runs", type=int, default=1, help="runs per cluster size (best kept)")
    parser.add_argument("--output", default=str(ROOT / "bench" / "out" / "cluster_scaling.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fruitpipe-scaling-") as tmp:
        scratch = Path(tmp)
        images = scratch / "images"
        sampledata.synthesize(str(images), args.per_class, seed=0)
        runs = [run_on_cluster(workers, images, scratch, index)
                for workers in (1, 2) for index in range(args.runs)]
    best = {w: max((r for r in runs if r["workers"] == w), key=lambda r: r["featurize_img_s"]) for w in (1, 2)}
    result = {
        "machine": machine(),
        "runs": runs,
        "per_core_featurize_img_s": best[1]["featurize_img_s"],
        "scaling_efficiency": round(best[2]["featurize_img_s"] / (2 * best[1]["featurize_img_s"]), 3),
        "command": f"python bench/cluster_scaling.py --per-class {args.per_class} --runs {args.runs}",
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
