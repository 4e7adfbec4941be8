"""`fruitpipe train` and the portable bundle behind `fruitpipe predict`, checked independently:
sklearn metrics on the Spark model's predictions, the Spark batch path's probabilities vs the
bundle's on the same image files, and photos in other formats, sizes and orientations."""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image

from badimages import BAD_MAX_BYTES, BAD_MAX_PIXELS, EXIF_ORIENTATION, bad_image_bytes, encode
from fruitpipe import runtime
from fruitpipe.config import DecodeLimits
from fruitpipe.image.decode import DecodeError
from fruitpipe.image.models import LITE0_SHA256
from fruitpipe.recognise.bundle import Bundle
from fruitpipe.recognise.train import metrics_from_confusion
from helpers import fruitpipe_cli
from trained import run_output_of

pytestmark = pytest.mark.slow


fruitpipe = fruitpipe_cli


@pytest.fixture(scope="module")
def bundle(trained_bundle: Path) -> Bundle:
    return Bundle.load(trained_bundle)


@pytest.fixture(scope="module")
def stored(trained_bundle: Path) -> pd.DataFrame:
    """The run's features/ rows (read with pyarrow, not with fruitpipe's reader): Test + every 10th Training."""
    rows = pq.read_table(run_output_of(trained_bundle) / "features").to_pandas().sort_values("path")
    training = rows[rows["split"] == "Training"].iloc[::10]
    return pd.concat([rows[rows["split"] == "Test"], training]).reset_index(drop=True)


@pytest.fixture(scope="module")
def spark_scored(spark, trained_bundle: Path, stored: pd.DataFrame) -> pd.DataFrame:
    """The batch path: the saved Spark LogisticRegressionModel on the pipeline's pca vectors, its margins scaled
    by the temperature recorded in the train manifest."""
    from pyspark.ml.functions import array_to_vector

    from fruitpipe.ml import load_logistic_regression
    from fruitpipe.recognise.train import calibrated_probability

    temperature = json.loads((trained_bundle / "manifest.json").read_text())["calibration"]["temperature"]
    model = load_logistic_regression(str(trained_bundle / "classifier"))
    frame = spark.createDataFrame(stored[["path", "pca"]]).withColumn("pca_vector", array_to_vector("pca"))
    scored = model.transform(frame).select("path", "prediction",
                                           calibrated_probability(temperature).alias("all_probabilities"))
    scored = scored.toPandas().set_index("path").loc[stored["path"]].reset_index()
    # the model was trained with the bundled outlier photos: its last class is "not a fruit"
    fruit = len(json.loads((trained_bundle / "manifest.json").read_text())["classes"])
    assert model.numClasses == fruit + 1
    everything = np.stack(scored["all_probabilities"])
    scored["probability"] = list(everything[:, :fruit])
    scored["not_fruit"] = everything[:, fruit]
    scored["fruit_prediction"] = everything[:, :fruit].argmax(axis=1)
    return scored


@pytest.fixture(scope="module")
def bundle_probabilities(bundle: Bundle, stored: pd.DataFrame) -> np.ndarray:
    """The portable path: the same image files, from their bytes."""
    return bundle.probabilities([Path(path).read_bytes() for path in stored["path"]])


def test_model_folder_contents(trained_bundle: Path) -> None:
    for name in ("metrics.json", "per_class.csv", "confusion_matrix.png", "classifier", "bundle/bundle.json",
                 "bundle/model.onnx", "bundle/classes.json", "manifest.json", "_SUCCESS"):
        assert (trained_bundle / name).exists(), name
    assert (trained_bundle / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    success = json.loads((trained_bundle / "_SUCCESS").read_text())
    assert "bundle/model.onnx" in success["files"] and "metrics.json" in success["files"]
    manifest = json.loads((trained_bundle / "manifest.json").read_text())
    assert manifest["counts"] == {"training": 18 * 40, "validation": 18 * 8, "test": 18 * 15}
    assert manifest["selection"]["chosen"] in manifest["selection"]["candidates"]


def test_metrics_agree_with_sklearn_on_the_spark_model_predictions(trained_bundle: Path, stored: pd.DataFrame,
                                                                    spark_scored: pd.DataFrame) -> None:
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

    metrics = json.loads((trained_bundle / "metrics.json").read_text())
    classes = json.loads((trained_bundle / "bundle" / "classes.json").read_text())
    test = (stored["split"] == "Test").to_numpy()
    truth = stored["label"][test].map(classes.index).to_numpy()
    predicted = spark_scored["fruit_prediction"][test].astype(int).to_numpy()  # top-1 among the fruit
    assert metrics["count"] == len(truth) == 270
    assert metrics["accuracy"] == pytest.approx(accuracy_score(truth, predicted), abs=1e-12)
    assert metrics["macro_f1"] == pytest.approx(f1_score(truth, predicted, average="macro"), abs=1e-12)
    precision, recall, f1, support = precision_recall_fscore_support(truth, predicted, labels=range(len(classes)),
                                                                     zero_division=0)
    for i, name in enumerate(classes):
        row = metrics["per_class"][name]
        assert (row["precision"], row["recall"], row["f1"], row["support"]) == pytest.approx(
            (precision[i], recall[i], f1[i], support[i]), abs=1e-12), name
    assert metrics["confusion_matrix"]["counts"] == confusion_matrix(truth, predicted).tolist()
    table = pd.read_csv(trained_bundle / "per_class.csv").set_index("class")
    assert list(table.index) == classes
    np.testing.assert_allclose(table["recall"], recall, atol=1e-4)
    assert metrics["accuracy"] >= 0.95, metrics["per_class"]


def test_bundle_matches_the_spark_batch_path(bundle: Bundle, stored: pd.DataFrame, spark_scored: pd.DataFrame,
                                             bundle_probabilities: np.ndarray) -> None:
    spark_probabilities = np.stack(spark_scored["probability"])
    assert bundle_probabilities.shape == spark_probabilities.shape == (len(stored), len(bundle.classes))
    assert np.abs(bundle_probabilities - spark_probabilities).max() <= 1e-5
    np.testing.assert_array_equal(bundle_probabilities.argmax(axis=1), spark_scored["fruit_prediction"])
    scored = bundle.scores_of_pixels([bundle.pixels(Path(path).read_bytes()) for path in stored["path"]])
    assert scored.outlier is not None
    np.testing.assert_allclose(scored.outlier, spark_scored["not_fruit"], atol=1e-5)
    np.testing.assert_allclose(bundle_probabilities.sum(axis=1) + scored.outlier, 1.0, atol=1e-12)
    # fruit photos: Spark's own prediction (all classes) is "not a fruit" for at most 1% of them, and the bundle
    # says "not a fruit" for exactly the same photos
    spark_not_fruit = (spark_scored["prediction"].astype(int) == len(bundle.classes)).to_numpy()
    assert spark_not_fruit.mean() <= 0.01, stored["path"][spark_not_fruit].tolist()
    np.testing.assert_array_equal(scored.outlier > bundle_probabilities.max(axis=1), spark_not_fruit)


def test_predict_bytes_top_k(bundle: Bundle, stored: pd.DataFrame, bundle_probabilities: np.ndarray) -> None:
    first = stored.iloc[0]
    predictions = bundle.predict_bytes(Path(first["path"]).read_bytes(), top_k=3)
    assert len(predictions) == 3 and predictions[0].label == first["label"]
    assert [p.probability for p in predictions] == sorted((p.probability for p in predictions), reverse=True)
    assert predictions[0].probability == pytest.approx(bundle_probabilities[0].max(), abs=1e-12)
    assert len(bundle.predict_bytes(Path(first["path"]).read_bytes(), top_k=100)) == len(bundle.classes)
    with pytest.raises(ValueError, match="top_k"):
        bundle.predict_bytes(Path(first["path"]).read_bytes(), top_k=0)


def test_describe_fingerprints_the_source_run(bundle: Bundle, trained_bundle: Path) -> None:
    run_manifest = run_output_of(trained_bundle) / "manifest.json"
    described = bundle.describe()
    assert described["model"] == "efficientnet-lite0" and described["weights_sha256"] == LITE0_SHA256
    assert described["source"]["run_id"] == json.loads(run_manifest.read_text())["run_id"]
    assert described["source"]["manifest_sha256"] == hashlib.sha256(run_manifest.read_bytes()).hexdigest()
    assert described["k"] == json.loads(run_manifest.read_text())["pca"]["k"]
    assert described["classes"] == bundle.classes == sorted(json.loads(run_manifest.read_text())["classes"])
    assert described["onnx_sha256"] == hashlib.sha256((trained_bundle / "bundle/model.onnx").read_bytes()).hexdigest()
    assert described["created"]


# ---------------------------------------------------------------- photos as users take them

def _photo(sample_dir: Path, label: str) -> Image.Image:
    return Image.open(sorted((sample_dir / "Test" / label).glob("*.jpg"))[0]).convert("RGB")


def test_exif_rotated_copy_predicts_like_the_upright_photo(bundle: Bundle, sample_dir: Path) -> None:
    upright = _photo(sample_dir, "Banana")
    rotated = upright.transpose(Image.Transpose.ROTATE_90)  # as a camera stores a portrait shot
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6  # "rotate 90 degrees clockwise to display"
    tagged = encode(rotated, "PNG", exif=exif.tobytes())
    upright_p, tagged_p, untagged_p = bundle.probabilities([encode(upright, "PNG"), tagged, encode(rotated, "PNG")])
    np.testing.assert_allclose(tagged_p, upright_p, atol=1e-12)
    # the rotation matters: without EXIF it is another picture (log-probabilities: the top one saturates near 1)
    assert np.abs(np.log(untagged_p) - np.log(upright_p)).max() > 1e-2
    jpeg_tagged = encode(rotated, "JPEG", quality=95, exif=exif.tobytes())
    assert bundle.predict_bytes(jpeg_tagged, 1)[0].label == "Banana"


def test_png_with_transparency_predicts_like_the_opaque_photo(bundle: Bundle, sample_dir: Path) -> None:
    opaque = np.asarray(_photo(sample_dir, "Strawberry"))
    white = (opaque == 255).all(axis=2)
    rgba = np.dstack([np.where(white[..., None], 0, opaque), np.where(white, 0, 255)]).astype(np.uint8)
    assert white.any()
    both = bundle.probabilities([encode(Image.fromarray(opaque), "PNG"), encode(Image.fromarray(rgba, "RGBA"), "PNG")])
    np.testing.assert_allclose(both[1], both[0], atol=1e-12)
    assert bundle.classes[int(both[0].argmax())] == "Strawberry"


def test_grayscale_photo_is_read_as_grey_rgb(bundle: Bundle, sample_dir: Path) -> None:
    grey = _photo(sample_dir, "Lemon").convert("L")
    as_rgb = Image.merge("RGB", (grey, grey, grey))
    images = [encode(grey, "PNG"), encode(as_rgb, "PNG"), encode(grey, "JPEG")]
    scored = bundle.scores_of_pixels([bundle.pixels(image) for image in images])
    probabilities = scored.probabilities
    np.testing.assert_allclose(probabilities[0], probabilities[1], atol=1e-12)
    assert scored.outlier is not None  # fruit and "not a fruit" share the probability
    np.testing.assert_allclose(probabilities.sum(axis=1) + scored.outlier, 1.0, atol=1e-12)


def test_large_photo_is_resized_like_the_pipeline(bundle: Bundle, sample_dir: Path) -> None:
    for label in ("Pineapple", "Eggplant", "Cherry"):
        large = _photo(sample_dir, label).resize((3000, 2000), Image.Resampling.BICUBIC)
        predictions = bundle.predict_bytes(encode(large, "JPEG", quality=90), top_k=2)
        assert predictions[0].label == label, predictions


def test_bad_photos_get_a_clear_reason(bundle: Bundle) -> None:
    bundle_limits = bundle.limits
    bundle.limits = DecodeLimits(BAD_MAX_BYTES, BAD_MAX_PIXELS)  # the limits the bad files are designed against
    try:
        reasons = {}
        for name, (content, _) in bad_image_bytes(BAD_MAX_BYTES).items():
            with pytest.raises(DecodeError) as caught:
                bundle.predict_bytes(content)
            reasons[name] = str(caught.value)
    finally:
        bundle.limits = bundle_limits
    assert "empty" in reasons["empty.jpg"] and "not an image" in reasons["text.jpg"]
    assert "truncated" in reasons["truncated.jpg"] and "too large" in reasons["oversized.jpg"]
    assert "bomb" in reasons["bomb_header.png"] and "bomb" in reasons["too_many_pixels.png"]
    with pytest.raises(DecodeError, match="not an image"):
        bundle.probabilities([b"GIF89a? no"])


# ---------------------------------------------------------------- loading refuses broken bundles

@pytest.fixture()
def bundle_copy(trained_bundle: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(trained_bundle / "bundle", tmp_path / "bundle"))


def test_load_refuses_missing_and_broken_bundles(bundle_copy: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not found"):
        Bundle.load(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no fruitpipe bundle"):
        Bundle.load(tmp_path / "empty")
    assert Bundle.load(tmp_path).folder == bundle_copy  # MODEL_DIR or MODEL_DIR/bundle
    arrays = bundle_copy / "arrays.npz"
    original = arrays.read_bytes()
    arrays.write_bytes(original[:-10] + bytes(10))
    with pytest.raises(ValueError, match=r"arrays\.npz does not match"):
        Bundle.load(bundle_copy)
    arrays.write_bytes(original)
    Bundle.load(bundle_copy)
    (bundle_copy / "model.onnx").unlink()
    with pytest.raises(FileNotFoundError, match=r"model\.onnx is missing"):
        Bundle.load(bundle_copy)


def test_bundle_keeps_the_runs_precision_and_refuses_one_this_machine_cannot_run(
        bundle: Bundle, bundle_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Features of two precisions never mix: the bundle embeds photos with the precision its run used."""
    assert bundle.runtime.precision == "fp32" and bundle.describe()["precision"] == "fp32"
    description = bundle_copy / "bundle.json"
    document = json.loads(description.read_text())
    description.write_text(json.dumps({**document, "model": {**document["model"], "precision": "bf16"}}))
    monkeypatch.setattr(runtime, "cpu_flags", lambda: frozenset({"avx2"}))
    with pytest.raises(ValueError, match="made with bf16 features and must be used with them"):
        Bundle.load(bundle_copy)
    monkeypatch.setattr(runtime, "cpu_flags", lambda: frozenset({"amx_bf16"}))
    monkeypatch.setattr(runtime, "engine_installed", lambda engine: True)
    assert Bundle.load(bundle_copy).runtime == runtime.Runtime.for_precision("bf16")


def test_load_refuses_unreadable_descriptions(bundle_copy: Path) -> None:
    description = bundle_copy / "bundle.json"
    document = json.loads(description.read_text())
    description.write_text(json.dumps({**document, "format_version": 99}))
    with pytest.raises(ValueError, match="format version 99"):
        Bundle.load(bundle_copy)
    description.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        Bundle.load(bundle_copy)


def test_bundle_json_is_versioned_and_an_old_one_still_loads(bundle: Bundle, bundle_copy: Path) -> None:
    """bundle.json written now says schema_version 2; one from before (no schema_version) loads the same;
    a newer one is refused in one line."""
    description = bundle_copy / "bundle.json"
    document = json.loads(description.read_text())
    assert document["schema_version"] == 2 and document["format_version"] == 1
    old = {key: value for key, value in document.items() if key != "schema_version"}
    description.write_text(json.dumps(old, indent=2))
    loaded = Bundle.load(bundle_copy)
    assert loaded.description.schema_version == 1
    assert {**loaded.describe(), "path": ""} == {**bundle.describe(), "path": ""}
    description.write_text(json.dumps({**document, "schema_version": 3}))
    with pytest.raises(ValueError, match=r"bundle.json has schema_version 3; this fruitpipe reads up to 2: upgrade"):
        Bundle.load(bundle_copy)


def test_train_manifest_is_versioned(trained_bundle: Path) -> None:
    from fruitpipe.recognise.contracts import TrainManifest

    written = json.loads((trained_bundle / "manifest.json").read_text())
    manifest = TrainManifest.loads((trained_bundle / "manifest.json").read_bytes(), "manifest.json")
    assert written["schema_version"] == manifest.schema_version == 2 and manifest.to_json() == written
    assert manifest.selection.chosen == manifest.classifier.name


# ---------------------------------------------------------------- the command line

def test_predict_cli_runs_without_spark(trained_bundle: Path, sample_dir: Path) -> None:
    """In process and Spark-free: pyspark is never even imported."""
    photo = sorted((sample_dir / "Test" / "Kiwi").glob("*.jpg"))[0]
    script = ("import sys, json\nfrom fruitpipe.cli import main\n"
              f"code = main(['predict', '--model', {str(trained_bundle)!r}, {str(photo)!r}, '--top-k', '2'])\n"
              "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('pyspark', 'py4j', 'torch'))))\n"
              "sys.exit(code)\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert json.loads(lines[-1]) == []
    assert lines[0] == str(photo) and lines[1].endswith("Kiwi") and len(lines) == 4


def test_predict_cli_reports_bad_photos_and_classifies_the_rest(trained_bundle: Path, sample_dir: Path,
                                                                 tmp_path: Path) -> None:
    good = sorted((sample_dir / "Test" / "Mango").glob("*.jpg"))[:2]
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "notes.png").write_text("not a picture")
    photos = [str(good[0]), str(tmp_path / "empty.jpg"), str(tmp_path / "missing.jpg"), str(tmp_path / "notes.png"),
              str(good[1])]
    result = fruitpipe("predict", "--model", str(trained_bundle), *photos, "--json")
    assert result.returncode == 1
    outcome = json.loads(result.stdout)
    assert [item["photo"] for item in outcome] == photos
    assert outcome[0]["predictions"][0]["label"] == outcome[4]["predictions"][0]["label"] == "Mango"
    assert len(outcome[0]["predictions"]) == 5
    assert "empty" in outcome[1]["error"] and "No such file" in outcome[2]["error"]
    assert "not an image" in outcome[3]["error"]
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 4 and "3 of 5 photos" in errors[-1] and "Traceback" not in result.stderr


def test_predict_cli_missing_model_is_one_line(tmp_path: Path) -> None:
    result = fruitpipe("predict", "--model", str(tmp_path / "nothing"), str(tmp_path / "x.jpg"))
    assert result.returncode == 1
    expected = f"fruitpipe predict: error: model folder not found: {tmp_path / 'nothing'}"
    assert result.stderr.strip().splitlines() == [expected]


def test_train_cli_refuses_what_it_cannot_use(trained_bundle: Path, tmp_path: Path) -> None:
    run = run_output_of(trained_bundle)
    for args, message in (
        (["--features", str(tmp_path / "photos"), "--output", str(tmp_path / "m")], "not a fruitpipe run output"),
        (["--features", str(run), "--output", str(trained_bundle)], "already exists"),
        (["--features", str(run), "--output", str(run / "model"), "--overwrite"], "overlaps the run output"),
        (["--features", str(run), "--output", str(run), "--overwrite"], "overlaps the run output"),
        (["--features", str(run), "--output", str(tmp_path / "m"), "--classifier", "svm"],
         "unknown --classifier 'svm'; choose one of lr-l2-0.01-standardised"),
    ):
        result = fruitpipe("train", *args)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 1 and len(lines) == 1 and message in lines[0], (args, result.stderr)
    assert (run / "_SUCCESS").exists() and (trained_bundle / "_SUCCESS").exists()


def test_train_refuses_a_run_made_with_another_onnx_graph(trained_bundle: Path, tmp_path: Path) -> None:
    """The bundle must carry the graph the run's executors ran: a run recorded with another export is refused."""
    run = tmp_path / "run"
    shutil.copytree(run_output_of(trained_bundle), run)
    manifest = json.loads((run / "manifest.json").read_text())
    assert len(manifest["model"]["onnx_sha256"]) == 64
    manifest["model"]["onnx_sha256"] = "0" * 64
    (run / "manifest.json").write_text(json.dumps(manifest))
    result = fruitpipe("train", "--features", str(run), "--output", str(tmp_path / "model"))
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1, result.stderr
    assert "differs from this fruitpipe's export" in lines[0], result.stderr
    assert not (tmp_path / "model").exists()


def test_train_cli_on_a_small_run(spark, small_sample: Path, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    """The command as a user types it (in process, reusing the test session): summary, files, metrics."""
    from fruitpipe.batch import pipeline
    from fruitpipe.cli import main
    from fruitpipe.config import PcaSettings, RunConfig

    run, model = tmp_path / "run", tmp_path / "model"
    pipeline.run(RunConfig(input=str(small_sample), output=str(run), pca=PcaSettings(k=8)))
    assert main(["train", "--features", str(run), "--output", str(model), "--master", "local[2]", "--tta", "2",
                 "--outliers", "none", "--classifier", "lr-l2-0.1-standardised"]) == 0
    out = capsys.readouterr().out
    metrics = json.loads((model / "metrics.json").read_text())
    assert f"accuracy {metrics['accuracy']:.2%}" in out and f"{model}/bundle" in out
    assert metrics["count"] == 8
    assert set(metrics["per_class"]) == {p.name for p in (small_sample / "Training").iterdir()}
    assert Bundle.load(model).describe()["k"] == 8
    assert json.loads((model / "bundle" / "bundle.json").read_text())["tta"] == Bundle.load(model).tta == 2
    manifest = json.loads((model / "manifest.json").read_text())  # the named classifier, no choice made
    assert manifest["classifier"]["name"] == manifest["selection"]["chosen"] == "lr-l2-0.1-standardised"
    assert list(manifest["selection"]["candidates"]) == ["lr-l2-0.1-standardised"]
    assert manifest["classifier"]["regParam"] == 0.1


def test_train_reads_and_writes_s3(spark, s3_endpoint: str, trained_bundle: Path, tmp_path: Path) -> None:
    """A run output in S3 in, MODEL_DIR in S3 out: the same model as from local files."""
    from fruitpipe.config import S3Options, TrainConfig
    from fruitpipe.devtools.s3server import client, download_prefix, upload_folder
    from fruitpipe.recognise import train

    upload_folder(s3_endpoint, run_output_of(trained_bundle), "train-runs", "runs/sample")
    client(s3_endpoint).create_bucket(Bucket="train-models")
    manifest = train.train(TrainConfig(features="s3://train-runs/runs/sample", output="s3://train-models/m1",
                                       s3=S3Options(endpoint_url=s3_endpoint)))
    keys = download_prefix(s3_endpoint, "train-models", "m1", tmp_path)
    assert json.loads((tmp_path / "_SUCCESS").read_text())["files"] == [key for key in keys if key != "_SUCCESS"]
    local = json.loads((trained_bundle / "metrics.json").read_text())
    assert json.loads((tmp_path / "metrics.json").read_text())["confusion_matrix"] == local["confusion_matrix"]
    assert manifest.source.run_output == "s3://train-runs/runs/sample"
    remote_bundle, local_bundle = Bundle.load(tmp_path), Bundle.load(trained_bundle)
    assert remote_bundle.describe()["source"]["manifest_sha256"] == local_bundle.describe()["source"]["manifest_sha256"]
    features = np.stack(pq.read_table(run_output_of(trained_bundle) / "features").to_pandas()["features"])
    np.testing.assert_allclose(remote_bundle.classify(features), local_bundle.classify(features), atol=1e-4)


def test_metrics_from_confusion_match_sklearn_with_absent_classes() -> None:
    from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

    rng = np.random.default_rng(3)
    truth = rng.integers(0, 5, 200)  # classes 5 and 6 never occur; 6 is sometimes predicted
    predicted = np.where(rng.random(200) < 0.7, truth, rng.integers(0, 7, 200))
    counts = np.zeros((7, 7), dtype=np.int64)
    np.add.at(counts, (truth, predicted), 1)
    metrics = metrics_from_confusion(counts, [f"c{i}" for i in range(7)])
    assert metrics["accuracy"] == pytest.approx(accuracy_score(truth, predicted))
    assert metrics["macro_f1"] == pytest.approx(f1_score(truth, predicted, average="macro", zero_division=0))
    precision, recall, _, support = precision_recall_fscore_support(truth, predicted, labels=range(7), zero_division=0)
    assert [metrics["per_class"][f"c{i}"]["precision"] for i in range(7)] == pytest.approx(precision)
    assert [metrics["per_class"][f"c{i}"]["recall"] for i in range(7)] == pytest.approx(recall)
    assert [metrics["per_class"][f"c{i}"]["support"] for i in range(7)] == list(support)


def test_candidate_fits_run_concurrently_in_order_and_carry_the_callers_job_tags(spark) -> None:
    """train's candidate fits and drift's classifier fits go through sparkapi.concurrently: two items in
    flight at once (a barrier only two threads open), results in the items' order, and every job the
    threads start carries the caller's tag (cost accounting counts a run's jobs by it)."""
    import threading

    from fruitpipe import sparkapi

    assert sparkapi.FIT_THREADS >= 2
    both_running = threading.Barrier(2, timeout=60)
    tag = "fruitpipe-test-concurrently"

    def count(rows: int) -> tuple[int, bool]:
        both_running.wait()  # BrokenBarrierError after 60 s if the items ran one after the other
        return spark.range(rows).count(), tag in spark.sparkContext.getJobTags()

    with sparkapi.tagged_jobs(spark, tag):
        results = sparkapi.concurrently(spark, count, [7, 3])
    assert results == [(7, True), (3, True)]
    assert sparkapi.task_cpu_seconds(spark, tag) > 0  # the status store found jobs with the tag


def test_an_interrupt_cancels_the_jobs_the_threads_run_or_start(spark) -> None:
    """Ctrl-C while `concurrently` runs (simulated: `_thread.interrupt_main`, which, like a signal that hits
    another thread, wakes no blocking wait): KeyboardInterrupt reaches the caller, and every job of the
    threads is cancelled, the one running then and the one a thread starts after the interrupt (a fit goes
    on to its next job); none runs its minute of sleep."""
    import _thread
    import threading
    import time as clock

    from fruitpipe import sparkapi

    running = threading.Barrier(3, timeout=60)  # both items about to start their first job, and the interrupter
    ended: list[str] = []

    def sleeping_job() -> str:
        try:
            spark.sparkContext.parallelize([0], 1).map(lambda _: clock.sleep(60)).count()
            return "finished"
        except Exception as error:  # py4j's error for a cancelled job
            return "cancelled" if "cancel" in str(error).lower() else f"other: {error}"

    def work(item: int) -> int:
        running.wait()
        ended.append(sleeping_job())
        ended.append(sleeping_job())  # started after the interrupt: cancelled too
        return item

    def interrupt() -> None:
        running.wait()
        clock.sleep(1.0)
        _thread.interrupt_main()

    threading.Thread(target=interrupt, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        sparkapi.concurrently(spark, work, [1, 2])
    assert ended == ["cancelled"] * 4
