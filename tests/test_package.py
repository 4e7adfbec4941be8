"""`fruitpipe package` and `--env-archive` without Spark: what goes in, how a run ships it, user errors.

Building the archive and running executors from it is tested in test_cluster.py."""
from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest

from fruitpipe import cli
from fruitpipe.ops import package


def test_runtime_closure_follows_requirements_and_leaves_torch_and_spark_out() -> None:
    names = {package.normalise(d.metadata["Name"]) for d in package.runtime_closure()}
    assert {"fruitpipe", "onnxruntime", "pyarrow", "pandas", "numpy", "pillow", "boto3", "botocore"} <= names
    assert not names & {"torch", "pyspark", "py4j", "venv-pack", "pytest", "moto", "selenium", "ray", "triton"}
    assert not any(name.startswith("nvidia") for name in names)
    # closed: every requirement of a packed distribution is packed or deliberately left out
    for dist in package.runtime_closure():
        for name in package._runtime_requirements(dist):
            assert package.normalise(name) in names | set(package.LEFT_OUT), (dist.metadata["Name"], name)


def test_exclude_drops_a_distribution_and_what_only_it_needs() -> None:
    names = {package.normalise(d.metadata["Name"]) for d in package.runtime_closure(
        left_out=package.LEFT_OUT | {"matplotlib"})}
    assert "matplotlib" not in names and "kiwisolver" not in names and "numpy" in names


def test_missing_requirement_is_a_clear_error(monkeypatch) -> None:
    real = importlib.metadata.distribution

    def without_boto3(name: str):
        if package.normalise(name) == "boto3":
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "distribution", without_boto3)
    with pytest.raises(ValueError, match="boto3 is required but not installed"):
        package.runtime_closure()


def test_env_archive_sets_archives_and_executor_python(tmp_path: Path) -> None:
    archive = tmp_path / "env.tar.gz"
    archive.write_bytes(b"")
    conf = dict(package.with_env_archive((("spark.archives", "s3://b/other.zip#other"),), str(archive), "spark://h:7077"))
    assert conf["spark.archives"] == f"s3://b/other.zip#other,{archive}#fruitpipe_env"
    assert conf["spark.pyspark.python"] == "./fruitpipe_env/bin/python"
    mine = dict(package.with_env_archive((("spark.pyspark.python", "./x/bin/python"),), "s3://b/env.tar.gz", "yarn"))
    assert mine["spark.pyspark.python"] == "./x/bin/python" and mine["spark.archives"] == "s3://b/env.tar.gz#fruitpipe_env"


@pytest.mark.parametrize(("argv", "message"), [
    (["run", "--env-archive", "missing.tar.gz", "--master", "spark://h:7077"], "no such file"),
    (["run", "--env-archive", "s3://b/env.tar.gz"], "needs executors in their own processes"),
    (["package", "--output", "env.rar"], "must end with .tar.gz, .tgz or .zip"),
    (["package", "--python-prefix", "usr"], "must be an absolute path"),
])
def test_user_errors_are_one_line(argv: list[str], message: str, capsys, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert cli.main(argv) != 0
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


def test_existing_archive_is_not_replaced_without_overwrite(tmp_path: Path) -> None:
    target = tmp_path / "env.tar.gz"
    target.write_bytes(b"keep")
    with pytest.raises(ValueError, match="exists"):
        package.build(target)
    assert target.read_bytes() == b"keep"
