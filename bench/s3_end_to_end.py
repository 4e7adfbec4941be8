"""End-to-end featurize throughput: S3 (moto behind a +20 ms/request proxy) vs local files.

The read benchmark (s3_read.py) isolates the read path; this one asks what the user feels: does
the whole run (list -> featurize -> PCA -> write) slow down when the images sit on an object
store with real-world latency? Same images, same Spark settings, one process after the other.

    .venv/bin/python bench/s3_end_to_end.py [--per-class 56] [--latency-ms 20]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from s3_read import BUCKET, PREFIX, proxy_process, upload, use_dummy_credentials  # noqa: E402
from s3server import MotoServer  # noqa: E402

from fruitpipe import pipeline, sampledata  # noqa: E402
from fruitpipe.config import PcaSettings, RunConfig, S3Options  # noqa: E402
from fruitpipe.session import spark_session  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=56)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    args = parser.parse_args(argv)
    use_dummy_credentials()
    with tempfile.TemporaryDirectory() as work:
        images = Path(work, "images")
        sampledata.synthesize(images, args.per_class, seed=7)
        relatives = sorted(p.relative_to(images).as_posix() for p in images.rglob("*.jpg"))
        with MotoServer() as moto, proxy_process(moto, args.latency_ms) as proxy, \
                spark_session("local[*]") as _spark:
            upload(moto, images, relatives)
            results = {}
            local, remote = (str(images), S3Options()), (f"s3://{BUCKET}/{PREFIX}", S3Options(endpoint_url=proxy))
            # a warm-up run first, so both measured runs find warm Python workers and a warm JVM
            for name, (source, options) in (("warm-up", local), ("s3+latency", remote), ("local", local)):
                manifest = pipeline.run(RunConfig(input=source, output=str(Path(work, name)),
                                                  pca=PcaSettings(k=10), s3=options))
                results[name] = {"featurize_img_s": manifest["featurize_img_s"],
                                 "total_s": manifest["timings_s"]["total"], "listed": manifest["counts"]["listed"]}
    results.pop("warm-up")
    ratio = results["s3+latency"]["featurize_img_s"] / results["local"]["featurize_img_s"]
    report = {"images": len(relatives), "latency_ms": args.latency_ms, "results": results,
              "featurize_ratio_s3_over_local": round(ratio, 3)}
    out = HERE / "out"
    out.mkdir(exist_ok=True)
    (out / "s3_end_to_end.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
