"""drift.png: both samples on the reference's first two components, and the per-component KS diagnostics
(matplotlib Agg, imported inside the function like batch/plots)."""
from __future__ import annotations

import numpy as np

from fruitpipe.batch import plots
from fruitpipe.monitor.contracts import DriftReport

SHOWN_COMPONENTS = 30


def drift_png(report: DriftReport, reference: np.ndarray, current: np.ndarray) -> bytes:
    """Left: the two samples (first two reference components). Right: KS statistic of the first
    components, bars coloured where Benjamini-Hochberg keeps them significant at alpha."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (scatter, bars) = plt.subplots(1, 2, figsize=(12, 4.8), dpi=100)
    for points, colour, name in ((reference, "#4c72b0", "reference"), (current, "#dd8452", "current")):
        if points.shape[1] >= 2:
            scatter.scatter(points[:, 0], points[:, 1], s=6, alpha=0.5, color=colour,
                            label=f"{name} ({len(points)} sampled)")
    scatter.set_xlabel("reference component 1")
    scatter.set_ylabel("reference component 2")
    scatter.legend(loc="best")
    scatter.set_title(f"verdict: {report.status}")
    shown = report.components[:SHOWN_COMPONENTS]
    alpha = report.settings.alpha
    bars.bar([c.component for c in shown], [c.ks for c in shown],
             color=["#c44e52" if c.q_value < alpha else "#8c8c8c" for c in shown])
    bars.set_xlabel(f"reference component (first {len(shown)} of {len(report.components)})")
    bars.set_ylabel("KS statistic (red: BH q < alpha)")
    bars.set_title("per-component shift (diagnostic)")
    fig.tight_layout()
    return plots.png_bytes(fig)
