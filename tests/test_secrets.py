"""Credentials never leak: not into output files, logs, CLI output, the Spark conf or printable URIs.

The dummy credential chain (conftest: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY = devtools.s3server.DUMMY_*) is
what boto3 signs every request with, in the driver and in the executors."""
from __future__ import annotations

import json
import logging
import os
import re
import subprocess
from pathlib import Path
from urllib.parse import quote

import pytest

from background import background_python
from fruitpipe import storage
from fruitpipe.batch import pipeline
from fruitpipe.batch.session import BASE_CONF
from fruitpipe.config import IMAGE_EXTENSIONS, PcaSettings, RunConfig, S3Options
from fruitpipe.devtools.s3server import DUMMY_KEY_ID, DUMMY_SECRET, client, download_prefix, upload_folder
from fruitpipe.storage import Store
from helpers import copy_subset

pytestmark = pytest.mark.slow

IN_BUCKET, OUT_BUCKET, IN_PREFIX = "secrets-in", "secrets-out", "inputs/tiny set"
SECRETS = {"secret key": DUMMY_SECRET, "access key id": DUMMY_KEY_ID}


def leaks(data: bytes | str) -> list[str]:
    """Which of the credentials appear in `data` (raw, URL-encoded or as UTF-16)."""
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogateescape")
    found = []
    for what, value in SECRETS.items():
        forms = {value.encode(), quote(value, safe="").encode(), value.encode("utf-16-le")}
        if any(form in data for form in forms):
            found.append(what)
    return found


def leaking_files(folder: Path) -> dict[str, list[str]]:
    return {p.relative_to(folder).as_posix(): leaks(p.read_bytes()) for p in folder.rglob("*")
            if p.is_file() and leaks(p.read_bytes())}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A 3-d ONNX feature extractor (mean colour), so the runs spend their time on I/O, not on a CNN."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["image"], ["pooled"]),
         helper.make_node("Flatten", ["pooled"], ["features"], axis=1)],
        "mean_colour", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, 16, 16])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path = tmp_path_factory.mktemp("model") / "mean_colour.onnx"
    onnx.save(model, str(path))
    Path(f"{path}.json").write_text(json.dumps({"input_size": 16, "resize": "bilinear", "mean": [0.5, 0.5, 0.5],
                                                "std": [0.25, 0.25, 0.25], "feature_dim": 3}))
    return f"onnx:{path}"


@pytest.fixture(scope="module")
def s3_input(s3_endpoint: str, small_sample: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """2 classes x 3 Training images, uploaded to s3://secrets-in/inputs/tiny set/."""
    assert os.environ["AWS_SECRET_ACCESS_KEY"] == DUMMY_SECRET and os.environ["AWS_ACCESS_KEY_ID"] == DUMMY_KEY_ID
    folder = copy_subset(small_sample, tmp_path_factory.mktemp("tiny"), 2, {"Training": 3})
    assert upload_folder(s3_endpoint, folder, IN_BUCKET, IN_PREFIX) == 6
    s3 = client(s3_endpoint)
    if OUT_BUCKET not in {b["Name"] for b in s3.list_buckets().get("Buckets", [])}:
        s3.create_bucket(Bucket=OUT_BUCKET)
    return f"s3://{IN_BUCKET}/{IN_PREFIX}"


class Records(logging.Handler):
    """Keeps every record, fully formatted (message, arguments, exception and stack)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[tuple[str, str]] = []  # (logger name, formatted record)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s %(pathname)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((record.name, self.format(record) + f" args={record.args!r}"))


@pytest.fixture(scope="module")
def cli_process(s3_endpoint: str, s3_input: str, tiny_model: str, tmp_path_factory: pytest.TempPathFactory):
    """`fruitpipe -v run` S3 -> S3 in a subprocess (its own Spark), started early to overlap the library run."""
    folder = tmp_path_factory.mktemp("cli-process")
    command = ["-m", "fruitpipe.cli", "-v", "run", "--input", s3_input,
               "--output", f"s3://{OUT_BUCKET}/cli-run", "--endpoint-url", s3_endpoint, "--model", tiny_model,
               "--k", "2", "--csv", "--master", "local[2]", "--conf", "spark.ui.enabled=false", "--json"]
    with background_python(command, folder) as process:
        yield process, folder


@pytest.fixture(scope="module")
def library_run(cli_process, spark, s3_endpoint: str, s3_input: str, tiny_model: str,
                tmp_path_factory: pytest.TempPathFactory):
    """pipeline.run S3 in -> S3 out in this process, every logger at DEBUG (like caplog, module-wide)."""
    handler = Records()
    # the noisy libraries too: an in-process `cli.main` (other tests) turns them to WARNING for good
    loggers = [logging.getLogger(name) for name in (None, "fruitpipe", "botocore", "boto3", "urllib3")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.DEBUG)
    logging.getLogger().addHandler(handler)
    try:
        manifest = pipeline.run(RunConfig(input=s3_input, output=f"s3://{OUT_BUCKET}/library-run", model=tiny_model,
                                          pca=PcaSettings(k=2), csv=True, s3=S3Options(endpoint_url=s3_endpoint)))
    finally:
        logging.getLogger().removeHandler(handler)
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
    folder = tmp_path_factory.mktemp("library-run")
    keys = download_prefix(s3_endpoint, OUT_BUCKET, "library-run", folder)
    return manifest, handler.lines, folder, keys


def test_library_run_writes_no_credentials(library_run) -> None:
    manifest, _, folder, keys = library_run
    assert manifest.counts.to_json() == {"listed": 6, "ok": 6, "rejected": 0, "views": 0, "featurized": 6,
                                         "reused": 0, "removed": 0}
    for name in ("manifest.json", "_SUCCESS", "scree.png", "features/part-00000.parquet", "errors/part-00000.parquet"):
        assert name in keys, keys
    assert any(k.startswith("pca_model/") and "metadata" in k for k in keys), keys
    assert any(k.startswith("csv/part-") for k in keys), keys
    assert leaking_files(folder) == {}
    assert leaks(repr(manifest)) == []


def test_library_run_logs_no_credentials(library_run) -> None:
    _, lines, _, _ = library_run
    assert any(name.startswith("fruitpipe.") for name, _ in lines), "no fruitpipe record captured"
    assert any(line.startswith("DEBUG ") for _, line in lines), "no DEBUG record captured"
    assert [line for _, line in lines if "secret key" in leaks(line)] == []
    # The access key id, too, in everything fruitpipe logs. (botocore itself logs the signed request
    # headers, Credential=<key id>/..., when a host application turns the root logger to DEBUG.)
    assert [line for name, line in lines if name.startswith("fruitpipe") and leaks(line)] == []


def test_spark_conf_holds_no_credentials(library_run, spark) -> None:
    pairs = list(spark.sparkContext.getConf().getAll())
    pairs += list(spark.sparkContext.environment.items())
    sql_conf = getattr(spark.conf, "getAll", {})
    pairs += list(sql_conf.items()) if isinstance(sql_conf, dict) else []
    assert len(pairs) > 10
    assert [key for key, value in pairs if leaks(f"{key}={value}")] == []


# ---------------------------------------------------------------- the CLI, as a user runs it

@pytest.fixture(scope="module")
def cli_run(cli_process, library_run, s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory):
    process, logs = cli_process
    process.wait(timeout=600)
    result = subprocess.CompletedProcess(process.args, process.returncode, (logs / "stdout").read_bytes(),
                                         (logs / "stderr").read_bytes())
    folder = tmp_path_factory.mktemp("cli-run")
    keys = download_prefix(s3_endpoint, OUT_BUCKET, "cli-run", folder)
    return result, folder, keys


def test_cli_run_prints_and_writes_no_credentials(cli_run) -> None:
    result, folder, keys = cli_run
    output = result.stdout + result.stderr
    assert result.returncode == 0, output.decode(errors="replace")[-3000:]
    assert b" INFO fruitpipe.batch.sources: listed 6 images" in result.stderr, "no fruitpipe logging on stderr"
    assert json.loads(result.stdout)["counts"] == {"listed": 6, "ok": 6, "rejected": 0, "views": 0, "featurized": 6,
                                         "reused": 0, "removed": 0}
    assert "manifest.json" in keys and "_SUCCESS" in keys and "features/part-00000.parquet" in keys
    assert leaking_files(folder) == {}
    assert "secret key" not in leaks(output)


def test_cli_verbose_output_has_no_access_key_id(cli_run) -> None:
    result, _, _ = cli_run
    assert result.returncode == 0
    output = (result.stdout + result.stderr).decode(errors="replace")
    assert [line for line in output.splitlines() if leaks(line)] == []


# ---------------------------------------------------------------- Spark's redaction of conf and environment

REDACTION = BASE_CONF["spark.redaction.regex"]
SENSITIVE_KEYS = ["spark.hadoop.fs.s3a.secret.key", "spark.executorEnv.AWS_SECRET_ACCESS_KEY",
                  "spark.hadoop.fs.s3a.access.key", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID",
                  "spark.hadoop.fs.s3a.session.token", "spark.executorEnv.AWS_SESSION_TOKEN",
                  "spark.yarn.appMasterEnv.AWS_SECRET_ACCESS_KEY", "spark.ssl.keyPassword",
                  "spark.hadoop.fs.s3a.aws.credentials.provider", "HTTP_AUTHORIZATION"]
PLAIN_KEYS = ["spark.master", "spark.app.name", "spark.executor.memory", "spark.sql.shuffle.partitions",
              "spark.hadoop.fs.s3a.endpoint", "spark.driver.extraJavaOptions"]


@pytest.mark.parametrize("key", SENSITIVE_KEYS)
def test_redaction_regex_matches_credential_keys(key: str) -> None:
    assert BASE_CONF["spark.sql.redaction.string.regex"] == REDACTION
    assert re.search(REDACTION, key), key


@pytest.mark.parametrize("key", PLAIN_KEYS)
def test_redaction_regex_spares_ordinary_keys(key: str) -> None:
    assert not re.search(REDACTION, key), key


def test_spark_itself_redacts_with_the_regex(spark) -> None:
    """What the UI's environment page and event logs show: Spark's Utils.redact with the session's conf."""
    assert spark.sparkContext.getConf().get("spark.redaction.regex") == REDACTION
    jvm = spark.sparkContext._jvm
    pairs = jvm.java.util.ArrayList()
    for key in SENSITIVE_KEYS + PLAIN_KEYS:
        pairs.add(jvm.scala.Tuple2(key, "plain-value-123"))
    seq = jvm.scala.jdk.javaapi.CollectionConverters.asScala(pairs).toSeq()
    redacted = jvm.org.apache.spark.util.Utils.redact(spark.sparkContext._jsc.sc().conf(), seq)
    shown = {item._1(): item._2() for item in jvm.scala.jdk.javaapi.CollectionConverters.asJava(redacted)}
    assert {key for key, value in shown.items() if value == "plain-value-123"} == set(PLAIN_KEYS)
    assert all(shown[key] != "plain-value-123" for key in SENSITIVE_KEYS)


# ---------------------------------------------------------------- URIs with user:password@

@pytest.mark.parametrize("uri, kept", [
    ("s3://AKIAEXAMPLE:pa55word@bucket/photos/a.jpg", "s3://bucket/photos/a.jpg"),
    ("s3a://AKIAEXAMPLE:pa55word@bucket", "s3a://bucket"),
    ("https://AKIAEXAMPLE:pa55word@minio.local/bucket", "https://minio.local/bucket"),
    ("s3://AKIAEXAMPLE:pa%2F55word@bucket/x", "s3://bucket/x"),
    ("s3://:pa55word@bucket/x", "s3://bucket/x"),
    ("s3://AKIAEXAMPLE@bucket/x", "s3://bucket/x"),
])
def test_redact_removes_user_and_password(uri: str, kept: str) -> None:
    shown = storage.redact(uri)
    assert "pa55word" not in shown and "pa%2F55word" not in shown and "AKIAEXAMPLE" not in shown
    assert shown == kept


def test_redact_leaves_plain_uris_alone() -> None:
    for uri in ("s3://bucket/a b/é=+1@2.jpg", "/tmp/x@y:z", "s3://bucket"):
        assert storage.redact(uri) == uri


def test_redact_secret_with_a_slash() -> None:
    shown = storage.redact("s3://AKIAEXAMPLE:wJalr/XUtnFEMI+K7MDENG@bucket/photos")
    assert "XUtnFEMI" not in shown and "AKIAEXAMPLE" not in shown


def test_redact_keeps_the_port() -> None:
    assert storage.redact("https://user:pw@MinIO.local:9000/bucket") == "https://MinIO.local:9000/bucket"


def test_listing_error_does_not_show_a_password_in_the_uri(s3_endpoint: str) -> None:
    with pytest.raises((ValueError, OSError)) as info:
        Store(S3Options(endpoint_url=s3_endpoint)).list_files("s3://AKIAEXAMPLE:pa55word@secrets-in/nothing",
                                                              IMAGE_EXTENSIONS)
    assert "pa55word" not in str(info.value)
