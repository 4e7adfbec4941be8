"""CentredPCA against scikit-learn: components, projections, spectrum, k selection, save/load."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.decomposition import PCA as SkPCA

from fruitpipe.ml.pca import CentredPCA, CentredPCAModel, smallest_k

ROWS, DIM = 300, 40
TOL = 1e-4


def make_features(rows: int = ROWS, dim: int = DIM, seed: int = 7) -> np.ndarray:
    """float32 data with a decaying spectrum, rotated, and a large non-zero mean."""
    rng = np.random.default_rng(seed)
    scales = 4.0 * 0.8 ** np.arange(dim)
    rotation, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    offset = 10.0 + rng.normal(scale=3.0, size=dim)
    return ((rng.normal(size=(rows, dim)) * scales) @ rotation.T + offset).astype(np.float32)


@pytest.fixture(scope="module")
def features() -> np.ndarray:
    return make_features()


@pytest.fixture(scope="module")
def frame(spark, features):
    data = [(i, row.tolist()) for i, row in enumerate(features)]
    cached = spark.createDataFrame(data, "id long, features array<float>").cache()
    yield cached
    cached.unpersist()  # later modules assert the session caches nothing


@pytest.fixture(scope="module")
def reference(features) -> SkPCA:
    return SkPCA().fit(features.astype(np.float64))  # all components


@pytest.fixture(scope="module")
def fitted(frame) -> CentredPCAModel:
    return CentredPCA(k=5).fit(frame)


def projections(model: CentredPCAModel, frame) -> np.ndarray:
    rows = model.transform(frame).select("id", "pca").orderBy("id").collect()
    assert [r.id for r in rows] == list(range(len(rows)))
    return np.array([r.pca for r in rows], dtype=np.float64)


def align_signs(ours: np.ndarray, theirs: np.ndarray) -> np.ndarray:
    """Per-column signs that map `theirs` onto `ours` (columns are components)."""
    return np.where(np.sum(ours * theirs, axis=0) < 0, -1.0, 1.0)


def test_data_needs_centring(features, reference) -> None:
    # guards that make the comparisons meaningful: a large mean and well separated eigenvalues
    assert np.abs(features.mean(axis=0)).min() > 1.0
    gaps = -np.diff(reference.explained_variance_[:6])
    assert gaps.min() > 0.05 * reference.explained_variance_[0]


def test_components_and_projections_match_sklearn(fitted, frame, features, reference) -> None:
    assert fitted.components == 5
    ours = fitted.pca.pc.toArray()  # d x k
    theirs = reference.components_[:5].T
    assert ours.shape == (DIM, 5)
    signs = align_signs(ours, theirs)
    assert np.abs(ours - theirs * signs).max() <= TOL

    projected = projections(fitted, frame)
    expected = reference.transform(features.astype(np.float64))[:, :5] * signs
    assert projected.shape == (ROWS, 5)
    assert np.abs(projected - expected).max() <= TOL


def test_spectrum_matches_sklearn(fitted, reference) -> None:
    assert len(fitted.spectrum) == DIM
    np.testing.assert_allclose(fitted.spectrum, reference.explained_variance_ratio_, rtol=0, atol=TOL)
    assert fitted.variance_kept == pytest.approx(reference.explained_variance_ratio_[:5].sum(), abs=TOL)


def test_projection_is_centred(fitted, frame, features) -> None:
    projected = projections(fitted, frame)
    spread = projected.std(axis=0)
    assert np.abs(projected.mean(axis=0)).max() <= 1e-4 * spread.max()
    # without centring (what Spark's own PCAModel does) the projection would carry the mean
    raw_mean = features.astype(np.float64).mean(axis=0) @ fitted.pca.pc.toArray()
    assert np.abs(raw_mean).max() > 1.0


@pytest.mark.parametrize("target", [0.5, 0.9, 0.99])
def test_variance_target_picks_smallest_k(frame, reference, target) -> None:
    cumulative = np.cumsum(reference.explained_variance_ratio_)
    expected = int(np.searchsorted(cumulative, target) + 1)  # first index with cumsum >= target
    assert np.abs(cumulative - target).min() > 1e-3  # not ambiguous at this tolerance
    assert cumulative[expected - 1] >= target and (expected == 1 or cumulative[expected - 2] < target)

    model = CentredPCA(varianceTarget=target).fit(frame)
    assert model.components == expected
    assert model.variance_kept >= target
    assert len(projections(model, frame)[0]) == expected


@pytest.mark.parametrize(
    ("ratios", "target", "expected"),
    [
        ([0.5, 0.3, 0.2], 0.5, 1),          # exactly reached by the first
        ([0.5, 0.3, 0.2], 0.5 + 1e-6, 2),   # just above a boundary
        ([0.5, 0.3, 0.2], 0.49, 1),
        ([0.7, 0.2, 0.1], 0.9, 2),          # 0.7 + 0.2 == 0.8999999999999999 < 0.9 in floats
        ([0.7, 0.2, 0.1], 1.0, 3),          # the sum is 0.9999999999999999
        ([0.1] * 10, 0.3, 3),
        ([0.6, 0.4], 0.0, 1),
        ([0.6, 0.4], 1.5, 2),               # unreachable: all components
    ],
)
def test_smallest_k(ratios, target, expected) -> None:
    assert smallest_k(ratios, target) == expected


def test_k_larger_than_dimension_is_rejected(frame) -> None:
    k = DIM + 1
    with pytest.raises(ValueError, match=f"k={k}"):
        CentredPCA(k=k).fit(frame)


def test_k_equal_to_dimension_is_accepted(frame) -> None:
    assert CentredPCA(k=DIM).fit(frame).components == DIM


def test_save_load_round_trip(fitted, frame, tmp_path) -> None:
    path = str(tmp_path / "centred-pca")
    fitted.save(path)
    loaded = CentredPCAModel.load(path)
    assert isinstance(loaded, CentredPCAModel)
    assert loaded.uid == fitted.uid
    assert loaded.components == fitted.components == 5
    assert loaded.getOrDefault(loaded.k) == 5
    assert loaded.spectrum == fitted.spectrum
    assert (loaded.getInputCol(), loaded.getOutputCol()) == ("features", "pca")
    np.testing.assert_array_equal(loaded.scaler.mean.toArray(), fitted.scaler.mean.toArray())
    np.testing.assert_array_equal(loaded.pca.pc.toArray(), fitted.pca.pc.toArray())
    np.testing.assert_array_equal(projections(loaded, frame), projections(fitted, frame))


def test_the_model_is_its_arrays(fitted, features) -> None:
    """arrays(): the typed, read-only value persist and train read (no Spark model needed)."""
    from fruitpipe.ml.pca import PcaArrays

    arrays = fitted.arrays()
    assert arrays.components.shape == (DIM, 5) and arrays.k == 5 and len(arrays.spectrum) == DIM
    np.testing.assert_allclose(arrays.mean, features.astype(np.float64).mean(axis=0), atol=1e-9)
    np.testing.assert_array_equal(arrays.components, fitted.pca.pc.toArray())  # the Spark model, built from them
    np.testing.assert_array_equal(arrays.mean, fitted.scaler.mean.toArray())
    with pytest.raises(ValueError):
        arrays.mean[0] = 1.0  # read-only
    with pytest.raises(ValueError, match="inconsistent"):
        PcaArrays.of(arrays.mean, arrays.std, arrays.components[:-1], arrays.spectrum)
