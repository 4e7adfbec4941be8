"""The SparkSession of a run: checked Java, Arrow on, secrets redacted; stops only what it started.

Under spark-submit the master and deploy settings are spark-submit's; elsewhere `--master` chooses.
With `--remote sc://HOST:PORT` the session is a Spark Connect client of that server: no local JVM, the
server's master and settings; only the client session is stopped afterwards.
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

from pyspark.sql import SparkSession

from fruitpipe import sparkapi
from fruitpipe.batch.interrupt import cancel_on_interrupt
from fruitpipe.config import check_remote

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
    # Arrow batches to Python workers: 1,024 rows bound a worker's memory (the PCA pass reads coalesced
    # partitions; 10,000 rows of 1280 floats were 51 MB per batch and made RSS grow with the data)
    "spark.sql.execution.arrow.maxRecordsPerBatch": "1024",
}
LOG_CONFIG = Path(__file__).with_name("log4j2.properties").as_uri()
JAVA_HINT = ("Java 17 or newer is required: install it (Debian/Ubuntu: apt-get install openjdk-17-jre-headless) "
             "or set JAVA_HOME")


def java_version() -> int:
    """Major version of the java Spark will launch; ValueError when there is none."""
    return _major_version(_java_version_text())


def _major_version(text: str) -> int:
    """The major version in what `java -version` printed ("1.8.0" is 8)."""
    match = re.search(r'version "(\d+)(?:\.(\d+))?', text)
    if not match:
        raise ValueError(f"cannot read the version of {_java()}. {JAVA_HINT}")
    major = int(match.group(1))
    return int(match.group(2)) if major == 1 and match.group(2) else major


def _java() -> str:
    home = os.environ.get("JAVA_HOME")
    java = os.path.join(home, "bin", "java") if home else shutil.which("java")
    if not java or not os.path.exists(java):
        raise ValueError(f"no Java found. {JAVA_HINT}")
    return java


def _java_version_text() -> str:
    """What `java -version` prints: the version and the build (a JDK update changes the build), without the
    "Picked up JDK_JAVA_OPTIONS: ..." notes of the environment's options."""
    java = _java()
    try:
        result = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30, check=False)
    except OSError as exc:
        raise ValueError(f"cannot run {java}: {exc}. {JAVA_HINT}") from exc
    return "\n".join(line for line in (result.stderr + result.stdout).splitlines() if "Picked up " not in line)


def check_java() -> None:
    version = java_version()
    if version < REQUIRED_JAVA:
        raise ValueError(f"Java {version} found, Java {REQUIRED_JAVA}+ needed. {JAVA_HINT}")


@contextmanager
def spark_session(master: str, conf: tuple[tuple[str, str], ...] = (), app_name: str = "fruitpipe",
                  remote: str | None = None) -> Iterator[SparkSession]:
    """Reuse the active session (a notebook's, a test's) or start one and stop it afterwards;
    with `remote` (sc://HOST:PORT), a new Spark Connect client session of that server."""
    if remote:
        with connect_session(remote, conf) as spark:
            yield spark
        return
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
    java_options = " ".join([f"-Dlog4j2.configurationFile={LOG_CONFIG}", *class_data_sharing(dict(conf))])
    defaults = {"spark.driver.memory": "2g", "spark.driver.extraJavaOptions": java_options}
    for key, value in {**BASE_CONF, **defaults, **dict(conf)}.items():
        builder = builder.config(key, value)
    with _driver_side_python(os.environ.get("PYSPARK_PYTHON", "")) as jvm_cwd:
        spark = builder.getOrCreate()
    _record_dumping_jvm(spark, dict(conf).get("spark.driver.extraJavaOptions", java_options))
    sparkapi.quiet_logs(spark, "WARN")
    try:
        with cancel_on_interrupt(spark):
            yield spark
    finally:
        spark.stop()
        if jvm_cwd:
            shutil.rmtree(jvm_cwd, ignore_errors=True)


@contextmanager
def connect_session(remote: str, conf: tuple[tuple[str, str], ...] = ()) -> Iterator[SparkSession]:
    """A new Spark Connect client session of the server at `remote`, stopped (released) afterwards.

    The server owns its SparkContext, master, executors' Python and core settings, and keeps running.
    Of BASE_CONF, the SQL settings a session may change are applied (Arrow batch size, Parquet codec,
    redaction of SQL text); `conf` pairs must all apply to the session: one that the server refuses (a
    core or static setting such as spark.executor.memory) is a one-line error, not silently dropped."""
    check_remote(remote)
    _check_reachable(remote)
    spark = SparkSession.builder.remote(remote).create()
    try:
        server = spark.version
        logger.info("Spark Connect session of %s (Spark %s)", _redact_url(remote), server)
        for key, value in BASE_CONF.items():
            if key.startswith("spark.sql."):
                try:
                    spark.conf.set(key, value)
                except Exception as exc:  # the server's own value stands; nothing a user asked for
                    logger.debug("Spark Connect: %s not set: %s", key, first_line(exc))
        for key, value in conf:
            try:
                spark.conf.set(key, value)
            except Exception as exc:
                raise ValueError(f"--conf {key} cannot apply to a Spark Connect session ({first_line(exc)}); "
                                 "set it on the server") from None
        with cancel_on_interrupt(spark):
            yield spark
    finally:
        spark.stop()


CONNECT_PORT = 15002  # Spark Connect's default port, when the URL names none
REACH_TIMEOUT_S = 10.0


def _check_reachable(remote: str) -> None:
    """Fail in seconds, in one line, when nothing listens at the URL's host and port: the Connect client
    itself retries an unavailable server for minutes before it reports anything."""
    import socket

    address = remote[len("sc://"):].split("/", 1)[0].split(";", 1)[0]
    host, _, port = address.rpartition(":") if address.rpartition(":")[2].isdigit() else (address, "", "")
    try:
        with socket.create_connection((host.strip("[]"), int(port or CONNECT_PORT)), timeout=REACH_TIMEOUT_S):
            pass
    except OSError as exc:
        raise ValueError(f"cannot reach the Spark Connect server at {_redact_url(remote)} ({exc})") from None


def _redact_url(remote: str) -> str:
    """sc://HOST:PORT without its parameters (`;token=...` must never reach a log or an error)."""
    return remote.split(";", 1)[0]


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


CDS_ENV = "FRUITPIPE_JVM_CDS"  # "off" disables the driver JVM's class-data-sharing archive
CDS_QUIET = ("-Xlog:cds=off", "-Xlog:cds+dynamic=off")  # the dump lists skipped classes on stdout otherwise
EXTRA_CLASSPATH = ("spark.jars", "spark.jars.packages", "spark.driver.extraClassPath")


def class_data_sharing(conf: dict[str, str]) -> list[str]:
    """JVM options for a class-data-sharing archive of Spark's classes (JDK AppCDS), kept in the cache.

    The first run records the classes the driver JVM loads and dumps them when it exits; later runs map
    the archive instead of loading and verifying ~10,000 classes: Spark start 5.3 -> 3.6 s and its first
    job 2.5 -> 1.4 s on 2 cores (docs/performance.md). Keyed by Spark, Java and the jar set; skipped when
    extra jars change the classpath (the JVM would refuse the archive), under spark-submit (the JVM is
    already running) and with FRUITPIPE_JVM_CDS=off. A damaged archive is ignored by the JVM itself."""
    if os.environ.get(CDS_ENV, "on") == "off" or under_spark_submit() or any(conf.get(k) for k in EXTRA_CLASSPATH):
        return []
    try:
        folder, key = _cds_folder(), _cds_key()
        folder.mkdir(parents=True, exist_ok=True)
    except (OSError, ValueError) as exc:
        logger.debug("no class-data-sharing archive: %s", exc)
        return []
    archive = folder / f"{key}.jsa"
    _adopt_finished_dump(folder, key, archive)
    if archive.is_file():
        _mark_used(archive)
        return [f"-XX:SharedArchiveFile={archive}", *CDS_QUIET]
    return [f"-XX:ArchiveClassesAtExit={folder / f'{key}.{os.getpid()}.dump'}", *CDS_QUIET]


def class_archive_ready() -> bool:
    """Whether the next Spark start maps a class-data-sharing archive (adopting a finished dump if one waits)."""
    return any(option.startswith("-XX:SharedArchiveFile=") for option in class_data_sharing({}))


def _cds_folder() -> Path:
    from fruitpipe.image.models import cache_dir

    return cache_dir().parent / "jvm"


def _cds_key(jars: Path | None = None) -> str:
    """Names the archive after what the JVM checks before it maps one: the JDK build and each jar of the
    classpath with its size and modification time (a reinstalled pyspark has new mtimes, and the JVM
    silently refuses an archive made from the old files: every start would load every class again)."""
    import hashlib

    import pyspark

    jars = jars or Path(pyspark.__file__).parent / "jars"
    listing = "\n".join(sorted(f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in jars.glob("*.jar")))
    java = _java_version_text()
    digest = hashlib.sha256(f"{java}\n{listing}".encode()).hexdigest()[:12]
    return f"spark-{pyspark.__version__}-java{_major_version(java)}-{digest}"


ARCHIVES_KEPT = 2  # the most recently used archives (~170 MB each); older ones are made for jars long gone


def _mark_used(archive: Path) -> None:
    """The archive's mtime says when a run last mapped it; archives past the ARCHIVES_KEPT most recently
    used are removed (each reinstall of pyspark or the JDK leaves one behind)."""
    try:
        os.utime(archive)
        archives = sorted(archive.parent.glob("*.jsa"), key=lambda p: p.stat().st_mtime_ns, reverse=True)
        for stale in archives[ARCHIVES_KEPT:]:
            stale.unlink(missing_ok=True)
            logger.info("removed the unused class-data-sharing archive %s", stale)
    except OSError as exc:  # an optimisation only: a read-only cache keeps what it has
        logger.debug("class-data-sharing archives left as they are: %s", exc)


def _adopt_finished_dump(folder: Path, key: str, archive: Path) -> None:
    """A dump becomes the archive once the JVM that wrote it has exited (it writes the dump at exit, after
    the Python process is gone: its pid is in the `.jvm` file next to the dump); other finished dumps (two
    first runs at once each write one) are removed."""
    for marker in sorted(folder.glob(f"{key}.*.dump.jvm")):
        dump = marker.with_suffix("")
        pid = marker.read_text(encoding="utf-8").strip()
        if pid.isdigit() and not _alive(int(pid)):
            if dump.is_file() and not archive.is_file():
                os.replace(dump, archive)
                logger.info("class-data-sharing archive for the driver JVM: %s", archive)
            dump.unlink(missing_ok=True)
            marker.unlink(missing_ok=True)


def _record_dumping_jvm(spark: SparkSession, java_options: str) -> None:
    """Note the pid of a JVM that will dump a class-data-sharing archive at exit (see class_data_sharing)."""
    match = re.search(r"-XX:ArchiveClassesAtExit=(\S+)", java_options)
    if not match:
        return
    try:
        pid = sparkapi.driver_jvm_pid(spark)
        Path(match.group(1) + ".jvm").write_text(str(pid), encoding="utf-8")
    except Exception as exc:  # an optimisation only: the run goes on; the dump is simply never adopted
        logger.debug("cannot record the JVM that writes %s: %s", match.group(1), exc)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def under_spark_submit() -> bool:
    """True when spark-submit launched this driver (it hands PySpark its JVM's gateway port)."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


MISSING_MODULE = re.compile(r"No module named '([A-Za-z0-9_.]+)'")


def executors_without(exc: BaseException) -> str | None:
    """The module a failed Spark job's Python workers could not import (fruitpipe, or one of its
    dependencies), or None when the failure is something else.

    Spark reports it as a PythonException deep in a Java stack trace, raised while unpickling the task; an
    ImportError raised here on the driver is not the executors' and is left alone."""
    if isinstance(exc, ImportError):
        return None
    found = MISSING_MODULE.search(str(exc))
    return found.group(1) if found else None


def executors_without_message(module: str) -> str:
    """What to do when the executors' Python lacks `module`: one line naming both fixes."""
    return (f"the executors' Python cannot import {module} (fruitpipe and its dependencies are not installed "
            "there): ship them with --env-archive dist/fruitpipe_env.tar.gz (made by 'fruitpipe package'), or set "
            "--conf spark.pyspark.python=PATH to a Python that has fruitpipe installed on every executor "
            "(docs/cluster.md)")


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
