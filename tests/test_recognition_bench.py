"""The recognition table's harness (benchmark/recognition.py): what it chooses on, and what it writes.

The measurement itself runs the user's commands for minutes (`python -m fruitpipe.benchmark.recognition`);
these tests check the parts that decide honesty: the holdout is a fixed share of Training, disjoint from
the fit part, shifted with training-side families only, and Test never enters the selection data.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fruitpipe.benchmark import recognition
from fruitpipe.image import shifts


def test_holdout_is_a_fixed_fifth_of_training(sample_dir: Path) -> None:
    paths = [p.relative_to(sample_dir).as_posix() for p in sorted(sample_dir.glob("Training/*/*.jpg"))]
    chosen = [p for p in paths if recognition.in_holdout(p)]
    assert chosen == [p for p in paths if recognition.in_holdout(p)]  # deterministic
    assert 0.14 <= len(chosen) / len(paths) <= 0.26, len(chosen) / len(paths)


def test_selection_data_keeps_holdout_out_of_fitting(small_sample: Path, tmp_path: Path) -> None:
    fit, holdout = recognition.selection_data(small_sample, tmp_path)
    fitted = {p.relative_to(fit).as_posix() for p in fit.glob("Training/*/*.jpg")}
    held = {p.relative_to(small_sample).as_posix() for p in small_sample.glob("Training/*/*.jpg")
            if recognition.in_holdout(p.relative_to(small_sample).as_posix())}
    assert held and not {p for p in fitted if p in held}
    assert fitted | held == {p.relative_to(small_sample).as_posix() for p in small_sample.glob("Training/*/*.jpg")}
    shifted = sorted(holdout.glob("*/*.jpg"))
    assert len(shifted) == len(held) * len(recognition.HOLDOUT_VIEWS)
    # each shifted file is the training-side view of its holdout photo (recomputed independently)
    for relative in sorted(held):
        photo = small_sample / relative
        pixels = np.asarray(Image.open(photo).convert("RGB"))
        own, other = (shifts.augmented_view(pixels, f"holdout:{relative}", v, shifts.DEFAULT_VIEWS) for v in (1, 2))
        written = np.asarray(Image.open(holdout / photo.parent.name / f"{photo.stem}_v1.jpg").convert("RGB"))
        to_own, to_other = (float(np.abs(written.astype(int) - v.astype(int)).mean()) for v in (own, other))
        assert to_own < 6 and to_own < to_other / 2, (to_own, to_other)  # JPEG q95 of that very view
    # Test photos are copied (train needs the split) but never shifted into the holdout
    assert not any("Test" in p.parts for p in shifted)


def test_recipes_differing_only_in_tta_share_a_model() -> None:
    plain = recognition.Recipe("a", augment=4)
    with_tta = recognition.Recipe("b", augment=4, tta=4)
    assert plain.folder() == with_tta.folder()
    assert recognition.Recipe("c", augment=2).folder() != plain.folder()
    assert recognition.Recipe("d", model="efficientnet-lite0+logits", augment=4).folder() != plain.folder()
    weaker = recognition.Recipe("e", augment=4, views=("--augment-strength", "0.5"))
    assert weaker.folder() != plain.folder() and weaker.run_args()[-2:] == ["--augment-strength", "0.5"]
    ridge = recognition.Recipe("f", augment=4, classifier="lr-l2-0.1-standardised")  # shares the run, not the model
    assert ridge.folder() == plain.folder() and ridge.model_name() != plain.model_name() == "model"
    assert ridge.train_args() == ["--classifier", "lr-l2-0.1-standardised"] and plain.train_args() == []
    from fruitpipe.recognise.train import CANDIDATES

    named = {recipe.classifier for recipe in recognition.RECIPES} - {None}
    assert named <= {candidate.name for candidate in CANDIDATES}  # train would refuse any other


def test_table_marks_the_chosen_recipe_and_doc_block_is_replaced(tmp_path: Path) -> None:
    row = {"recipe": "r1", "selection": {"accuracy": 0.5, "log_loss": 0.01234,
                                         "sets": {"holdout_shifted": {"accuracy": 0.5, "log_loss": 0.01}}},
           "test_accuracy": 1.0, "suite": {"grayscale": 0.25}, "suite_mean": 0.25, "non_fruit_unknown_rate": 0.9,
           "styles": {"fluent-3d": {"accuracy": 0.625, "answered": 0.5}, "tuxpaint-photos": {"accuracy": 0.375,
                                                                                         "answered": None}},
           "styles_mean": 0.625, "styles_answered": 0.5, "photos_accuracy": 0.375, "photos_answered": None,
           "test_coverage_at_threshold": None, "serve_p95_ms": 12.34, "serve_load_average": 3.5}
    results = {"recipes": [row, {**row, "recipe": "r2", "serve_p95_ms": None, "serve_load_average": None}],
               "chosen": "r2",
               "measured_at": "now", "machine": {"cpu": "cpu", "cpus": 2}, "command": "cmd"}
    text = recognition.table(results)
    assert "| r2 (chosen) |" in text and "| r1 | 0.0123 | 50.0% |" in text and "25.0%" in text and "12.3" in text
    assert "| 62.5% | 50.0% | 37.5% | - |" in text  # other styles, answered, photos, photos answered
    assert "| r1 | 62.5% | 37.5% | 50.0% |" in recognition.styles_table(results)
    doc = tmp_path / "recognition.md"
    doc.write_text("# R\n\nintro\n", encoding="utf-8")
    recognition.write_doc(results, doc)
    recognition.write_doc(results, doc)  # a second write replaces the block, not appends
    written = doc.read_text(encoding="utf-8")
    assert written.count(recognition.TABLE_START) == 1 and written.startswith("# R\n\nintro")
    assert "3.50 (r1) on 2 vCPU" in written and "noisy" in written


def selection_row(name: str, log_loss: float, accuracy: float, suite_mean: float) -> dict[str, object]:
    return {"recipe": name, "suite_mean": suite_mean, "test_accuracy": 1.0, "styles_mean": suite_mean,
            "photos_accuracy": suite_mean, "selection": {"log_loss": log_loss, "accuracy": accuracy}}


def test_choice_is_lowest_selection_log_loss_then_accuracy_then_listed_order() -> None:
    """Log-loss decides, then accuracy, then the listed order; the suite, the report styles and the photos
    (here made to point the other way) never do."""
    rows = [selection_row("cheap", 0.05, 1.0, 0.99), selection_row("sure", 0.01, 1.0, 0.10),
            selection_row("sure-but-wrong-more", 0.01, 0.9, 0.99), selection_row("sure-later", 0.01, 1.0, 0.99)]
    assert recognition.choose(rows) == "sure"
    assert recognition.choose([rows[0], rows[2]]) == "sure-but-wrong-more"  # log-loss first
    assert recognition.choose([rows[3], rows[1]]) == "sure-later"  # full tie: the first listed


def test_recipes_are_picked_by_their_full_names() -> None:
    """Recipe names hold commas: `--recipes` separates them with ';', and a name it does not know is an error
    (a silently dropped recipe would leave the rule choosing among fewer)."""
    from fruitpipe.benchmark.recognition import RECIPES, pick_recipes

    assert pick_recipes(None) == list(RECIPES)
    picked = pick_recipes("augment-4, strength 1.5; baseline")
    assert [recipe.name for recipe in picked] == ["baseline", "augment-4, strength 1.5"]
    with pytest.raises(ValueError, match=r"unknown recipe 'baseline,augment-4, strength 1\.5'.*recipes are: baseline"):
        pick_recipes("baseline,augment-4, strength 1.5")  # commas do not separate
