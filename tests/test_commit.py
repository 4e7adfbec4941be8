"""The staged committer (fruitpipe_staged data source): retried tasks, aborted jobs, duplicate commit
messages and empty inputs, on a local folder and on a real S3-protocol server (moto, 127.0.0.1)."""
from __future__ import annotations

import json
import os
import textwrap
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from background import background_python
from fruitpipe import storage
from fruitpipe.batch import committer, sinks
from fruitpipe.batch.committer import FORMAT_NAME, StagedPart, StagedWriter, encode
from fruitpipe.config import S3Options
from fruitpipe.devtools.s3server import client, download_prefix
from fruitpipe.storage import Store
from helpers import jobs_started_by

BUCKET = "commit-tests"
N, P, EMPTY_PARTITION = 1000, 4, 2  # spark.range(0, N, 1, P): partition i holds ids [i*N/P, (i+1)*N/P)
KEPT = [i for i in range(N) if i // (N // P) != EMPTY_PARTITION]
EXPECTED_PARTS = [f"part-{p:05d}.parquet" for p in range(P) if p != EMPTY_PARTITION]


def s3_keys(endpoint: str, prefix: str) -> list[str]:
    s3 = client(endpoint)
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix.rstrip("/") + "/")
    return sorted(item["Key"][len(prefix.rstrip("/")) + 1:] for page in pages for item in page.get("Contents", []))


@pytest.fixture(scope="module")
def bucket(s3_endpoint: str) -> str:
    s3 = client(s3_endpoint)
    if BUCKET not in {b["Name"] for b in s3.list_buckets().get("Buckets", [])}:
        s3.create_bucket(Bucket=BUCKET)
    return BUCKET


# ---------------------------------------------------------------- (a) a task killed and retried mid-write

RETRY_SCRIPT = textwrap.dedent('''
    """Own SparkSession with local[2,3] (3 attempts per task): partition 1's first attempt is killed."""
    import json, os, sys
    from pyspark import TaskContext
    from pyspark.sql import SparkSession
    from fruitpipe import storage
    from fruitpipe.batch import sinks
    from fruitpipe.batch.committer import StagedDataSource, StagedWriter
    from fruitpipe.config import S3Options
    from fruitpipe.batch.session import BASE_CONF
    from fruitpipe.storage import Store

    args = json.loads(sys.argv[1])
    evidence, N, P, EMPTY = args["evidence"], args["n"], args["p"], args["empty"]


    def kill_first_attempt(tag, dies_at):
        """mapInArrow step before the write: kills its Python worker on partition 1, attempt 0."""
        def step(batches):
            context = TaskContext.get()
            first = context.partitionId() == 1 and context.attemptNumber() == 0
            for index, batch in enumerate(batches):
                if first and index == dies_at:
                    with open(os.path.join(evidence, tag), "w") as handle:
                        handle.write(str(context.taskAttemptId()))
                    os._exit(3)
                yield batch
        return step


    class KillAfterStaging(StagedWriter):
        """The real writer, but partition 1's first attempt dies after staging its part, before reporting."""
        def __init__(self, options, schema):
            super().__init__(options, schema)
            self.tag = options["tag"]

        def write(self, iterator):
            message = super().write(iterator)
            context = TaskContext.get()
            if context.partitionId() == 1 and context.attemptNumber() == 0:
                assert self.store.exists(message.staged)
                with open(os.path.join(evidence, self.tag), "w") as handle:
                    handle.write(message.staged)
                os._exit(3)
            return message


    class KillAfterStagingSource(StagedDataSource):
        @classmethod
        def name(cls):
            return "fruitpipe_staged_kill_after_staging"

        def writer(self, schema, overwrite):
            return KillAfterStaging(dict(self.options), schema)


    builder = SparkSession.builder.master("local[2,3]").appName("fruitpipe-retry-test")
    for key, value in {**BASE_CONF, "spark.ui.enabled": "false", "spark.sql.shuffle.partitions": "4",
                       "spark.sql.execution.arrow.maxRecordsPerBatch": "50"}.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    assert spark.sparkContext.getConf().get("spark.master") == "local[2,3]"
    spark.dataSource.register(KillAfterStagingSource)
    df = spark.range(0, N, 1, P).where(f"id < {EMPTY * N // P} or id >= {(EMPTY + 1) * N // P}")
    df = df.selectExpr("id", "concat('row-', cast(id as string), '-é') as payload")
    for name, root in (("local", args["local"]), ("s3", args["s3"])):
        store = Store(S3Options(endpoint_url=args["endpoint"]) if name == "s3" else S3Options())
        tag = f"{name}-before-write"
        sinks.write_dataset(df.mapInArrow(kill_first_attempt(tag, dies_at=2), df.schema),
                            storage.join(root, "before_write"), f"run-{tag}", store)
        tag = f"{name}-after-staging"
        writer = (df.write.format(KillAfterStagingSource.name()).mode("append").option("run_id", f"run-{tag}")
                  .option("tag", tag).option("s3", store.options.to_wire()))
        writer.save(storage.join(root, "after_staging"))
        sinks.commit(store, root, {"rows": df.count()})
    spark.stop()
    print("RETRY-SCRIPT-DONE")
''')


@pytest.fixture(scope="module")
def retry_process(tmp_path_factory: pytest.TempPathFactory, s3_endpoint: str, bucket: str):
    """Start the retry scenarios in their own Spark application early (the first Spark fixture of this
    module asks for it), so they overlap the in-process tests; `retried_writes` waits for them."""
    folder = tmp_path_factory.mktemp("retry")
    script, evidence = folder / "retry_writes.py", folder / "evidence"
    script.write_text(RETRY_SCRIPT)
    evidence.mkdir()
    args = {"evidence": str(evidence), "n": N, "p": P, "empty": EMPTY_PARTITION, "endpoint": s3_endpoint,
            "local": str(folder / "local-out"), "s3": f"s3://{bucket}/retry-out"}
    with background_python([str(script), json.dumps(args)], folder) as process:
        yield process, folder


@pytest.fixture(scope="module")
def retried_writes(retry_process, s3_endpoint: str, bucket: str) -> dict:
    """Local copies of both outputs of the retry scenarios, once the subprocess is done."""
    process, folder = retry_process
    process.wait(timeout=300)
    stdout, stderr = (folder / "stdout").read_text(), (folder / "stderr").read_text(errors="replace")
    assert process.returncode == 0 and "RETRY-SCRIPT-DONE" in stdout, stderr[-4000:]
    s3_copy = folder / "s3-copy"
    download_prefix(s3_endpoint, bucket, "retry-out", s3_copy)
    return {"local": folder / "local-out", "s3": s3_copy, "evidence": folder / "evidence",
            "s3_keys": s3_keys(s3_endpoint, "retry-out")}


def files_below(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


# ---------------------------------------------------------------- (b) abort

def failing_after_partition_0_staged(staging: str, endpoint: str | None):
    """mapInArrow step: partition 1 waits until partition 0's part is staged, then fails the job."""
    store = Store(S3Options(endpoint_url=endpoint))

    def step(batches):
        import time

        from pyspark import TaskContext

        if TaskContext.get().partitionId() == 1:
            deadline, seen = time.monotonic() + 60, False
            while not seen and time.monotonic() < deadline:
                seen = any(name.startswith("part-00000-attempt-") for name in store.list_tree(staging))
                time.sleep(0.1)
            raise RuntimeError(f"boom: permanent failure, partition 0 staged={seen}")
        yield from batches
    return step


@pytest.fixture(scope="module")
def aborted_writes(retry_process, spark, tmp_path_factory: pytest.TempPathFactory, s3_endpoint: str,
                   bucket: str) -> dict[str, str]:
    """One permanently failing write per storage (the shared session has spark.task.maxFailures=1).

    Asks for `retry_process` first only to start that subprocess early, overlapping these writes."""
    targets = {"local": str(tmp_path_factory.mktemp("abort") / "dataset"), "s3": f"s3://{bucket}/aborted/dataset"}
    df = spark.range(0, 300, 1, 3)
    for where, target in targets.items():
        store = Store(S3Options(endpoint_url=s3_endpoint) if where == "s3" else S3Options())
        step = failing_after_partition_0_staged(storage.join(target, "_temporary", "run-abort"),
                                                store.options.endpoint_url)
        with pytest.raises(Exception) as info:
            sinks.write_dataset(df.mapInArrow(step, df.schema), target, "run-abort", store)
        assert "partition 0 staged=True" in str(info.value), str(info.value)[-2000:]
    return targets


def test_abort_on_s3_leaves_no_parts_and_no_staging(aborted_writes, s3_endpoint: str) -> None:
    assert s3_keys(s3_endpoint, "aborted/dataset") == []
    assert not Store(S3Options(endpoint_url=s3_endpoint)).exists(aborted_writes["s3"])


def test_abort_locally_leaves_no_files(aborted_writes) -> None:
    root = Path(aborted_writes["local"])
    leftovers = [p for p in root.rglob("*") if p.is_file()] if root.exists() else []
    assert leftovers == []
    assert Store().list_tree(aborted_writes["local"]) == []


def test_abort_locally_leaves_no_temporary_folder(aborted_writes) -> None:
    assert not os.path.exists(os.path.join(aborted_writes["local"], "_temporary"))


# ---------------------------------------------------------------- (c) commit, driven directly

def staged_writer(target: str, run_id: str = "run-unit", fmt: str = "parquet") -> StagedWriter:
    """A writer as a task gets it; the schema is built directly (parsing DDL would need a SparkContext)."""
    from pyspark.sql.types import LongType, StringType, StructField, StructType

    schema = StructType([StructField("id", LongType()), StructField("payload", StringType())])
    return StagedWriter({"path": target, "run_id": run_id, "format": fmt}, schema)


def stage(writer: StagedWriter, partition: int, attempt: int, ids: list[int]) -> StagedPart:
    table = pa.table({"id": pa.array(ids, pa.int64()), "payload": pa.array([f"p{partition}-a{attempt}" for _ in ids],
                                                                            pa.string())})
    path = storage.join(writer.staging, f"part-{partition:05d}-attempt-{attempt}.parquet")
    writer.store.write_bytes(path, encode(table, "parquet"))
    return StagedPart(partition, path, len(ids))


def test_commit_publishes_one_part_per_partition_despite_duplicate_messages(tmp_path: Path) -> None:
    writer = staged_writer(str(tmp_path / "dataset"))
    first0, first1 = stage(writer, 0, 0, [0, 1, 2]), stage(writer, 1, 1, [3, 4])
    again0 = stage(writer, 0, 7, [0, 1, 2])  # e.g. a speculative copy that also reported success
    again1 = stage(writer, 1, 8, [3, 4])
    empty2 = stage(writer, 2, 2, [])
    writer.commit([first0, None, first1, again0, empty2, again1, None])
    dataset = tmp_path / "dataset"
    assert files_below(dataset) == ["part-00000.parquet", "part-00001.parquet"]
    table = pq.read_table(dataset)
    assert sorted(table.column("id").to_pylist()) == [0, 1, 2, 3, 4]
    assert set(table.column("payload").to_pylist()) == {"p0-a0", "p1-a1"}  # the first report wins
    assert not (dataset / "_temporary").exists()


def test_commit_leaves_other_runs_staging_alone(tmp_path: Path) -> None:
    target = str(tmp_path / "dataset")
    other = stage(staged_writer(target, run_id="run-other"), 0, 0, [9])
    writer = staged_writer(target)
    writer.commit([stage(writer, 0, 0, [1])])
    assert files_below(tmp_path / "dataset") == ["_temporary/run-other/part-00000-attempt-0.parquet",
                                                 "part-00000.parquet"]
    assert Store().exists(other.staged) and not os.path.exists(writer.staging)


def test_commit_of_only_empty_parts_publishes_one_readable_part(tmp_path: Path) -> None:
    writer = staged_writer(str(tmp_path / "dataset"))
    writer.commit([stage(writer, 3, 3, []), stage(writer, 1, 1, []), None])
    assert len(files_below(tmp_path / "dataset")) == 1
    table = pq.read_table(tmp_path / "dataset")
    assert table.num_rows == 0 and table.schema.names == ["id", "payload"]


# ---------------------------------------------------------------- (d) an all-empty DataFrame

EMPTY_DDL = "path string, label string, width int, features array<float>"


def check_empty_dataset(folder: Path) -> None:
    assert len([f for f in files_below(folder) if f.startswith("part-")]) == 1, files_below(folder)
    assert not any("_temporary" in f for f in files_below(folder))
    table = pq.read_table(folder)
    assert table.num_rows == 0
    assert table.schema.names == ["path", "label", "width", "features"]
    types = [field.type for field in table.schema]
    assert types[:3] == [pa.string(), pa.string(), pa.int32()]
    assert pa.types.is_list(types[3]) and types[3].value_type == pa.float32()


@pytest.mark.parametrize("kind", ["no_rows", "empty_partitions", "no_partitions"])
def test_empty_dataframe_gives_readable_empty_dataset(spark, tmp_path: Path, kind: str) -> None:
    if kind == "no_rows":
        df = spark.createDataFrame([], EMPTY_DDL)
    elif kind == "empty_partitions":
        df = spark.range(0, 30, 1, 3).selectExpr(
            "cast(id as string) as path", "'x' as label", "cast(id as int) as width",
            "array(cast(id as float)) as features").where("width < 0")
    else:
        df = spark.createDataFrame(spark.sparkContext.emptyRDD(), EMPTY_DDL)
        assert df.rdd.getNumPartitions() == 0
    sinks.write_dataset(df, str(tmp_path / "empty"), f"run-{kind}", Store())
    check_empty_dataset(tmp_path / "empty")
    back = spark.read.parquet(storage.spark_path(str(tmp_path / "empty")))
    assert back.count() == 0 and back.columns == ["path", "label", "width", "features"]


def test_nothing_rejected_gives_the_same_empty_errors_dataset_without_a_spark_job(spark, tmp_path: Path) -> None:
    errors = spark.createDataFrame([], "path string, stage string, reason string, extra int")
    through_spark, by_driver = tmp_path / "spark" / "errors", tmp_path / "driver" / "errors"
    sinks.write_dataset(errors.select(*sinks.ERROR_COLUMNS), str(through_spark), "run-spark", Store())
    assert jobs_started_by(spark, lambda: sinks.write_errors(errors, str(by_driver.parent), "run-driver",
                                                             Store(), rejected=0)) == []
    assert files_below(by_driver) == files_below(through_spark) == ["part-00000.parquet"]
    assert pq.read_table(by_driver).schema == pq.read_table(through_spark).schema
    back = spark.read.parquet(storage.spark_path(str(by_driver)))
    assert back.count() == 0 and back.columns == list(sinks.ERROR_COLUMNS)
    # the control: with rejected rows the same call writes through Spark
    rows = spark.createDataFrame([("a.jpg", "decode", "broken", 1)], errors.schema)
    assert jobs_started_by(spark, lambda: sinks.write_errors(rows, str(tmp_path / "rows"), "run-rows",
                                                             Store(), rejected=1))
    assert pq.read_table(tmp_path / "rows" / "errors").to_pylist() == [
        {"path": "a.jpg", "stage": "decode", "reason": "broken"}]


def test_overwrite_mode_is_refused(spark, tmp_path: Path) -> None:
    """Appending only: an overwrite would leave old parts next to new ones."""
    sinks._register(spark)
    with pytest.raises(Exception, match="appends only"):
        spark.range(3).write.format(FORMAT_NAME).mode("overwrite").option("run_id", "r").save(str(tmp_path / "d"))


def test_empty_dataframe_on_s3(spark, s3_endpoint: str, bucket: str, tmp_path: Path) -> None:
    store = Store(S3Options(endpoint_url=s3_endpoint))
    sinks.write_dataset(spark.createDataFrame([], EMPTY_DDL), f"s3://{bucket}/empty/dataset", "run-empty", store)
    download_prefix(s3_endpoint, bucket, "empty/dataset", tmp_path)
    check_empty_dataset(tmp_path)


# ---------------------------------------------------------------- (a) checks, last: the subprocess ran meanwhile

@pytest.mark.parametrize("where", ["local", "s3"])
@pytest.mark.parametrize("scenario", ["before_write", "after_staging"])
def test_killed_and_retried_task_writes_each_row_once(retried_writes, where: str, scenario: str) -> None:
    tag = f"{where}-{scenario.replace('_', '-')}"
    assert (retried_writes["evidence"] / tag).exists(), "the first attempt of partition 1 was not killed"
    if scenario == "after_staging":  # the killed attempt's part really was staged (and then orphaned)
        assert "/_temporary/" in (retried_writes["evidence"] / tag).read_text()
    dataset = retried_writes[where] / scenario
    assert files_below(dataset) == EXPECTED_PARTS  # one part per non-empty partition, nothing staged left
    table = pq.read_table(dataset)
    ids = table.column("id").to_pylist()
    assert len(ids) == len(KEPT) and len(set(ids)) == len(ids)
    assert sorted(ids) == KEPT
    assert table.column("payload").to_pylist() == [f"row-{i}-é" for i in ids]
    for part in EXPECTED_PARTS:
        partition = int(part[5:10])
        part_ids = pq.read_table(dataset / part).column("id").to_pylist()
        assert part_ids == list(range(partition * N // P, (partition + 1) * N // P)), part


@pytest.mark.parametrize("where", ["local", "s3"])
def test_success_marker_matches_the_files_after_retries(retried_writes, where: str) -> None:
    root = retried_writes[where]
    success = json.loads((root / sinks.SUCCESS).read_text())
    on_storage = [f for f in files_below(root) if f != sinks.SUCCESS]
    assert success["files"] == on_storage
    assert success["files"] == [f"{scenario}/{part}" for scenario in ("after_staging", "before_write")
                                for part in EXPECTED_PARTS]
    assert success["counts"] == {"rows": len(KEPT)}
    if where == "s3":
        assert retried_writes["s3_keys"] == sorted([*on_storage, sinks.SUCCESS])
        assert not any("_temporary" in key for key in retried_writes["s3_keys"])
    else:
        assert not any("_temporary" in str(p) for p in root.rglob("*"))


# ---------------------------------------------------------------- the fused transform + write (features/)

def _doubling():
    """A transform defined in a function, so cloudpickle ships it by value to the Python workers."""
    def doubled(batch: pa.RecordBatch) -> pa.RecordBatch:
        ids = batch.column("id").to_numpy(zero_copy_only=False)
        return pa.RecordBatch.from_arrays([*batch.columns, pa.array(ids * 2)], names=[*batch.schema.names, "twice"])

    return doubled


def test_write_transformed_applies_the_transform_once_per_row_and_publishes_one_part_per_partition(
        spark, tmp_path: Path) -> None:
    df = spark.range(0, N, 1, P).where(f"id < {EMPTY_PARTITION * N // P} or id >= {(EMPTY_PARTITION + 1) * N // P}")
    target = tmp_path / "features"
    committer.write_transformed(df, str(target), "run-fused", Store(), _doubling())
    assert files_below(target) == EXPECTED_PARTS  # the empty partition publishes nothing, no staging left
    table = pq.read_table(target)
    assert sorted(table.column("id").to_pylist()) == KEPT
    pairs = zip(table.column("id").to_pylist(), table.column("twice").to_pylist(), strict=True)
    assert all(twice == 2 * i for i, twice in pairs)


def test_write_transformed_failure_leaves_no_parts_and_no_staging(spark, tmp_path: Path) -> None:
    doubled = _doubling()

    def failing(batch: pa.RecordBatch) -> pa.RecordBatch:
        if len(batch) and batch.column("id")[0].as_py() >= N // 2:
            raise RuntimeError("transform failed in a task")
        return doubled(batch)

    target = tmp_path / "features"
    with pytest.raises(Exception, match="transform failed in a task"):
        committer.write_transformed(spark.range(0, N, 1, P), str(target), "run-failed", Store(), failing)
    assert files_below(target) == []


def _failing_with_a_straggler(staging: str, started: str, slept: str):
    """Partition 1 fails once partition 0 is staged and partition 2 has started; partition 2, still
    running when the job fails, stages its part only after the failure was reported (CI once found
    such a part left behind)."""
    def transform(batch: pa.RecordBatch) -> pa.RecordBatch:
        import os
        import time

        from pyspark import TaskContext

        context = TaskContext.get()
        if context is None:  # the driver asks for the output schema once
            return batch
        if context.partitionId() == 1:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not (os.path.exists(started) and any(
                    name.startswith("part-00000-attempt-") for name in Store().list_tree(staging))):
                time.sleep(0.05)
            raise RuntimeError("boom: permanent failure")
        if context.partitionId() == 2:
            open(started, "w").close()
            time.sleep(1.0)
            open(slept, "w").close()
        return batch

    return transform


def test_failed_write_waits_for_stragglers_and_leaves_nothing(spark, tmp_path: Path) -> None:
    target = tmp_path / "features"
    started, slept = tmp_path / "partition-2-started", tmp_path / "partition-2-slept"
    transform = _failing_with_a_straggler(committer.staging_folder(str(target), "run-straggler"), str(started),
                                          str(slept))
    with pytest.raises(Exception, match="boom: permanent failure"):
        committer.write_transformed(spark.range(0, 300, 1, 3), str(target), "run-straggler", Store(), transform)
    assert started.exists()
    deadline = time.monotonic() + 30
    while not slept.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)  # the straggler stages its part right after its sleep
    assert not target.exists() or files_below(target) == []
    assert not (target / "_temporary").exists()
