"""Labels and paths can't escape: a listed file whose relative path has a '..'/'.' or empty segment, a
control character or an over-long name is rejected at listing (errors/, stage `list`, with the reason)
and counted; local folders and S3 alike."""
from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from fruitpipe import storage
from fruitpipe.batch import pipeline
from fruitpipe.batch.manifest import RunManifest
from fruitpipe.config import PcaSettings, RunConfig, S3Options
from fruitpipe.devtools.s3server import client, download_prefix

LONG = "L" * 256  # one byte over a file name's limit


@pytest.mark.parametrize(("relative", "words"), [
    ("Training/../Kiwi/a.jpg", "'..'"),
    ("Training/./Kiwi/a.jpg", "'.'"),
    ("/Training/Kiwi/a.jpg", "absolute"),
    ("Training//Kiwi/a.jpg", "empty path segment"),
    ("Training/Ki\nwi/a.jpg", "control"),
    ("Training/Ki\x07wi/a.jpg", "control"),
    ("Training/Ki\u202ewi/a.jpg", "control or invisible"),  # right-to-left override: looks like another name
    (f"Training/{LONG}/a.jpg", "longer than 255 bytes"),
    (f"Training/{'é' * 128}/a.jpg", "longer than 255 bytes"),  # 128 characters, 256 bytes in UTF-8
])
def test_unsafe_paths_are_named(relative: str, words: str) -> None:
    reason = storage.unsafe_reason(relative)
    assert reason is not None and words in reason, reason


@pytest.mark.parametrize("relative", ["Training/Apple Red 1/0_100.jpg", "Test/Kiwi/r_12_100.jpg",
                                      "Training/Pitahaya Red/é.jpg", f"Training/{'é' * 127}/a.jpg"])
def test_ordinary_paths_pass(relative: str) -> None:
    assert storage.unsafe_reason(relative) is None


def _check(output: Path, expected_rejected: set[str], good: int) -> None:
    errors = pd.read_parquet(output / "errors")
    assert set(errors[errors.stage == "list"].path) == expected_rejected
    assert len(errors) == len(expected_rejected)
    features = pd.read_parquet(output / "features")
    assert len(features) == good and not set(features.path) & expected_rejected
    assert all(storage.unsafe_reason(label) is None for label in features.label)
    manifest = RunManifest.loads((output / "manifest.json").read_bytes(), "manifest")
    assert manifest.counts.listed == good + len(expected_rejected) == manifest.counts.ok + manifest.counts.rejected


def test_local_run_rejects_unsafe_folder_names(spark, sample_dir: Path, tmp_path: Path) -> None:
    photos = sorted((sample_dir / "Training" / "Kiwi").glob("*.jpg"))[:4]
    source = tmp_path / "in"
    for folder, chosen in (("Kiwi", photos[:3]), ("Ki\nwi", photos[3:]), ("Bad\x1b[31mRed", photos[:1])):
        (source / "Training" / folder).mkdir(parents=True)
        for photo in chosen:
            shutil.copy(photo, source / "Training" / folder / photo.name)
    pipeline.run(RunConfig(input=str(source), output=str(tmp_path / "out"), pca=PcaSettings(k=2)))
    _check(tmp_path / "out", {str(source / "Training" / "Ki\nwi" / photos[3].name),
                              str(source / "Training" / "Bad\x1b[31mRed" / photos[0].name)}, 3)


def test_s3_run_rejects_unsafe_keys(spark, sample_dir: Path, s3_endpoint: str, tmp_path: Path) -> None:
    s3 = client(s3_endpoint)
    for bucket in ("unsafe-in", "unsafe-out"):
        s3.create_bucket(Bucket=bucket)
    photos = sorted((sample_dir / "Training" / "Kiwi").glob("*.jpg"))[:3]
    good = [f"in/Training/Kiwi/{photo.name}" for photo in photos]
    bad = ["in/Training/../Kiwi/escape.jpg", "in/Training/Kiwi//double.jpg", "in/Training/Ki\x07wi/bell.jpg",
           f"in/Training/{LONG}/long.jpg", "in/../outside.jpg"]
    for index, key in enumerate(good + bad):
        s3.put_object(Bucket="unsafe-in", Key=key, Body=photos[index % len(photos)].read_bytes())
    listed = {item["Key"] for item in s3.list_objects_v2(Bucket="unsafe-in")["Contents"]}
    assert listed == set(good + bad), "the S3 server changed a key"
    options = S3Options(endpoint_url=s3_endpoint)
    pipeline.run(RunConfig(input="s3://unsafe-in/in", output="s3://unsafe-out/run", pca=PcaSettings(k=2), s3=options))
    download_prefix(s3_endpoint, "unsafe-out", "run", tmp_path)
    _check(tmp_path, {f"s3://unsafe-in/{key}" for key in bad}, 3)
