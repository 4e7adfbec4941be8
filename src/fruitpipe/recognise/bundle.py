"""The portable recogniser: photo bytes -> class probabilities with numpy and ONNX Runtime, no Spark.

A bundle is a folder written by `fruitpipe train` (MODEL_DIR/bundle/): the CNN as ONNX, its
preprocessing and decode limits, the PCA centring mean and components, the multinomial logistic
regression coefficients, the class list and fingerprints of the run it came from. Every file's
sha256 is recorded and checked on load, so a half-copied or edited bundle is refused rather than
silently predicting something else. Inference reuses the pipeline's own decode/resize/embed
functions, so a photo goes through exactly what the training images went through.

With test-time augmentation (`tta` N > 1) a photo's probabilities are the mean of the calibrated
probabilities of N views: the photo and N - 1 fixed views made with the mild training-side family
`geometry` (rotation, mirror, small zoom; never an evaluation-side family), the same for every photo.
"""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from fruitpipe.config import check_tta
from fruitpipe.image.decode import decode_for_model
from fruitpipe.image.embed import embed
from fruitpipe.image.shifts import augmented_view
from fruitpipe.recognise import calibration, novelty
from fruitpipe.recognise.contracts import BundleDescription
from fruitpipe.storage import Store, file_sha256

logger = logging.getLogger(__name__)

BUNDLE_DIR, DESCRIPTION = "bundle", "bundle.json"
ONNX_FILE, ARRAYS_FILE, CLASSES_FILE = "model.onnx", "arrays.npz", "classes.json"
ARRAY_NAMES = ("mean", "components", "coefficients", "intercepts")
CENTROIDS = "centroids"  # optional in arrays.npz: the novelty gate's class centroids
# why an answer is unknown
LOW_CONFIDENCE, UNLIKE_TRAINING, NOT_FRUIT = "low confidence", "unlike the training photos", "not a fruit"
BATCH_SIZE = 32  # photos per ONNX Runtime call (with their test-time views): bounds memory for long lists
TTA_KEY = "tta"  # one key for every photo: view v is the same transformation whatever the photo
TTA_FAMILIES = ("geometry",)  # mild and label-preserving for a fruit; training-side (augmented_view checks)


@dataclass(frozen=True)
class Prediction:
    label: str
    probability: float


@dataclass(frozen=True)
class Answer:
    """One photo's top guesses (calibrated probabilities, most probable first) and whether the recogniser
    is not sure, and why: the "not fruit" class of its outlier photos is at least as probable as any fruit
    (NOT_FRUIT), its highest probability is below the threshold in use (LOW_CONFIDENCE), or the photo is
    unlike every class it was trained on (UNLIKE_TRAINING, the novelty gate); `reason` is None when it is
    sure."""

    predictions: tuple[Prediction, ...]
    reason: str | None = None
    not_fruit: float | None = None  # the calibrated probability of "not a fruit" (None: no such class)

    @property
    def unknown(self) -> bool:
        return self.reason is not None

    def to_dict(self) -> dict[str, Any]:
        document: dict[str, Any] = {"unknown": self.unknown, "predictions": [asdict(p) for p in self.predictions]}
        if self.reason:
            document["unknown_reason"] = self.reason
        return document if self.not_fruit is None else {**document, "not_fruit": self.not_fruit}


@dataclass(frozen=True)
class Scored:
    """Rows of calibrated fruit probabilities and, when the bundle has the novelty gate, each row's novelty;
    when it was trained with outlier photos, each row's calibrated probability of "not a fruit" (the fruit
    probabilities then sum to 1 minus it)."""

    probabilities: np.ndarray  # (n, n_classes)
    novelty: np.ndarray | None  # (n,) or None
    outlier: np.ndarray | None = None  # (n,) or None


@dataclass(frozen=True)
class Arrays:
    """The numeric part of a bundle: centring, projection and classifier."""

    mean: np.ndarray  # (d,)
    components: np.ndarray  # (d, k)
    coefficients: np.ndarray  # (n_classes, k), (n_classes + 1, k) with the "not a fruit" class last
    intercepts: np.ndarray  # (n_classes,) or (n_classes + 1,)
    centroids: np.ndarray | None = None  # (Novelty.centroids, k): the novelty gate's unit centroids

    def check(self, feature_dim: int, classes: int, outlier_class: bool = False, centroids: int | None = None) -> None:
        """Shapes and finiteness; `centroids`: the gate's centroid rows (None: one per class)."""
        k = self.components.shape[-1] if self.components.ndim == 2 else 0
        rows = classes + int(outlier_class)
        expected = {"mean": (feature_dim,), "components": (feature_dim, k), "coefficients": (rows, k),
                    "intercepts": (rows,),
                    **({CENTROIDS: (centroids or classes, k)} if self.centroids is not None else {})}
        for name, shape in expected.items():
            actual = getattr(self, name).shape
            if k < 1 or actual != shape:
                raise ValueError(f"bundle array {name} has shape {actual}, expected {shape}")
            if not np.all(np.isfinite(getattr(self, name))):
                raise ValueError(f"bundle array {name} holds non-finite values")


def write(folder: str | Path, onnx_file: str | Path, description: BundleDescription, arrays: Arrays) -> None:
    """Write a bundle into a local folder; `description` gets the file checksums added."""
    import shutil

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(onnx_file, folder / ONNX_FILE)
    names = (*ARRAY_NAMES, CENTROIDS) if arrays.centroids is not None else ARRAY_NAMES
    np.savez(folder / ARRAYS_FILE, allow_pickle=False, **{name: np.asarray(getattr(arrays, name), dtype=np.float64)
                                                          for name in names})
    (folder / CLASSES_FILE).write_text(json.dumps(list(description.classes), ensure_ascii=False, indent=1) + "\n",
                                       encoding="utf-8")
    files = {name: file_sha256(folder / name) for name in (ONNX_FILE, ARRAYS_FILE, CLASSES_FILE)}
    document = replace(description, files=files).to_json()
    (folder / DESCRIPTION).write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


class Bundle:
    """A loaded bundle; thread-safe for prediction (ONNX Runtime sessions are)."""

    def __init__(self, folder: Path, description: BundleDescription, arrays: Arrays, threads: int,
                 threshold: float | None = None, tta: int | None = None,
                 novelty_threshold: float | None = None, not_fruit: bool = True) -> None:
        self.folder = folder
        self.description = description
        self.arrays = arrays
        self.classes: list[str] = list(description.classes)
        self.preprocessing = description.model.preprocessing
        self.limits = description.limits
        self.runtime = description.model.recorded_runtime(f"bundle {folder}")
        self.threads = threads
        self.onnx_path = str(folder / ONNX_FILE)
        calibrated = description.calibration
        self.temperature = calibrated.temperature if calibrated else 1.0
        self.threshold = check_threshold(threshold) if threshold is not None else (
            calibrated.threshold if calibrated else None)
        self.tta = check_tta(tta if tta is not None else description.tta or 1)
        if (description.novelty is None) != (arrays.centroids is None):
            raise ValueError("bundle.json's novelty and arrays.npz's centroids must come together")
        if novelty_threshold is not None and description.novelty is None:
            raise ValueError("this bundle has no novelty gate (trained before it existed, or without a validation "
                             "part): drop --novelty-threshold, or train the model again")
        self.novelty_threshold = check_novelty_threshold(novelty_threshold) if novelty_threshold is not None else (
            description.novelty.threshold if description.novelty else None)
        # the "not a fruit" rule in force: a bundle trained with outlier photos, unless turned off (--not-fruit off)
        self.not_fruit = not_fruit and description.outliers is not None

    @classmethod
    def load(cls, path: str | Path, threads: int | None = None, threshold: float | None = None,
             tta: int | None = None, novelty_threshold: float | None = None, not_fruit: bool = True) -> Bundle:
        """Load MODEL_DIR (or MODEL_DIR/bundle), checking every file against its recorded sha256.

        `threshold` (0..1) replaces the bundle's own "not sure" threshold (--threshold); `tta` (1..16)
        the test-time views it recorded (--tta); `novelty_threshold` (0..2, 2: never) the novelty gate's
        (--novelty-threshold); `not_fruit` False answers with the fruit guesses even when the "not a
        fruit" class wins (--not-fruit off)."""
        if threshold is not None:
            check_threshold(threshold)
        if novelty_threshold is not None:
            check_novelty_threshold(novelty_threshold)
        if tta is not None:
            check_tta(tta)
        folder = _bundle_folder(Path(path))
        description = _read_description(folder)
        for name, expected in description.files.items():
            file = folder / name
            if not file.is_file():
                raise FileNotFoundError(f"bundle {folder} is incomplete: {name} is missing")
            if file_sha256(file) != expected:
                raise ValueError(f"bundle {folder} is damaged: {name} does not match its recorded sha256")
        classes = json.loads((folder / CLASSES_FILE).read_text(encoding="utf-8"))
        if classes != list(description.classes):
            raise ValueError(f"bundle {folder} is inconsistent: {CLASSES_FILE} differs from {DESCRIPTION}")
        arrays = _read_arrays(folder / ARRAYS_FILE)
        try:
            arrays.check(description.model.feature_dim, len(classes), description.outliers is not None,
                         description.novelty.centroids if description.novelty else None)
            bundle = cls(folder, description, arrays, threads or os.cpu_count() or 1, threshold, tta,
                         novelty_threshold, not_fruit)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"bundle {folder} is invalid ({type(exc).__name__}: {exc})") from exc
        logger.debug("loaded bundle %s: %d classes, k=%d", folder, len(classes), arrays.components.shape[1])
        return bundle

    def pixels(self, data: bytes) -> np.ndarray:
        """Photo bytes -> the model's square uint8 input, or DecodeError with the reason."""
        return decode_for_model(data, self.limits, self.preprocessing.input_size, self.preprocessing.resize)[0]

    def probabilities(self, images: Sequence[bytes]) -> np.ndarray:
        """(n, n_classes) class probabilities; DecodeError on the first photo that cannot be decoded."""
        return self.probabilities_of_pixels([self.pixels(data) for data in images])

    def probabilities_of_pixels(self, pixels: Sequence[np.ndarray]) -> np.ndarray:
        """Already decoded inputs (from `pixels`) -> probabilities (`scores_of_pixels`' first part)."""
        return self.scores_of_pixels(pixels).probabilities

    def scores_of_pixels(self, pixels: Sequence[np.ndarray]) -> Scored:
        """Already decoded inputs -> probabilities and novelty, in batches of BATCH_SIZE photos; with
        tta > 1, the mean over each photo's views of their calibrated probabilities and of their novelty."""
        if not len(pixels):
            return Scored(np.zeros((0, len(self.classes))), None if self.novelty_threshold is None else np.zeros(0),
                          np.zeros(0) if self.has_outlier_class else None)
        features = [embed(self._views(pixels[start:start + BATCH_SIZE]), self.preprocessing, self.onnx_path,
                          self.threads, self.runtime) for start in range(0, len(pixels), BATCH_SIZE)]
        scored = self.score_features(np.concatenate(features))
        if self.tta == 1:
            return scored
        views = (len(pixels), self.tta)
        return Scored(scored.probabilities.reshape(*views, len(self.classes)).mean(axis=1),
                      None if scored.novelty is None else scored.novelty.reshape(views).mean(axis=1),
                      None if scored.outlier is None else scored.outlier.reshape(views).mean(axis=1))

    def _views(self, pixels: Sequence[np.ndarray]) -> np.ndarray:
        """One model call's input: each photo, followed by its tta - 1 test-time views."""
        if self.tta == 1:
            return np.stack(pixels)
        return np.stack([augmented_view(photo, TTA_KEY, view, TTA_FAMILIES)
                         for photo in pixels for view in range(self.tta)])

    def classify(self, features: np.ndarray) -> np.ndarray:
        """CNN features (n, d) -> calibrated probabilities (`score_features`' first part)."""
        return self.score_features(features).probabilities

    def score_features(self, features: np.ndarray) -> Scored:
        """CNN features (n, d) -> calibrated probabilities and novelty, computed as the Spark batch path does.

        Centring and projection in float64, the projection rounded to float32 (the precision the
        pipeline stores `pca` in), then softmax of the logistic regression margins / temperature in float64
        (over the fruit classes and, with outlier photos, the "not a fruit" class, split off as `outlier`);
        the novelty of the same rounded projection against the bundle's centroids."""
        centred = np.asarray(features, dtype=np.float64) - self.arrays.mean
        projected = (centred @ self.arrays.components).astype(np.float32).astype(np.float64)
        margins = projected @ self.arrays.coefficients.T + self.arrays.intercepts
        centroids = self.arrays.centroids
        probabilities = calibration.softmax(margins, self.temperature)
        fruit = len(self.classes)
        return Scored(probabilities[:, :fruit], None if centroids is None else novelty.novelty(projected, centroids),
                      probabilities[:, fruit] if self.has_outlier_class else None)

    @property
    def has_outlier_class(self) -> bool:
        """Trained with outlier photos: the classifier's last class is "not a fruit"."""
        return self.description.outliers is not None

    def unknown_reason(self, probabilities: np.ndarray, novelty_score: float | None = None,
                       outlier_score: float | None = None) -> str | None:
        """Why one row is "not sure" (None: it is sure): "not a fruit" is at least as probable as its most
        probable fruit, its highest calibrated probability is below the threshold, or its novelty is above
        the bundle's novelty threshold."""
        if self.not_fruit and outlier_score is not None and outlier_score >= float(probabilities.max()):
            return NOT_FRUIT
        if self.threshold is not None and float(probabilities.max()) < self.threshold:
            return LOW_CONFIDENCE
        if novelty_score is not None and self.novelty_threshold is not None and novelty_score > self.novelty_threshold:
            return UNLIKE_TRAINING
        return None

    def novel_rows(self, scores: np.ndarray | None) -> np.ndarray | None:
        """Which rows' novelty is above the bundle's novelty threshold (None: no gate or no scores)."""
        if scores is None or self.novelty_threshold is None:
            return None
        novel: np.ndarray = np.asarray(scores) > self.novelty_threshold
        return novel

    def not_fruit_rows(self, probabilities: np.ndarray, outlier: np.ndarray | None) -> np.ndarray | None:
        """Which rows "not a fruit" wins (None: trained without outlier photos, or the rule turned off)."""
        if outlier is None or not self.not_fruit:
            return None
        won: np.ndarray = np.asarray(outlier) >= np.asarray(probabilities).max(axis=1, initial=0.0)
        return won

    def is_unknown(self, probabilities: np.ndarray, novelty_score: float | None = None,
                   outlier_score: float | None = None) -> bool:
        return self.unknown_reason(probabilities, novelty_score, outlier_score) is not None

    def answer(self, probabilities: np.ndarray, top_k: int = 5, novelty_score: float | None = None,
               outlier_score: float | None = None) -> Answer:
        """One row of probabilities (its novelty, its "not a fruit" probability) -> the top_k guesses and
        whether they are only guesses."""
        return Answer(tuple(self.top(probabilities, top_k)),
                      self.unknown_reason(probabilities, novelty_score, outlier_score), outlier_score)

    def answer_bytes(self, data: bytes, top_k: int = 5) -> Answer:
        """Photo bytes -> Answer; DecodeError (a ValueError) for a bad photo."""
        scored = self.scores_of_pixels([self.pixels(data)])
        return self.answer(scored.probabilities[0], top_k, None if scored.novelty is None else float(scored.novelty[0]),
                           None if scored.outlier is None else float(scored.outlier[0]))

    def top(self, probabilities: np.ndarray, top_k: int = 5) -> list[Prediction]:
        """One row of probabilities -> the top_k classes, most probable first."""
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        order = np.argsort(-probabilities, kind="stable")[:top_k]
        return [Prediction(self.classes[i], float(probabilities[i])) for i in order]

    def predict_bytes(self, data: bytes, top_k: int = 5) -> list[Prediction]:
        """Photo bytes -> top_k predictions; DecodeError (a ValueError) for a bad photo."""
        return self.top(self.probabilities([data])[0], top_k)

    def describe(self) -> dict[str, Any]:
        """What the bundle is: model, fingerprints of its source run, classes, when it was made."""
        description = self.description
        return {
            "path": str(self.folder),
            "model": description.model.name,
            "weights_sha256": description.model.weights_sha256,
            "onnx_sha256": description.files[ONNX_FILE],
            "feature_dim": description.model.feature_dim,
            "input_size": self.preprocessing.input_size,
            "precision": self.runtime.precision,
            "k": int(self.arrays.components.shape[1]),
            "classifier": description.classifier.to_json(),
            "classes": self.classes,
            "source": description.source.to_json(),
            "created": description.created,
            "metrics": description.metrics.to_json() if description.metrics else {},
            "temperature": self.temperature,
            "threshold": self.threshold,
            "tta": self.tta,
            "novelty_threshold": self.novelty_threshold,
            "not_fruit": self.not_fruit,
            "calibration": description.calibration.to_json() if description.calibration else None,
            "novelty": description.novelty.to_json() if description.novelty else None,
            "outliers": description.outliers.to_json() if description.outliers else None,
        }


def check_threshold(threshold: float) -> float:
    """A "not sure" threshold is a probability: 0 (never unknown) to 1 (unknown unless certain)."""
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"the threshold must be a probability between 0 and 1, got {threshold}")
    return threshold


def check_novelty_threshold(threshold: float) -> float:
    """A novelty threshold is a cosine distance: 0 (everything is unlike training) to 2 (the gate is off)."""
    if not 0.0 <= threshold <= 2.0:
        raise ValueError(f"the novelty threshold must be a cosine distance between 0 and 2 (2: off), got {threshold}")
    return threshold


@dataclass(frozen=True)
class PhotoResult:
    """One photo's outcome: its answer (top predictions, unknown or not), or why it could not be read or decoded."""

    photo: str
    answer: Answer | None = None
    error: str | None = None

    @property
    def predictions(self) -> tuple[Prediction, ...]:
        return self.answer.predictions if self.answer else ()

    def to_dict(self) -> dict[str, Any]:
        if self.answer is None:
            return {"photo": self.photo, "error": self.error}
        return {"photo": self.photo, **self.answer.to_dict()}


@dataclass(frozen=True)
class PhotoProbabilities:
    """One photo's class probabilities (in the bundle's class order), or why it could not be read or decoded."""

    photo: str
    probabilities: np.ndarray | None = None
    error: str | None = None
    novelty: float | None = None  # with the bundle's novelty gate
    outlier: float | None = None  # with outlier photos: the calibrated probability of "not a fruit"


def predict_photos(model: Bundle, photos: Sequence[str], top_k: int = 5, *,
                   store: Store | None = None) -> list[PhotoResult]:
    """Photos (local paths or s3:// URIs, read through `store`; None: the default AWS chain) -> one result
    each, in order; a bad photo never stops the others."""
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    return [PhotoResult(result.photo, error=result.error) if result.probabilities is None
            else PhotoResult(result.photo, model.answer(result.probabilities, top_k, result.novelty, result.outlier))
            for result in photo_probabilities(model, photos, store=store)]


def photo_probabilities(model: Bundle, photos: Sequence[str], *,
                        store: Store | None = None) -> Iterator[PhotoProbabilities]:
    """Photos -> their probabilities, in order, one result each (predict and evaluate share it).

    Photos are read and decoded one by one and embedded BATCH_SIZE at a time, so memory stays bounded."""
    store = store or Store()
    for start in range(0, len(photos), BATCH_SIZE):
        chunk = photos[start:start + BATCH_SIZE]
        decoded: dict[int, np.ndarray] = {}
        errors: dict[int, str] = {}
        for index, photo in enumerate(chunk):
            try:
                decoded[index] = model.pixels(store.read_bytes(photo, limit=model.limits.max_bytes))
            except (OSError, ValueError) as exc:  # DecodeError is a ValueError; missing files are OSErrors
                errors[index] = str(exc) if isinstance(exc, ValueError) else (exc.strerror or str(exc))
        scored = model.scores_of_pixels(list(decoded.values()))
        position = {index: n for n, index in enumerate(decoded)}
        for i, photo in enumerate(chunk):
            if i in errors:
                yield PhotoProbabilities(photo, error=errors[i])
                continue
            novelty_score = None if scored.novelty is None else float(scored.novelty[position[i]])
            outlier_score = None if scored.outlier is None else float(scored.outlier[position[i]])
            yield PhotoProbabilities(photo, scored.probabilities[position[i]], novelty=novelty_score,
                                     outlier=outlier_score)


def _bundle_folder(path: Path) -> Path:
    for folder in (path / BUNDLE_DIR, path):
        if (folder / DESCRIPTION).is_file():
            return folder
    if not path.exists():
        raise FileNotFoundError(f"model folder not found: {path}")
    raise FileNotFoundError(f"no fruitpipe bundle in {path} (expected {BUNDLE_DIR}/{DESCRIPTION}; "
                            "make one with 'fruitpipe train')")


def _read_description(folder: Path) -> BundleDescription:
    description = BundleDescription.loads((folder / DESCRIPTION).read_bytes(), f"bundle {folder}: {DESCRIPTION}")
    if set(description.files) != {ONNX_FILE, ARRAYS_FILE, CLASSES_FILE}:
        raise ValueError(f"bundle {folder}: {DESCRIPTION} is incomplete (files lists {sorted(description.files)})")
    return description


def _read_arrays(path: Path) -> Arrays:
    try:
        with np.load(path, allow_pickle=False) as stored:
            centroids = np.asarray(stored[CENTROIDS], dtype=np.float64) if CENTROIDS in stored.files else None
            return Arrays(**{name: np.asarray(stored[name], dtype=np.float64) for name in ARRAY_NAMES},
                          centroids=centroids)
    except (KeyError, ValueError, OSError) as exc:
        raise ValueError(f"bundle {path.parent}: {path.name} is unreadable ({exc})") from None
