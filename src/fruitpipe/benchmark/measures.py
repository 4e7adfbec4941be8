"""What one measurement runs, in its own process (`python -m fruitpipe.benchmark.measures NAME PARAMS OUT`).

Every approach uses the same model file (the exported ONNX graph; torch eager for the seed) and
writes Parquet; all but Ray Data decode with `image.decode` (Pillow, bilinear to the model's size).
Ray Data decodes with its own `read_images` (Pillow too, bilinear, without EXIF orientation, which the
synthetic benchmark images do not carry), so the numbers compare architectures, not preprocessing. Each returns
images, seconds and images_s plus its own details.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fruitpipe.batch import sources
from fruitpipe.config import DecodeLimits, ExecutorSettings, PcaSettings, RunConfig, S3Options
from fruitpipe.image import models
from fruitpipe.image.decode import decode_for_model
from fruitpipe.image.embed import embed, normalise
from fruitpipe.runtime import Runtime
from fruitpipe.storage import Store

WHOLE_BATCH = Runtime("fp32", "onnxruntime", 1 << 20)  # one model call per batch, as the peers' recipes do
SLOW_IMG_S = 50.0  # a loop slower than this may stop at the subset (the rule)
Params = dict[str, Any]


def _model(params: Params) -> tuple[models.ModelSpec, str]:
    spec = models.resolve(params.get("model", "efficientnet-lite0"))
    return spec, str(models.onnx_file(spec))


def _paths(folder: str) -> list[str]:
    return [path for path, _, _ in sources.list_images(Store(), folder).rows]


def _pixels(data: bytes, pre: models.Preprocessing) -> np.ndarray:
    return decode_for_model(data, DecodeLimits(), pre.input_size, pre.resize)[0]


def _rate(images: int, seconds: float) -> dict[str, Any]:
    return {"images": images, "seconds": round(seconds, 3), "images_s": round(images / seconds, 2)}


# ---------------------------------------------------------------- 1. the limit

def _limit_configs(cpus: int) -> list[tuple[int, int, int]]:
    """(processes, threads per process, images per call) tried: one process using every core, and one
    single-thread process per core run together (how Spark's task slots run it), small and large batches."""
    one_process = [(1, cpus, batch) for batch in (1, 8, 64)]
    per_core = [(cpus, 1, batch) for batch in (1, 4, 8)] if cpus > 1 else []
    return one_process + per_core


def _limit_worker(folder: str, precision: str, threads: int, batch: int, seconds: float, start: Any,
                  results: Any) -> None:
    """One process of a limit configuration: model calls on pre-decoded pixels for `seconds`."""
    spec, onnx_path = _model({})
    runtime = Runtime.for_precision(precision, batch)
    paths = _paths(folder)[:max(64, batch * 4)]
    pixels = np.stack([_pixels(Path(p).read_bytes(), spec.preprocessing) for p in paths])
    embed(pixels[:batch], spec.preprocessing, onnx_path, threads, runtime)  # warm-up: session, arena
    start.wait()  # every process of the configuration starts together
    done, ends = 0, time.perf_counter() + seconds
    while time.perf_counter() < ends:
        first = done % (len(pixels) - batch + 1)
        done += len(embed(pixels[first:first + batch], spec.preprocessing, onnx_path, threads, runtime))
    results.put(done)


def _limit_rate(folder: str, precision: str, config: tuple[int, int, int], seconds: float) -> float:
    import multiprocessing

    processes, threads, batch = config
    context = multiprocessing.get_context("spawn")
    start, results = context.Barrier(processes), context.Queue()
    workers = [context.Process(target=_limit_worker, args=(folder, precision, threads, batch, seconds, start, results))
               for _ in range(processes)]
    for worker in workers:
        worker.start()
    done = sum(int(results.get(timeout=600)) for _ in workers)
    for worker in workers:
        worker.join()
    return round(done / seconds, 2)


def limit(params: Params) -> dict[str, Any]:
    """What the model allows here: pre-decoded pixels, no I/O, the best of several thread / batch / process
    settings, so that ratios to it are honest. Each setting runs `limit_seconds` after a warm-up."""
    cpus, precision, seconds = os.cpu_count() or 1, params.get("precision", "fp32"), params.get("limit_seconds", 6.0)
    rates = {f"{p}x{t}threads_batch{b}": _limit_rate(params["folder"], precision, (p, t, b), seconds)
             for p, t, b in _limit_configs(cpus)}
    best = max(rates, key=rates.__getitem__)
    return {"images": int(rates[best] * seconds), "seconds": seconds, "images_s": rates[best], "best": best,
            "precision": precision, "rates_img_s": rates}


# ---------------------------------------------------------------- 3. the seed's approach

def _seed_loop(params: Params, predict: Callable[[np.ndarray], np.ndarray], loaded_s: float) -> dict[str, Any]:
    """One file at a time on the driver: read, resize, predict one image, append; then a DataFrame to Parquet."""
    from fruitpipe.batch.session import spark_session

    spec, _ = _model(params)
    paths = _paths(params["folder"])
    began = time.perf_counter()
    with spark_session("local[*]") as spark, tempfile.TemporaryDirectory() as out:
        spark_s = time.perf_counter() - began
        rows, started = [], time.perf_counter()
        for index, path in enumerate(paths, 1):
            with open(path, "rb") as handle:
                pixels = _pixels(handle.read(), spec.preprocessing)
            rows.append((path, predict(pixels[None])[0].tolist()))
            if index == params["subset"] and index / (time.perf_counter() - started) < SLOW_IMG_S:
                break  # slow baseline: the subset is enough to compare rates
        spark.createDataFrame(rows, "path string, features array<float>").write.parquet(f"{out}/features")
        seconds = time.perf_counter() - started
    return {**_rate(len(rows), seconds), "subset": len(rows) < len(paths), "model_load_s": round(loaded_s, 2),
            "spark_start_s": round(spark_s, 2)}


def seed_torch_eager(params: Params) -> dict[str, Any]:
    import torch

    spec, _ = _model(params)
    started = time.perf_counter()
    module = models.torch_module(spec)

    def predict(pixels: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            features: np.ndarray = module(torch.from_numpy(normalise(pixels, spec.preprocessing))).numpy()
            return features

    return {**_seed_loop(params, predict, time.perf_counter() - started), "torch_threads": torch.get_num_threads()}


def seed_onnxruntime(params: Params) -> dict[str, Any]:
    spec, onnx_path = _model(params)
    threads = os.cpu_count() or 1
    started = time.perf_counter()
    embed(np.zeros((1, spec.preprocessing.input_size, spec.preprocessing.input_size, 3), np.uint8),
          spec.preprocessing, onnx_path, threads)

    def predict(pixels: np.ndarray) -> np.ndarray:
        return embed(pixels, spec.preprocessing, onnx_path, threads)

    return {**_seed_loop(params, predict, time.perf_counter() - started), "ort_threads": threads}


# ---------------------------------------------------------------- 4. Spark's standard recipes

def _binary_files(spark: Any, folder: str) -> Any:
    return (spark.read.format("binaryFile").option("pathGlobFilter", "*.jpg")
            .option("recursiveFileLookup", "true").load(folder))


def _recipe_featurizer(onnx_path: str,
                       pre: models.Preprocessing) -> Callable[[Iterator[pd.Series]], Iterator[pd.Series]]:
    """The Databricks featurization recipe's scalar-iterator UDF body: the model is loaded once per task."""

    def featurize(contents: Iterator[pd.Series]) -> Iterator[pd.Series]:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1  # one task per core
        session = ort.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        for content in contents:
            pixels = np.stack([_pixels(data, pre) for data in content])
            yield pd.Series(list(session.run(None, {name: pixels})[0]))

    return featurize


def _timed_spark_job(params: Params, conf: tuple[tuple[str, str], ...],
                     build: Callable[[Any], Any]) -> dict[str, Any]:
    from fruitpipe.batch.session import spark_session

    began = time.perf_counter()
    with spark_session("local[*]", conf) as spark, tempfile.TemporaryDirectory() as out:
        spark_s = time.perf_counter() - began
        started = time.perf_counter()
        frame = build(spark)
        partitions = frame.rdd.getNumPartitions()
        frame.write.parquet(f"{out}/features")
        seconds = time.perf_counter() - started
        images = spark.read.parquet(f"{out}/features").where("features is not null").count()
    return {**_rate(images, seconds), "spark_start_s": round(spark_s, 2), "partitions": partitions}


def spark_pandas_udf(params: Params) -> dict[str, Any]:
    from pyspark.sql.pandas.functions import pandas_udf
    from pyspark.sql.types import ArrayType, FloatType

    spec, onnx_path = _model(params)
    # pyspark's stubs want functionType; at run time the function's type hints choose it (the recipe's form)
    featurize = pandas_udf(_recipe_featurizer(onnx_path, spec.preprocessing), ArrayType(FloatType()))  # type: ignore[call-overload]
    conf = (("spark.sql.execution.arrow.maxRecordsPerBatch", "1024"),)  # the recipe's setting

    def build(spark: Any) -> Any:
        return _binary_files(spark, params["folder"]).select("path", featurize("content").alias("features"))

    return _timed_spark_job(params, conf, build)


def _flat_pixels(pre: models.Preprocessing) -> Callable[[pd.Series], pd.Series]:
    def decode(contents: pd.Series) -> pd.Series:
        return pd.Series([_pixels(data, pre).reshape(-1).astype(np.float32) for data in contents])

    return decode


def _predict_fn(onnx_path: str, pre: models.Preprocessing) -> Callable[[], Callable[[np.ndarray], np.ndarray]]:
    def make_predict_fn() -> Callable[[np.ndarray], np.ndarray]:
        def predict(flat: np.ndarray) -> np.ndarray:
            size = pre.input_size
            return embed(flat.reshape(-1, size, size, 3).astype(np.uint8), pre, onnx_path, 1, WHOLE_BATCH)

        return predict

    return make_predict_fn


def spark_predict_batch_udf(params: Params) -> dict[str, Any]:
    """pyspark.ml.functions.predict_batch_udf, fed pixels as a numeric array column (its documented input)."""
    from pyspark.ml.functions import predict_batch_udf
    from pyspark.sql.pandas.functions import pandas_udf
    from pyspark.sql.types import ArrayType, FloatType

    spec, onnx_path = _model(params)
    size = spec.preprocessing.input_size
    decode = pandas_udf(_flat_pixels(spec.preprocessing), ArrayType(FloatType()))  # type: ignore[call-overload]  # as above
    predict = predict_batch_udf(_predict_fn(onnx_path, spec.preprocessing), return_type=ArrayType(FloatType()),
                                batch_size=params["batch_size"], input_tensor_shapes=[[size * size * 3]])
    conf = (("spark.sql.execution.arrow.maxRecordsPerBatch", str(params["batch_size"])),)

    def build(spark: Any) -> Any:
        return _binary_files(spark, params["folder"]).select("path", predict(decode("content")).alias("features"))

    return _timed_spark_job(params, conf, build)


# ---------------------------------------------------------------- 7. Ray Data

class _RayEmbedder:
    """A Ray Data actor: the model session is created once, in the actor."""

    def __init__(self, onnx_path: str, pre: models.Preprocessing, threads: int) -> None:
        self.args = (pre, onnx_path, threads)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        features = embed(batch.pop("image"), *self.args, WHOLE_BATCH)
        return {"path": batch["path"], "features": features}


def ray_data(params: Params) -> dict[str, Any]:
    """read_images + map_batches on an actor pool of ONE actor: on 2 CPUs, 2 one-CPU actors leave no CPU for
    the read tasks and the pipeline deadlocks; the actor's ONNX Runtime uses all cores."""
    import ray

    spec, onnx_path = _model(params)
    size, cpus = spec.preprocessing.input_size, os.cpu_count() or 1
    began = time.perf_counter()
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, object_store_memory=512 * 1024 * 1024,
             configure_logging=False)
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False
        ray_start_s = time.perf_counter() - began
        with tempfile.TemporaryDirectory() as out:
            started = time.perf_counter()
            images = ray.data.read_images(params["folder"], size=(size, size), mode="RGB", include_paths=True,
                                          file_extensions=["jpg", "jpeg", "png"])
            features = images.map_batches(_RayEmbedder, fn_constructor_args=(onnx_path, spec.preprocessing, cpus),
                                          batch_size=params["batch_size"], batch_format="numpy", concurrency=1,
                                          num_cpus=1)
            features.write_parquet(f"{out}/features")
            seconds = time.perf_counter() - started
            count = ray.data.read_parquet(f"{out}/features").count()
    finally:
        ray.shutdown()
    return {**_rate(count, seconds), "ray_start_s": round(ray_start_s, 2), "actors": 1, "actor_num_cpus": 1,
            "ort_threads": cpus, "ray": ray.__version__}


# ---------------------------------------------------------------- 2, 5, 6. fruitpipe itself

def fruitpipe_run(params: Params) -> dict[str, Any]:
    """`fruitpipe run` (pipeline.run) end to end; the worker's batch log gives the time to the first batch."""
    from fruitpipe.batch import pipeline
    from fruitpipe.executor.worker import BATCH_LOG_ENV

    with tempfile.TemporaryDirectory() as out:
        batch_log = Path(out, "batches.jsonl")
        os.environ[BATCH_LOG_ENV] = str(batch_log)
        settings = ExecutorSettings(batch_size=params["batch_size"],  # rows_per_partition: a lever (driver side)
                                    rows_per_partition=params.get("rows_per_partition", sources.ROWS_PER_PARTITION))
        config = RunConfig(input=params.get("uri") or params["folder"], output=f"{out}/run", overwrite=True,
                           pca=PcaSettings(), spark_conf=tuple(tuple(pair) for pair in params.get("conf", ())),
                           s3=S3Options(endpoint_url=params.get("endpoint")), executor=settings,
                           image_size=params.get("image_size"), precision=params.get("precision", "fp32"))
        started = time.time()
        manifest = pipeline.run(config)
        batches = [json.loads(line) for line in batch_log.read_text(encoding="utf-8").splitlines()]
    timings = manifest.timings_s
    return {
        **_rate(manifest.counts.ok, timings.total),
        "featurize_images_s": manifest.featurize_img_s,
        "time_to_first_batch_s": round(min(b["time"] for b in batches) - started, 2) if batches else None,
        "timings_s": timings.to_json(),
        "rejected": manifest.counts.rejected,
        "pca_k": manifest.pca.k,
        "partitions": manifest.spark.partitions,
        "worker_processes": len({b["pid"] for b in batches}),
        "conf": dict(config.spark_conf),
        "batch_size": settings.batch_size,
        "rows_per_partition": settings.rows_per_partition,
        "image_size": manifest.model.input_size,
        "precision": manifest.model.precision,
    }


# ---------------------------------------------------------------- levers measured inside one process

def _float_graph(spec: models.ModelSpec, target: Path) -> None:
    """The pre-uint8 export (float NCHW input, numpy normalisation outside), for the A/B."""
    import torch

    module = models.torch_module(spec)
    size = spec.preprocessing.input_size
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's tracer warnings, as in models.export_onnx
        torch.onnx.export(module, (torch.zeros(1, 3, size, size),), str(target), input_names=["image"],
                          output_names=["features"], dynamic_axes={"image": {0: "batch"}, "features": {0: "batch"}},
                          opset_version=models.ONNX_OPSET, dynamo=False)


def _embed_rate(pixels: np.ndarray, pre: models.Preprocessing, onnx_path: str, threads: int, batch: int,
                images: int) -> float:
    embed(pixels[:batch], pre, onnx_path, threads, WHOLE_BATCH)
    done, started = 0, time.perf_counter()
    while done < images:
        done += len(embed(pixels[:batch], pre, onnx_path, threads, WHOLE_BATCH))
    return round(done / (time.perf_counter() - started), 2)


def embed_levers(params: Params) -> dict[str, Any]:
    """A/B, one after another in this process: ONNX Runtime threads x batch size, uint8 graph vs float graph
    plus numpy normalisation, and the decode cost per image (the bundled-size JPEGs and a large photo with and
    without Pillow's JPEG draft mode)."""
    spec, onnx_path = _model(params)
    pre, images = spec.preprocessing, params["images"]
    paths = _paths(params["folder"])[:128]
    pixels = np.stack([_pixels(Path(p).read_bytes(), pre) for p in paths])
    rates = {f"uint8_graph_threads{t}_batch{b}": _embed_rate(pixels, pre, onnx_path, t, b, images)
             for t in (1, 2) for b in (16, 64, 128)}
    with tempfile.TemporaryDirectory() as work:
        float_path = str(Path(work, "float.onnx"))
        _float_graph(spec, Path(float_path))
        for threads in (1, 2):
            rates[f"float_graph_numpy_normalise_threads{threads}_batch64"] = _embed_rate(
                pixels, pre, float_path, threads, 64, images)
    started = time.perf_counter()
    for _ in range(5):
        normalise(pixels[:64], pre)
    rates["numpy_normalise_ms_per_image"] = round((time.perf_counter() - started) / 5 / 64 * 1000, 3)
    return {"images": images, "rates_img_s": rates, **_decode_costs(paths, pre)}


def _decode_costs(paths: list[str], pre: models.Preprocessing) -> dict[str, Any]:
    import io

    from PIL import Image

    datas = [Path(p).read_bytes() for p in paths]
    started = time.perf_counter()
    for data in datas:
        _pixels(data, pre)
    small_ms = (time.perf_counter() - started) / len(datas) * 1000
    photo = io.BytesIO()
    Image.open(io.BytesIO(datas[0])).convert("RGB").resize((3000, 3000)).save(photo, "JPEG", quality=90)
    full = _timed_ms(lambda: _pixels(photo.getvalue(), pre))
    draft = _timed_ms(lambda: _draft_pixels(photo.getvalue(), pre))
    return {"decode_resize_ms_per_image_100px": round(small_ms, 3), "decode_resize_ms_3000px_full": full,
            "decode_resize_ms_3000px_draft": draft}


def _draft_pixels(data: bytes, pre: models.Preprocessing) -> np.ndarray:
    import io

    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        image.draft("RGB", (pre.input_size, pre.input_size))  # DCT scaling: decode at 1/2..1/8 size
        return np.asarray(image.convert("RGB").resize((pre.input_size,) * 2, Image.Resampling.BILINEAR))


def _timed_ms(call: Callable[[], Any], repeats: int = 5) -> float:
    started = time.perf_counter()
    for _ in range(repeats):
        call()
    return round((time.perf_counter() - started) / repeats * 1000, 2)


MEASURES: dict[str, Callable[[Params], dict[str, Any]]] = {
    "limit": limit,
    "fruitpipe_run": fruitpipe_run,
    "seed_torch_eager": seed_torch_eager,
    "seed_onnxruntime": seed_onnxruntime,
    "spark_pandas_udf": spark_pandas_udf,
    "spark_predict_batch_udf": spark_predict_batch_udf,
    "ray_data": ray_data,
    "embed_levers": embed_levers,
}


def main(argv: list[str]) -> int:
    """NAME PARAMS_JSON OUT_JSON: run one measure, write its result (the harness's child process)."""
    import logging

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    name, params, out = argv[0], json.loads(argv[1]), Path(argv[2])
    result = MEASURES[name](params)
    out.write_text(json.dumps(result), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
