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


def confusion_matrix_png(matrix: list[list[int]], classes: list[str]) -> bytes:
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
    ax.set_title(f"Confusion matrix on Test: {int(np.trace(counts))} of {int(counts.sum())} correct")
    return _png(fig)


def _png(fig: Any) -> bytes:
    """A finished figure -> PNG bytes; the figure is closed (pyplot keeps figures alive otherwise)."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()
