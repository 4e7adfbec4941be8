"""A trained model folder on the bundled sample, built once per test session (see `trained_bundle` in conftest).

Layout under `base_dir`: `run/` (the `fruitpipe run` output on the bundled sample) and `model/` (the
`fruitpipe train` output, whose `bundle/` is what `Bundle.load` reads). Runs in process, so it reuses
the test session's SparkSession when one is active.
"""
from __future__ import annotations

from pathlib import Path

RUN, MODEL = "run", "model"


def train_sample_bundle(base_dir: Path, master: str = "local[2]") -> Path:
    """Pipeline on the bundled sample, then train; returns the model folder (MODEL_DIR)."""
    from fruitpipe import pipeline, train
    from fruitpipe.config import RunConfig, TrainConfig
    from fruitpipe.sampledata import bundled_sample_dir

    run_output, model_dir = base_dir / RUN, base_dir / MODEL
    pipeline.run(RunConfig(input=str(bundled_sample_dir()), output=str(run_output), master=master))
    train.train(TrainConfig(features=str(run_output), output=str(model_dir), master=master))
    return model_dir


def run_output_of(model_dir: Path) -> Path:
    """The run output a model folder from `train_sample_bundle` was trained on."""
    return model_dir.parent / RUN
