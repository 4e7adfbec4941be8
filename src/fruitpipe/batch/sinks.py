"""Writers for the output contract: features/, errors/, pca_model/, scree.png, manifest.json, _SUCCESS.

`_SUCCESS` is written last and lists every file of the run: a reader that finds it can trust
the rest. An existing output is replaced only on request, and only if it is a fruitpipe output.
"""
from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from fruitpipe import sparkapi, storage
from fruitpipe.batch.committer import (
    FORMAT_NAME,
    BatchTransform,
    StagedDataSource,
    discard_failed_write,
    write_empty,
    write_transformed,
)
from fruitpipe.batch.manifest import SuccessMarker
from fruitpipe.storage import Store

logger = logging.getLogger(__name__)

FEATURES, ERRORS, PCA_MODEL, CSV = "features", "errors", "pca_model", "csv"
SCREE, MANIFEST, SUCCESS = "scree.png", "manifest.json", "_SUCCESS"
REPORT, REPORT_SAMPLE = "report.html", "report_sample.json"
WRITE_CHECK = ".fruitpipe-write-check"
FEATURE_COLUMNS = ("path", "label", "split", "view", "width", "height", "features", "pca")
ERROR_COLUMNS = ("path", "stage", "reason")


STATE = "_fruitpipe/"  # the journal and the lock (fruitpipe.batch.journal, .lock): never published
LOCK_FILE = "_fruitpipe/lock.json"
FRESH, REPLACE, RESUME = "fresh", "replace", "resume"


def check_output(store: Store, uri: str, overwrite: bool, resume: bool | None = None) -> str:
    """FRESH (nothing there), REPLACE (--overwrite of a fruitpipe output) or RESUME (--resume of one);
    refuses an existing output otherwise, and never touches one fruitpipe did not write. Changes nothing
    (cheap, before listing). `resume` None: the caller has no --resume (train)."""
    if not store.exists(uri) or store.is_empty_dir(uri):
        return FRESH
    if not any(store.exists(storage.join(uri, marker)) for marker in (MANIFEST, SUCCESS, STATE.rstrip("/"))):
        raise ValueError(f"output {uri} is not empty and is not a fruitpipe output; refusing to "
                         f"{'resume' if resume else 'overwrite'} it")
    if resume:
        return RESUME
    if not overwrite:
        hint = "" if resume is None else "--resume to continue it or bring it up to date, or "
        raise ValueError(f"output {uri} already exists; pass {hint}--overwrite to replace it")
    return REPLACE


def prepare_output(store: Store, uri: str, overwrite: bool) -> None:
    """`prepare_run_output` for outputs without a journal (a model folder): REPLACE when overwrite."""
    prepare_run_output(store, uri, REPLACE if check_output(store, uri, overwrite) == REPLACE else FRESH)


def prepare_run_output(store: Store, uri: str, mode: str) -> None:
    """Clear an old output for REPLACE (but the lock this run holds), then check that we can write, so a
    missing bucket or a permission problem fails now rather than after featurizing. RESUME keeps
    everything: the published version stays readable until this run publishes its own."""
    if mode == REPLACE:
        logger.info("removing previous output %s", uri)
        store.remove_tree(uri, keep=(LOCK_FILE,))
    probe = storage.join(uri, WRITE_CHECK)
    store.write_bytes(probe, b"fruitpipe write check\n")
    store.remove(probe)


def unpublish(store: Store, uri: str) -> None:
    """Before a run publishes: `_SUCCESS` first (no reader trusts what follows), then the published files;
    the journal and the lock stay."""
    store.remove(storage.join(uri, SUCCESS))
    store.remove_tree(uri, keep=(STATE,))


def write_dataset(df: DataFrame, uri: str, run_id: str, store: Store, fmt: str = "parquet",
                  part_tag: str = "") -> None:
    """Write through the staged committer (any storage; only successful task attempts are published,
    one part per partition). `part_tag`: the parts join the dataset's existing ones (an appending pass)."""
    _register(df.sparkSession)
    writer = (df.write.format(FORMAT_NAME).mode("append").option("run_id", run_id).option("format", fmt)
              .option("s3", store.options.to_wire()).option("part_tag", part_tag))
    try:
        writer.save(storage.canonical(uri))
    except BaseException:  # the Data Source's abort ran already; attempts killed late may have staged since
        discard_failed_write(df.sparkSession, store, storage.canonical(uri), run_id)
        raise


_registered: set[str] = set()


def _register(spark: SparkSession) -> None:
    """Register the committer once per Spark application or Connect session (registering again logs a warning)."""
    application = sparkapi.session_key(spark)
    if application not in _registered:
        spark.dataSource.register(StagedDataSource)
        _registered.add(application)


def write_features(df: DataFrame, output: str, run_id: str, store: Store, projection: BatchTransform,
                   part_tag: str = "") -> None:
    """features/: the featurized rows with their `pca` column added by `projection`, in one pass."""
    columns = [name for name in FEATURE_COLUMNS if name != "pca"]
    write_transformed(df.select(*columns), storage.join(output, FEATURES), run_id, store, projection,
                      part_tag=part_tag)


def write_errors(df: DataFrame, output: str, run_id: str, store: Store, rejected: int) -> None:
    """One row per rejected input; written even when empty so readers always find the dataset.
    With nothing rejected the driver writes the empty dataset itself: no Spark job for no rows."""
    errors = df.select(*ERROR_COLUMNS)
    if rejected == 0:
        write_empty(store, storage.join(output, ERRORS), errors.schema)
    else:
        write_dataset(errors, storage.join(output, ERRORS), run_id, store)


def write_csv(df: DataFrame, output: str, k: int, run_id: str, store: Store, part_tag: str = "") -> None:
    """path, label, split, view and one column per PCA component (the seed's CSV, plus view)."""
    columns = [F.col("path"), F.col("label"), F.col("split"), F.col("view")]
    columns += [F.col("pca")[i].alias(f"pc{i + 1}") for i in range(k)]
    write_dataset(df.select(*columns), storage.join(output, CSV), run_id, store, fmt="csv", part_tag=part_tag)


def write_json(store: Store, uri: str, document: dict[str, Any]) -> None:
    store.write_bytes(uri, (json.dumps(document, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))


def commit(store: Store, output: str, counts: Mapping[str, int]) -> None:
    """Write _SUCCESS last: the run's files and counts."""
    files = [path for path in store.list_tree(output)
             if path != SUCCESS and "/_temporary/" not in f"/{path}" and not path.startswith(STATE)]
    write_json(store, storage.join(output, SUCCESS), SuccessMarker(tuple(files), counts).to_json())


class Publication:
    """Whether a run has started replacing its output's published files (see `discarded_if_interrupted`)."""

    def __init__(self) -> None:
        self.started = False


@contextmanager
def discarded_if_interrupted(store: Store, output: str) -> Iterator[None]:
    """On Ctrl-C, remove what the block wrote to `output` (a model folder: emptied or new before it)."""
    try:
        yield
    except KeyboardInterrupt:
        logger.debug("interrupted: removing the partial output %s", storage.redact(output))
        store.remove_tree(output)
        raise


@contextmanager
def unpublished_if_interrupted(store: Store, output: str, publication: Publication) -> Iterator[None]:
    """On Ctrl-C (or SIGTERM) once publishing has started, remove what was published, so an interrupted run
    leaves nothing half-written (no `_SUCCESS` was written: it comes last); before that, nothing of the
    output was touched. The journal (`_fruitpipe/`) always stays: `--resume` continues from it. Only
    KeyboardInterrupt: a failed stage keeps its files for diagnosis as before."""
    try:
        yield
    except KeyboardInterrupt:
        if publication.started:
            logger.debug("interrupted: removing the partial output %s", storage.redact(output))
            unpublish(store, output)
        raise


def first_errors(store: Store, output: str, limit: int) -> list[tuple[str, str, str]]:
    """Up to `limit` rows (path, stage, reason) of errors/, part file by part file, read through the store:
    the driver never holds more than one part file and `limit` rows, whatever the run's size."""
    import pyarrow.parquet as pq

    rows: list[tuple[str, str, str]] = []
    folder = storage.join(output, ERRORS)
    try:
        parts = store.list_files(folder, (".parquet",))
    except ValueError:  # no errors/ folder (removed, or an output copied without it)
        return rows
    for _, relative in parts:
        if len(rows) >= limit:
            break
        table = pq.read_table(io.BytesIO(store.read_bytes(storage.join(folder, relative))),
                              columns=list(ERROR_COLUMNS))
        rows.extend(zip(*(table.column(name).to_pylist()[: limit - len(rows)] for name in ERROR_COLUMNS),
                        strict=True))
    return rows


def read_success(store: Store, output: str) -> SuccessMarker | None:
    """The output's _SUCCESS, or None when there is none (an incomplete output)."""
    try:
        raw = store.read_bytes(storage.join(output, SUCCESS))
    except FileNotFoundError:
        return None
    return SuccessMarker.loads(raw, f"{SUCCESS} of {storage.redact(output)}")
