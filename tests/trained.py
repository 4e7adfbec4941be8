"""A model folder trained on a run output, and the way back from it to that run (see `trained_bundle`).

Trains in process, so it reuses the test session's SparkSession when one is active.
"""
from __future__ import annotations

import json
from pathlib import Path


def train_on(run_output: Path, model_dir: Path, master: str = "local[2]", outliers: str | None = "bundled") -> Path:
    """`fruitpipe train` on a run output (with the bundled outlier photos unless told); returns MODEL_DIR."""
    from fruitpipe.config import TrainConfig
    from fruitpipe.recognise import train

    train.train(TrainConfig(features=str(run_output), output=str(model_dir), master=master, outliers=outliers))
    return model_dir


def run_output_of(model_dir: Path) -> Path:
    """The run output a model folder was trained on (from its manifest)."""
    return Path(json.loads((model_dir / "manifest.json").read_text())["source"]["run_output"])
