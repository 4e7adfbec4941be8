"""The SparkSession of a run: checked Java, Arrow on, secrets redacted; stops only what it started.

Under spark-submit the master and deploy settings are spark-submit's; elsewhere `--master` chooses.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pyspark.sql import SparkSession

logger = logging.getLogger(__name__)

REQUIRED_JAVA = 17
REDACTION_REGEX = r"(?i)secret|password|token|credential|access[._-]?key|session[._-]?key|authorization"
BASE_CONF = {
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.redaction.regex": REDACTION_REGEX,
    "spark.sql.redaction.string.regex": REDACTION_REGEX,
    "spark.ui.showConsoleProgress": "false",
    "spark.python.worker.reuse": "true",
    "spark.hadoop.mapreduce.fileoutputcommitter.marksuccessfuljobs": "false",
    "spark.sql.parquet.compression.codec": "zstd",
}
LOG_CONFIG = Path(__file__).with_name("log4j2.properties").as_uri()
JAVA_HINT = ("Java 17 or newer is required: install it (Debian/Ubuntu: apt-get install openjdk-17-jre-headless) "
             "or set JAVA_HOME")


def java_version() -> int:
    """Major version of the java Spark will launch; ValueError when there is none."""
    home = os.environ.get("JAVA_HOME")
    java = os.path.join(home, "bin", "java") if home else shutil.which("java")
    if not java or not os.path.exists(java):
        raise ValueError(f"no Java found. {JAVA_HINT}")
    try:
        result = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30, check=False)
    except OSError as exc:
        raise ValueError(f"cannot run {java}: {exc}. {JAVA_HINT}") from exc
    match = re.search(r'version "(\d+)(?:\.(\d+))?', result.stderr + result.stdout)
    if not match:
        raise ValueError(f"cannot read the version of {java}. {JAVA_HINT}")
    major = int(match.group(1))
    return int(match.group(2)) if major == 1 and match.group(2) else major


def check_java() -> None:
    version = java_version()
    if version < REQUIRED_JAVA:
        raise ValueError(f"Java {version} found, Java {REQUIRED_JAVA}+ needed. {JAVA_HINT}")


@contextmanager
def spark_session(master: str, conf: tuple[tuple[str, str], ...] = (), app_name: str = "fruitpipe",
                  ) -> Iterator[SparkSession]:
    """Reuse the active session (a notebook's, a test's) or start one and stop it afterwards."""
    active = SparkSession.getActiveSession()
    if active is not None:
        yield active
        return
    check_java()
    _set_executor_python(master, dict(conf))
    builder = SparkSession.builder.appName(app_name)
    if under_spark_submit():
        logger.info("master and deploy settings come from spark-submit")
    else:
        builder = builder.master(master)
    defaults = {"spark.driver.memory": "2g", "spark.driver.extraJavaOptions": f"-Dlog4j2.configurationFile={LOG_CONFIG}"}
    for key, value in {**BASE_CONF, **defaults, **dict(conf)}.items():
        builder = builder.config(key, value)
    with _driver_side_python(os.environ.get("PYSPARK_PYTHON", "")) as jvm_cwd:
        spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    try:
        yield spark
    finally:
        spark.stop()
        if jvm_cwd:
            shutil.rmtree(jvm_cwd, ignore_errors=True)


def under_spark_submit() -> bool:
    """True when spark-submit launched this driver (it hands PySpark its JVM's gateway port)."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


def _set_executor_python(master: str, conf: dict[str, str]) -> None:
    """Choose the executors' interpreter the way spark-submit does.

    PySpark takes it from PYSPARK_PYTHON when the SparkContext starts, not from the conf; so
    `spark.pyspark.python` (e.g. the packed archive's ./fruitpipe_env/bin/python) is copied there.
    Local workers default to the driver's interpreter (the one that has fruitpipe)."""
    if conf.get("spark.pyspark.python"):
        os.environ["PYSPARK_PYTHON"] = conf["spark.pyspark.python"]
    elif master.startswith("local"):
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)


@contextmanager
def _driver_side_python(python: str) -> Iterator[str | None]:
    """Make a relative executor Python (`./fruitpipe_env/bin/python`) resolvable on the driver too.

    Spark also runs the Python workers of Python Data Sources (our committer's planning and commit)
    on the driver, from the driver JVM's working directory. Executors find that path in their own
    working directory (where spark.archives unpacked the environment); a driver started outside
    spark-submit's cluster mode would not. So the JVM starts in a scratch directory where the path's
    first component links to this process's environment, which has fruitpipe (the same Python
    minor version as the archive, as PySpark requires anyway). Yields that directory, or None."""
    relative = Path(python)
    if not python or relative.is_absolute() or len(relative.parts) < 2 or relative.exists() or under_spark_submit():
        yield None
        return
    scratch = tempfile.mkdtemp(prefix="fruitpipe-driver-")
    (Path(scratch) / relative.parts[0]).symlink_to(sys.prefix, target_is_directory=True)
    previous = os.getcwd()
    os.chdir(scratch)
    try:
        yield scratch
    finally:
        os.chdir(previous)


def executors(spark: SparkSession) -> list[dict[str, Any]]:
    """Every executor the application had, alive or lost, with the tasks it ran (the driver in local mode).

    From Spark's status store, the data behind the UI's Executors tab and the REST API."""
    summaries = spark.sparkContext._jsc.sc().statusStore().executorList(False)
    rows = []
    for index in range(summaries.size()):
        summary = summaries.apply(index)
        rows.append({"id": summary.id(), "host": summary.hostPort(), "active": bool(summary.isActive()),
                     "completed_tasks": int(summary.completedTasks()), "failed_tasks": int(summary.failedTasks())})
    return sorted(rows, key=lambda row: (row["id"] != "driver", row["id"].zfill(8)))
