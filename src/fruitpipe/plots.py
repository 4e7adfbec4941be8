"""Figures of a run, rendered headless (matplotlib Agg) to PNG bytes."""
from __future__ import annotations

import io


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
    twin.legend(handles, [h.get_label() for h in handles], loc="center right")
    ax.set_title(f"Scree plot: {len(ratios)} components, first {shown} shown")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()
