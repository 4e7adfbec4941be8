"""The typed contracts between stages: run manifest, _SUCCESS, train manifest, bundle.json.

tests/data/schema1/ holds files exactly as fruitpipe wrote them before schema_version existed (a real
`fruitpipe run` + `fruitpipe train` on 12 sample images; only the spectrum is shortened and the paths
made neutral): they must keep loading. Values written now carry schema_version 2 and read back equal;
a newer version is refused in one line, through the CLI too.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from fruitpipe.batch.manifest import SCHEMA_VERSION, Fields, ModelEntry, RunCounts, RunManifest, SuccessMarker, parse
from fruitpipe.config import DecodeLimits
from fruitpipe.image.models import LITE0_SHA256, Preprocessing
from fruitpipe.recognise.contracts import BundleDescription, TrainManifest
from helpers import fruitpipe_cli

SCHEMA1 = Path(__file__).parent / "data" / "schema1"
RUN, MODEL = SCHEMA1 / "run", SCHEMA1 / "model"


def document(path: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return loaded


def through_json(value: dict[str, Any]) -> dict[str, Any]:
    """What a reader gets back from the file a writer wrote (sinks.write_json's encoding)."""
    return document_of(json.dumps(value, indent=2, ensure_ascii=False))


def document_of(text: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(text)
    return loaded


def test_schema_1_run_manifest_loads_with_every_value() -> None:
    old = document(RUN / "manifest.json")
    assert "schema_version" not in old
    manifest = RunManifest.loads((RUN / "manifest.json").read_bytes(), "manifest.json of run")
    assert manifest.schema_version == 1
    assert manifest.counts == RunCounts(listed=12, ok=12, rejected=0)
    assert manifest.classes == ("Kiwi", "Lemon") and manifest.layout == "fruits360"
    assert manifest.model.name == "efficientnet-lite0" and manifest.model.weights_sha256 == LITE0_SHA256
    assert manifest.model.preprocessing == Preprocessing(224, "bilinear", (127 / 255,) * 3, (128 / 255,) * 3)
    assert manifest.model.recorded_runtime("run").precision == "fp32"
    assert manifest.pca.k == 2 and manifest.pca.variance_target is None
    assert manifest.timings_s.total == 33.375 and manifest.timings_s.stages["featurize"] == 9.328
    assert manifest.spark.executors[0].id == "driver" and manifest.spark.partitions == 2
    assert manifest.to_json() == {"schema_version": 1, **old}  # nothing dropped, nothing renamed


def test_run_manifest_round_trip_at_the_current_version() -> None:
    old = RunManifest.loads((RUN / "manifest.json").read_bytes(), "manifest.json of run")
    current = replace(old, schema_version=SCHEMA_VERSION)
    written = through_json(current.to_json())
    assert written["schema_version"] == SCHEMA_VERSION == 2
    assert RunManifest.from_json(Fields(written, "manifest.json")) == current
    assert list(written) == ["schema_version", *document(RUN / "manifest.json")]  # key order as before


def test_older_run_manifests_without_later_fields_load() -> None:
    """Fields added after the first release (precision, infer_batch, onnx_sha256, onnx_input,
    application_id) are optional: train read them with .get before and still does."""
    old = document(RUN / "manifest.json")
    for key in ("precision", "infer_batch", "onnx_sha256", "onnx_input"):
        del old["model"][key]
    del old["spark"]["application_id"]
    manifest = RunManifest.from_json(Fields(old, "manifest.json"))
    assert manifest.model.precision is None and manifest.model.onnx_sha256 is None
    assert manifest.model.recorded_runtime("run").precision == "fp32"
    assert manifest.to_json() == {"schema_version": 1, **old}


@pytest.mark.parametrize("contract, path", [
    (RunManifest, RUN / "manifest.json"), (SuccessMarker, RUN / "_SUCCESS"),
    (TrainManifest, MODEL / "manifest.json"), (BundleDescription, MODEL / "bundle" / "bundle.json"),
])
def test_a_newer_schema_is_refused_in_one_line(contract: Any, path: Path) -> None:
    newer = {**document(path), "schema_version": 3}
    with pytest.raises(ValueError) as caught:
        contract.from_json(Fields(newer, f"{path.name} of somewhere"))
    assert str(caught.value) == (f"{path.name} of somewhere has schema_version 3; this fruitpipe reads up to 2: "
                                 "upgrade fruitpipe")


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["counts"].pop("ok"), "manifest.json of r: counts.ok is missing"),
    (lambda d: d.update(run_id=7), "manifest.json of r: run_id should be a string, got int"),
    (lambda d: d["spark"]["executors"][0].update(active="yes"),
     "manifest.json of r: spark.executors[0].active should be true or false, got str"),
    (lambda d: d["model"]["preprocessing"].pop("mean"),
     "manifest.json of r: model.preprocessing: invalid preprocessing"),
    (lambda d: d.update(counts=[]), "manifest.json of r: counts is not a JSON object"),
])
def test_a_malformed_manifest_is_one_line_naming_the_file_and_key(edit: Any, message: str) -> None:
    broken = document(RUN / "manifest.json")
    edit(broken)
    with pytest.raises(ValueError) as caught:
        RunManifest.from_json(Fields(broken, "manifest.json of r"))
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)
    with pytest.raises(ValueError, match=r"manifest\.json of r is not valid JSON"):
        RunManifest.loads(b"{not json", "manifest.json of r")
    with pytest.raises(ValueError, match=r"manifest\.json of r: the document is not a JSON object"):
        parse(b"[]", "manifest.json of r")


def test_success_marker_schema_1_and_round_trip() -> None:
    old = SuccessMarker.loads((RUN / "_SUCCESS").read_bytes(), "_SUCCESS of run")
    assert old.schema_version == 1 and "manifest.json" in old.files
    assert old.counts == {"listed": 12, "ok": 12, "rejected": 0}
    train = SuccessMarker.loads((MODEL / "_SUCCESS").read_bytes(), "_SUCCESS of model")
    assert train.counts == {"training": 6, "validation": 2, "test": 6}
    current = SuccessMarker(old.files, old.counts)
    assert current.to_json()["schema_version"] == 2
    assert SuccessMarker.from_json(Fields(through_json(current.to_json()), "_SUCCESS")) == current


def test_train_manifest_schema_1_and_round_trip() -> None:
    old_document = document(MODEL / "manifest.json")
    old = TrainManifest.loads((MODEL / "manifest.json").read_bytes(), "manifest.json of model")
    assert old.schema_version == 1 and old.source.run_id == "20261202T091452Z-de420e53"
    assert old.classifier.name == old.selection.chosen == "lr-l2-0.01-raw" and old.classifier.reg_param == 0.01
    candidates = old.selection.candidates
    assert candidates["lr-l2-0.01-raw"].log_loss < candidates["lr-l2-0.1-standardised"].log_loss
    assert old.counts.validation == 2 and old.metrics.accuracy == 1.0 and old.timings_s.stages["select"] == 19.349
    assert old.to_json() == {"schema_version": 1, **old_document}
    current = replace(old, schema_version=SCHEMA_VERSION)
    assert TrainManifest.from_json(Fields(through_json(current.to_json()), "manifest.json")) == current
    with pytest.raises(ValueError, match="is not a fruitpipe-train manifest"):
        TrainManifest.from_json(Fields({**old_document, "kind": "something-else"}, "manifest.json"))


def test_bundle_description_schema_1_and_round_trip() -> None:
    old_document = document(MODEL / "bundle" / "bundle.json")
    old = BundleDescription.loads((MODEL / "bundle" / "bundle.json").read_bytes(), "bundle.json")
    assert old.schema_version == 1 and old.model.runtime is None and old.model.onnx_sha256 is None
    assert old.limits == DecodeLimits() and old.pca is not None and old.pca.k == 2
    assert old.classifier.spark_model is None and old.files["model.onnx"] == old_document["files"]["model.onnx"]
    assert old.to_json() == {**old_document, "schema_version": 1}
    current = replace(old, schema_version=SCHEMA_VERSION)
    assert BundleDescription.from_json(Fields(through_json(current.to_json()), "bundle.json")) == current
    without_optional = {key: value for key, value in old_document.items() if key not in ("pca", "metrics")}
    loaded = BundleDescription.from_json(Fields(without_optional, "bundle.json"))
    assert loaded.pca is None and loaded.metrics is None
    with pytest.raises(ValueError, match="format version 99"):
        BundleDescription.from_json(Fields({**old_document, "format_version": 99}, "bundle.json"))


def test_model_entry_is_the_same_record_in_all_three_contracts() -> None:
    run = RunManifest.loads((RUN / "manifest.json").read_bytes(), "run")
    train = TrainManifest.loads((MODEL / "manifest.json").read_bytes(), "train")
    bundle = BundleDescription.loads((MODEL / "bundle" / "bundle.json").read_bytes(), "bundle")
    assert train.model == replace(run.model, onnx_sha256=None)
    assert bundle.model == replace(train.model, runtime=None)
    assert isinstance(run.model, ModelEntry)


def test_preprocessing_is_parsed_in_one_place_with_its_defaults() -> None:
    declared = {"input_size": 160, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
    assert Preprocessing.from_json(declared, "x") == Preprocessing(160, "bilinear", (0.5,) * 3, (0.25,) * 3, "NCHW")
    for bad in ({**declared, "mean": [0.5]}, {**declared, "input_size": "big"}, [], None):
        with pytest.raises(ValueError, match=r"^sidecar\.json: invalid preprocessing"):
            Preprocessing.from_json(bad, "sidecar.json")


def test_train_refuses_a_run_with_a_newer_manifest_in_one_line(tmp_path: Path) -> None:
    run = Path(shutil.copytree(RUN, tmp_path / "run"))
    manifest = run / "manifest.json"
    manifest.write_text(json.dumps({**document(manifest), "schema_version": 99}), encoding="utf-8")
    result = fruitpipe_cli("train", "--features", str(run), "--output", str(tmp_path / "model"))
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"fruitpipe train: error: manifest.json of {run} has schema_version 99; this fruitpipe reads up to 2: "
        "upgrade fruitpipe"]
    assert not (tmp_path / "model").exists()


def test_run_manifest_augment_fields_round_trip() -> None:
    """`augment` and counts.`views` (run --augment) are optional: written when known, read back, absent before."""
    old = RunManifest.loads((RUN / "manifest.json").read_bytes(), "manifest.json of run")
    assert old.augment is None and old.counts.views is None
    current = replace(old, augment=2, counts=RunCounts(listed=12, ok=12, rejected=0, views=16))
    written = through_json(current.to_json())
    assert written["augment"] == 2 and written["counts"]["views"] == 16
    assert RunManifest.from_json(Fields(written, "manifest.json")) == current


def test_novelty_without_centroids_per_kind_loads_as_one_per_class() -> None:
    """A gate written before the centroids per kind keeps loading (one centroid per class) and writes back
    without the new keys; a current one round-trips with its centroid count and photo share."""
    from fruitpipe.recognise.contracts import Novelty

    older = {"threshold": 0.4, "quantile": 0.99, "validation_rows": 50, "validation_flagged": 0.0,
             "centroid_rows": 200, "score": "1 - max cosine similarity to a class centroid"}
    loaded = Novelty.from_json(Fields(older, "bundle.json"))
    assert loaded.centroids is None and loaded.validation_photos_flagged is None
    assert not {"centroids", "validation_photos_flagged"} & set(loaded.to_json())
    current = replace(loaded, centroids=36, validation_photos_flagged=0.007)
    assert Novelty.from_json(Fields(current.to_json(), "bundle.json")) == current
