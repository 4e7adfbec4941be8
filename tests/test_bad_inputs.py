"""Bad inputs end to end: the Spark featurizer keeps every row with a reason, the CLI fails in one line."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from badimages import BAD_MAX_BYTES, BAD_MAX_PIXELS, write_bad_images, write_odd_images
from fruitpipe.batch import sources
from fruitpipe.config import DecodeLimits
from fruitpipe.image import models
from fruitpipe.image.decode import decode_rgb, resize_square
from fruitpipe.image.embed import embed
from fruitpipe.ml import ImageFeaturizer
from fruitpipe.storage import Store

GOOD_CLASS = "Apple Red"


@pytest.fixture(scope="module")
def mixed_folder(sample_dir: Path,
                 tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str], dict[str, str], list[str]]:
    """Flat layout: 6 sample photos, every bad case, every odd-mode good image."""
    root = tmp_path_factory.mktemp("mixed")
    good = sorted((sample_dir / "Training" / GOOD_CLASS).glob("*.jpg"))[:6]
    (root / GOOD_CLASS).mkdir()
    for file in good:
        shutil.copy(file, root / GOOD_CLASS / file.name)
    bad = write_bad_images(root / "bad", max_bytes=BAD_MAX_BYTES)
    odd = write_odd_images(root / "odd")
    return root, bad, odd, [file.name for file in good]


@pytest.fixture(scope="module")
def featurized(spark, mixed_folder) -> dict[str, dict]:
    """Relative path -> output row, from one transform with the limits the bad set is built against."""
    root = mixed_folder[0]
    listing = sources.list_images(Store(), str(root))
    featurizer = ImageFeaturizer(maxBytes=BAD_MAX_BYTES, maxPixels=BAD_MAX_PIXELS, batchSize=8)
    rows = featurizer.transform(sources.to_dataframe(spark, listing)).collect()
    assert len(rows) == len(listing.rows)
    return {str(Path(row["path"]).relative_to(root)): row.asDict() for row in rows}


def test_row_count_equals_file_count(featurized: dict[str, dict], mixed_folder) -> None:
    root, bad, odd, good = mixed_folder
    on_disk = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    assert sorted(featurized) == on_disk
    assert len(featurized) == len(bad) + len(odd) + len(good)


def test_bad_files_rejected_at_expected_stage(featurized: dict[str, dict], mixed_folder) -> None:
    bad = mixed_folder[1]
    for name, stage in bad.items():
        row = featurized[f"bad/{name}"]
        assert (row["error_stage"], row["features"]) == (stage, None), name
        assert row["error_reason"] and row["error_reason"].strip(), name
        assert row["width"] is None and row["height"] is None, name
        assert row["label"] == "bad" and row["split"] is None


def test_bad_reasons_name_the_problem(featurized: dict[str, dict]) -> None:
    reason = {name.split("/")[1]: row["error_reason"].lower() for name, row in featurized.items()
              if name.startswith("bad/")}
    assert "too large" in reason["oversized.jpg"] and str(BAD_MAX_BYTES) in reason["oversized.jpg"]
    assert "decompression bomb" in reason["too_many_pixels.png"]
    assert "decompression bomb" in reason["bomb_header.png"]
    assert "empty" in reason["empty.jpg"]
    assert "not an image" in reason["text.jpg"]
    assert "truncated" in reason["truncated.jpg"]


def test_good_and_odd_files_featurized(featurized: dict[str, dict], mixed_folder) -> None:
    root, _, odd, good = mixed_folder
    names = [f"{GOOD_CLASS}/{name}" for name in good] + [f"odd/{name}" for name in odd]
    for name in names:
        row = featurized[name]
        assert row["error_stage"] is None and row["error_reason"] is None, (name, row["error_reason"])
        features = np.asarray(row["features"], dtype=np.float32)
        assert features.shape == (1280,) and np.isfinite(features).all() and features.std() > 0, name
        with Image.open(root / name) as image:
            size = image.size[::-1] if name.endswith("orientation6.jpg") else image.size
        assert (row["width"], row["height"]) == size, name


def test_spark_features_equal_single_image_path(featurized: dict[str, dict], mixed_folder) -> None:
    """The executor path gives what decode + resize + embed give for one image on the driver."""
    root, _, _, good = mixed_folder
    spec = models.resolve("efficientnet-lite0")
    names = [f"{GOOD_CLASS}/{good[0]}", "odd/exif_orientation6.jpg", "odd/rgba_transparent.png"]
    pixels = np.stack([resize_square(decode_rgb((root / name).read_bytes(), DecodeLimits()), 224, "bilinear")
                       for name in names])
    expected = embed(pixels, spec.preprocessing, str(models.onnx_file(spec)), 1)
    actual = np.asarray([featurized[name]["features"] for name in names], dtype=np.float32)
    assert np.abs(actual - expected).max() <= 1e-4


# ---------------------------------------------------------------- CLI user errors (no Spark)

def cli_command() -> list[str]:
    script = Path(sys.executable).with_name("fruitpipe")
    return [str(script)] if script.exists() else [sys.executable, "-m", "fruitpipe.cli"]


@pytest.fixture(scope="module")
def cli_dirs(tmp_path_factory: pytest.TempPathFactory, sample_dir: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli")
    (root / "empty").mkdir()
    (root / "images" / "Kiwi").mkdir(parents=True)
    shutil.copy(next((sample_dir / "Training" / "Kiwi").glob("*.jpg")), root / "images" / "Kiwi" / "k.jpg")
    onnx = root / "user.onnx"
    onnx.write_bytes(b"never loaded: the sidecar is rejected first")
    Path(f"{onnx}.json").write_text("null", encoding="utf-8")
    return {"root": root, "images": root / "images", "empty": root / "empty", "onnx": onnx}


# name -> (extra argv after `run --output OUT`, expected exit code, words the stderr line must contain)
CLI_CASES = {
    "missing_input": (["--input", "{root}/nowhere"], 1, ["input not found", "{root}/nowhere"]),
    "empty_input": (["--input", "{empty}"], 1, ["no images", "{empty}"]),
    "unknown_model": (["--input", "{images}", "--model", "resnet-9000"], 1, ["unknown model", "resnet-9000"]),
    "k_zero": (["--input", "{images}", "--k", "0"], 2, ["--k", "positive integer"]),
    "k_and_variance": (["--input", "{images}", "--k", "3", "--variance", "0.9"], 2, ["--variance", "--k"]),
    "unknown_flag": (["--input", "{images}", "--bogus"], 2, ["unrecognized arguments", "--bogus"]),
    "sidecar_not_object": (["--input", "{images}", "--model", "onnx:{onnx}"], 1, ["user.onnx.json"]),
}


@pytest.fixture(scope="module")
def cli_results(cli_dirs: dict[str, Path]) -> dict[str, tuple[subprocess.CompletedProcess, Path]]:
    """Run every case concurrently. JAVA_HOME points nowhere: a case that reached Spark would fail on Java."""
    env = {**os.environ, "JAVA_HOME": str(cli_dirs["root"] / "no-java"), "PYTHONWARNINGS": "ignore"}
    running = {}
    for name, (argv, _, _) in CLI_CASES.items():
        out = cli_dirs["root"] / f"out-{name}"
        args = [*cli_command(), "run", "--output", str(out), *(a.format(**cli_dirs) for a in argv)]
        running[name] = (subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                          text=True, cwd=cli_dirs["root"]), out, args)
    results = {}
    for name, (process, out, args) in running.items():
        stdout, stderr = process.communicate(timeout=120)
        results[name] = (subprocess.CompletedProcess(args, process.returncode, stdout, stderr), out)
    return results


def _check_cli_case(name: str, cli_results, cli_dirs) -> None:
    result, out = cli_results[name]
    _, code, words = CLI_CASES[name]
    lines = result.stderr.splitlines()
    assert "Traceback" not in result.stderr, result.stderr
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("fruitpipe"), lines[0]
    assert result.returncode == code, result.stderr
    for word in words:
        assert word.format(**cli_dirs) in lines[0], lines[0]
    assert "java" not in lines[0].lower(), "Spark was started before the user error was found"
    assert result.stdout == ""
    assert not out.exists(), "nothing is written for a user error"


@pytest.mark.parametrize("name", [name for name in CLI_CASES if name != "sidecar_not_object"])
def test_cli_user_error_is_one_line(name: str, cli_results, cli_dirs) -> None:
    _check_cli_case(name, cli_results, cli_dirs)


def test_cli_sidecar_not_an_object_is_one_line(cli_results, cli_dirs) -> None:
    _check_cli_case("sidecar_not_object", cli_results, cli_dirs)



def test_executors_without_fruitpipe_are_recognised_only_from_a_failed_job() -> None:
    from fruitpipe.batch import session

    spark_failure = RuntimeError("Job aborted ... PythonException: Traceback ... ModuleNotFoundError: "
                                 "No module named 'fruitpipe'\n\tat org.apache.spark...")
    assert session.executors_without(spark_failure) == "fruitpipe"
    assert session.executors_without(RuntimeError("No module named 'pyarrow.lib'")) == "pyarrow.lib"
    assert session.executors_without(ModuleNotFoundError("No module named 'fruitpipe'")) is None  # the driver's own
    assert session.executors_without(RuntimeError("Job aborted: division by zero")) is None
    message = session.executors_without_message("fruitpipe")
    assert "--env-archive" in message and "spark.pyspark.python" in message and "\n" not in message
