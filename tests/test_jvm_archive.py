"""The driver JVM's class-data-sharing archive (session.class_data_sharing): when it is asked for, how a
finished dump becomes the archive, when it is left alone, and that a real Spark start records and uses it."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fruitpipe.batch import session


@pytest.fixture()
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(session, "_cds_folder", lambda: tmp_path / "jvm")
    monkeypatch.setattr(session, "_cds_key", lambda: "spark-x-java17-abc")
    monkeypatch.delenv(session.CDS_ENV, raising=False)
    return tmp_path / "jvm"


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_first_run_asks_the_jvm_to_dump_at_exit(folder: Path) -> None:
    options = session.class_data_sharing({})
    assert options[0] == f"-XX:ArchiveClassesAtExit={folder / f'spark-x-java17-abc.{os.getpid()}.dump'}"
    assert set(session.CDS_QUIET) <= set(options)


def test_a_dump_whose_jvm_has_exited_becomes_the_archive(folder: Path) -> None:
    folder.mkdir()
    dump = folder / "spark-x-java17-abc.123.dump"
    dump.write_bytes(b"archive")
    Path(f"{dump}.jvm").write_text(str(dead_pid()), encoding="utf-8")
    options = session.class_data_sharing({})
    archive = folder / "spark-x-java17-abc.jsa"
    assert options[0] == f"-XX:SharedArchiveFile={archive}" and archive.read_bytes() == b"archive"
    assert session.class_archive_ready()
    assert sorted(p.name for p in folder.iterdir()) == [archive.name]


def test_a_second_finished_dump_is_removed_and_the_archive_kept(folder: Path) -> None:
    """Two first runs at once each dump: the one adopted later must not stay behind (~170 MB)."""
    folder.mkdir()
    archive = folder / "spark-x-java17-abc.jsa"
    archive.write_bytes(b"archive")
    dump = folder / "spark-x-java17-abc.456.dump"
    dump.write_bytes(b"other")
    Path(f"{dump}.jvm").write_text(str(dead_pid()), encoding="utf-8")
    assert session.class_data_sharing({})[0] == f"-XX:SharedArchiveFile={archive}"
    assert archive.read_bytes() == b"archive" and sorted(p.name for p in folder.iterdir()) == [archive.name]


def test_a_dump_still_being_written_is_left_alone(folder: Path) -> None:
    folder.mkdir()
    dump = folder / "spark-x-java17-abc.123.dump"
    dump.write_bytes(b"half")
    Path(f"{dump}.jvm").write_text(str(os.getpid()), encoding="utf-8")  # that JVM is alive
    assert session.class_data_sharing({})[0].startswith("-XX:ArchiveClassesAtExit=")
    assert dump.is_file() and not (folder / "spark-x-java17-abc.jsa").exists()


@pytest.mark.parametrize("conf", [{"spark.jars": "extra.jar"}, {"spark.driver.extraClassPath": "/x"}])
def test_no_archive_when_extra_jars_change_the_classpath(folder: Path, conf: dict[str, str]) -> None:
    assert session.class_data_sharing(conf) == []


def test_no_archive_when_switched_off(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(session.CDS_ENV, "off")
    assert session.class_data_sharing({}) == []


def test_the_key_changes_with_a_jar_s_mtime(tmp_path: Path) -> None:
    """The JVM refuses an archive made from a jar with another mtime (a reinstalled pyspark), so such a jar
    must name another archive."""
    jar = tmp_path / "spark-core.jar"
    jar.write_bytes(b"jar")
    os.utime(jar, ns=(1_000_000_000, 1_000_000_000))
    before = session._cds_key(tmp_path)
    assert session._cds_key(tmp_path) == before
    os.utime(jar, ns=(2_000_000_000, 2_000_000_000))
    assert session._cds_key(tmp_path) != before


def test_only_the_most_recently_used_archives_are_kept(folder: Path) -> None:
    folder.mkdir()
    for age, name in enumerate(["c", "b", "a"]):  # a: used longest ago
        (folder / f"{name}.jsa").write_bytes(b"x")
        os.utime(folder / f"{name}.jsa", (1_000_000 - age, 1_000_000 - age))
    current = folder / "spark-x-java17-abc.jsa"
    current.write_bytes(b"archive")
    assert session.class_data_sharing({})[0] == f"-XX:SharedArchiveFile={current}"
    assert sorted(p.name for p in folder.iterdir()) == ["c.jsa", current.name]


def _spark_classes_from_the_archive(logs: Path) -> int:
    """Spark classes the driver JVM took from the class-data-sharing archive, from -Xlog:class+load files."""
    return sum(1 for log in logs.glob("classes-*.log") for line in log.read_text(errors="replace").splitlines()
               if " org.apache.spark." in line and "source: shared objects file" in line)


def test_a_real_spark_start_records_then_maps_the_archive(tmp_path: Path) -> None:
    """Two throwaway Spark starts in child processes with their own cache: the first dumps, the second maps,
    seen in the JVM's own class-loading log (the options alone do not say the JVM accepted the archive)."""
    env = {**os.environ, "FRUITPIPE_CACHE": str(tmp_path)}
    code = ("from fruitpipe.batch.session import spark_session\n"
            "with spark_session('local[1]') as spark:\n"
            "    print(spark.sparkContext.getConf().get('spark.driver.extraJavaOptions'))\n")

    def start(logs: Path) -> subprocess.CompletedProcess[str]:
        logs.mkdir()
        options = f"-Xlog:class+load=info:file={logs}/classes-%p.log"
        done = subprocess.run([sys.executable, "-c", code], env={**env, "JDK_JAVA_OPTIONS": options},
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        return done

    first = start(tmp_path / "first")
    assert "-XX:ArchiveClassesAtExit=" in first.stdout
    assert _spark_classes_from_the_archive(tmp_path / "first") == 0
    deadline = time.time() + 120
    while not list((tmp_path / "jvm").glob("*.dump")) or any(
            session._alive(int(p.read_text())) for p in (tmp_path / "jvm").glob("*.jvm")):
        assert time.time() < deadline, "the JVM never wrote its archive"
        time.sleep(0.5)
    second = start(tmp_path / "second")
    assert "-XX:SharedArchiveFile=" in second.stdout
    archives = list((tmp_path / "jvm").glob("*.jsa"))
    assert len(archives) == 1 and archives[0].stat().st_size > 10_000_000
    assert _spark_classes_from_the_archive(tmp_path / "second") > 1000
