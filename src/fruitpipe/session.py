"""The SparkSession of a run: checked Java, Arrow on, secrets redacted; stops only what it started."""
from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

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
    _use_driver_python_locally(master)
    builder = SparkSession.builder.master(master).appName(app_name)
    defaults = {"spark.driver.memory": "2g", "spark.driver.extraJavaOptions": f"-Dlog4j2.configurationFile={LOG_CONFIG}"}
    for key, value in {**BASE_CONF, **defaults, **dict(conf)}.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    try:
        yield spark
    finally:
        spark.stop()


def _use_driver_python_locally(master: str) -> None:
    """Local workers run the driver's interpreter (the one that has fruitpipe), unless told otherwise.

    PySpark reads the worker interpreter from PYSPARK_PYTHON only, not from the conf."""
    if master.startswith("local"):
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)


def executor_hosts(spark: SparkSession) -> list[str]:
    """host:port of every executor the run had (the driver alone in local mode)."""
    infos = spark.sparkContext._jsc.sc().statusTracker().getExecutorInfos()
    return sorted(f"{info.host()}:{info.port()}" for info in infos)
