"""Figures of a run, rendered headless (matplotlib Agg) to PNG bytes."""
from __future__ import annotations

import io
from typing import Any


def scree_png(ratios: list[float], k: int, variance_target: float | None) -> bytes:
    """Explained variance per component (bars) and cumulative (line), chosen k marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    shown = min(len(ratios), max(2 * k, 50))
    values = np.asarray(ratios[:shown])
    cumulative = np.cumsum(ratios)[:shown]
    components = np.arange(1, shown + 1)
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    ax.bar(components, values, color="#4c72b0", label="per component")
    ax.set_xlabel("principal component")
    ax.set_ylabel("explained variance ratio")
    twin = ax.twinx()
    twin.plot(components, cumulative, color="#dd8452", marker=".", label="cumulative")
    twin.set_ylim(0, 1.02)
    twin.set_ylabel("cumulative")
    twin.axvline(k, color="#55a868", linestyle="--", label=f"k = {k} ({cumulative[k - 1]:.1%})")
    if variance_target is not None:
        twin.axhline(variance_target, color="grey", linestyle=":", label=f"target {variance_target:.0%}")
    handles = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
    twin.legend(handles, [str(h.get_label()) for h in handles], loc="center right")
    ax.set_title(f"Scree plot: {len(ratios)} components, first {shown} shown")
    return _png(fig)


def confusion_matrix_png(matrix: list[list[int]], classes: list[str], split: str = "Test") -> bytes:
    """Rows: true class, columns: predicted class; counts in the cells, darker = more."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    counts = np.asarray(matrix)
    side = max(5.0, 0.42 * len(classes) + 2.5)
    fig, ax = plt.subplots(figsize=(side + 1.5, side), dpi=100)
    image = ax.imshow(counts, cmap="Blues")
    ticks = np.arange(len(classes))
    ax.set_xticks(ticks, classes, rotation=90, fontsize=8)
    ax.set_yticks(ticks, classes, fontsize=8)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if len(classes) <= 40:  # beyond that the numbers are unreadable; the colours still show the pattern
        threshold = counts.max() / 2 if counts.size else 0
        for (row, column), value in np.ndenumerate(counts):
            if value:
                ax.text(column, row, str(value), ha="center", va="center", fontsize=7,
                        color="white" if value > threshold else "black")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set_title(f"Confusion matrix on {split}: {int(np.trace(counts))} of {int(counts.sum())} correct")
    return _png(fig)


def reliability_png(bins: list[tuple[float, float, int, float | None, float | None]], ece: float) -> bytes:
    """Reliability diagram: accuracy per confidence bin (lower, upper, count, confidence, accuracy)
    against the diagonal of perfect calibration; bar labels are the bins' photo counts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 5.5), dpi=100)
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfectly calibrated")
    filled = [(lower, upper, count, confidence, accuracy) for lower, upper, count, confidence, accuracy in bins
              if confidence is not None and accuracy is not None]
    for lower, upper, count, _, accuracy in filled:
        ax.bar(lower, accuracy, width=upper - lower, align="edge", color="#4c72b0", edgecolor="white")
        ax.text((lower + upper) / 2, accuracy + 0.01, str(count), ha="center", fontsize=7)
    ax.plot([row[3] for row in filled], [row[4] for row in filled], color="#dd8452", marker="o",
            label="accuracy at mean confidence")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.08)
    ax.set_xlabel("max probability (confidence)")
    ax.set_ylabel("accuracy")
    ax.legend(loc="upper left")
    ax.set_title(f"Reliability: ECE {ece:.3f} ({len(bins)} equal-width bins)")
    return _png(fig)


def coverage_png(points: list[tuple[float, float, float | None]], chosen: float | None) -> bytes:
    """The "not sure" threshold's trade-off: coverage and accuracy-on-answered per threshold
    (threshold, coverage, accuracy); the threshold in force, if any, marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    thresholds = [row[0] for row in points]
    ax.plot(thresholds, [row[1] for row in points], color="#4c72b0", label="coverage (share answered)")
    answered = [(threshold, accuracy) for threshold, _, accuracy in points if accuracy is not None]
    ax.plot([row[0] for row in answered], [row[1] for row in answered], color="#55a868",
            label="accuracy on the answered")
    if chosen is not None:
        ax.axvline(chosen, color="#c44e52", linestyle="--", label=f"threshold {chosen:g}")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("threshold on the max probability (below: \"not sure\")")
    ax.legend(loc="lower left")
    ax.set_title("Coverage and accuracy of the \"not sure\" threshold")
    return _png(fig)


def _png(fig: Any) -> bytes:
    """A finished figure -> PNG bytes; the figure is closed (pyplot keeps figures alive otherwise)."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def pca_scatter_png(points: list[tuple[float, float, str]], classes: list[str]) -> bytes:
    """The sample's first two PCA coordinates (pc1, pc2, class), one colour per class (tab20, then
    markers cycle so 131 classes stay distinguishable); a legend up to 30 classes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    palette = [plt.get_cmap("tab20")(index) for index in range(20)]
    markers = ("o", "s", "^", "D", "v", "P", "X")
    fig, ax = plt.subplots(figsize=(8, 6), dpi=100)
    for index, name in enumerate(classes):
        mine = [(x, y) for x, y, label in points if label == name]
        if mine:
            ax.scatter([x for x, _ in mine], [y for _, y in mine], s=14, alpha=0.8, label=name,
                       color=palette[index % len(palette)], marker=markers[(index // len(palette)) % len(markers)])
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    if len(classes) <= 30:
        ax.legend(fontsize=7, ncol=2 if len(classes) > 12 else 1, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.set_title(f"First two principal components: {len(points)} sampled photos, {len(classes)} classes")
    return _png(fig)


def png_bytes(fig: Any) -> bytes:
    """A finished matplotlib figure -> PNG bytes (closed): for figures made elsewhere (drift.png)."""
    return _png(fig)
