"""report.html (written by every run, rebuilt by `fruitpipe report`) and the run's cost in the manifest.

The page is checked as a document (html.parser: sections, headings in order, alt text, table headers,
nothing fetched from anywhere), against the manifest and the input folder (independent counts), and in
Debian's headless chromium (no console error, no network request, no horizontal overflow at phone width).
"""
from __future__ import annotations

import itertools
import json
import os
import re
import time
from collections import Counter
from dataclasses import replace
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from browser import browser_driver
from fruitpipe.batch import cost, report, sinks
from fruitpipe.batch.manifest import ClassCount, RunManifest, SuccessMarker
from fruitpipe.storage import Store
from helpers import fruitpipe_cli

SCHEMA1 = Path(__file__).parent / "data" / "schema1"
RUN_SECTIONS = ("Run summary", "PCA: explained variance", "PCA scatter by class", "Photos per class and split",
                "Sample photos per class", "Rejected inputs", "Cost")
EXTERNAL = re.compile(r"^\s*(https?:|//|ftp:|file:)", re.IGNORECASE)


class Page(HTMLParser):
    """The facts the checks need: headings in order, img attributes, th scopes, URLs, tags seen."""

    def __init__(self, source: str) -> None:
        super().__init__()
        self.headings: list[tuple[int, str]] = []
        self.images: list[dict[str, str | None]] = []
        self.header_scopes: list[str | None] = []
        self.urls: list[str] = []
        self.tags: Counter[str] = Counter()
        self.lang: str | None = None
        self._heading: int | None = None
        self._text: list[str] = []
        self.feed(source)
        self.urls += re.findall(r"url\(([^)]*)\)", source)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        self.tags[tag] += 1
        if tag == "html":
            self.lang = values.get("lang")
        if tag == "img":
            self.images.append(values)
        if tag == "th":
            self.header_scopes.append(values.get("scope"))
        self.urls += [value for name, value in attrs if name in ("src", "href", "action", "srcset") and value]
        if re.fullmatch(r"h[1-6]", tag):
            self._heading, self._text = int(tag[1]), []

    def handle_data(self, data: str) -> None:
        if self._heading is not None:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if self._heading is not None and tag == f"h{self._heading}":
            self.headings.append((self._heading, "".join(self._text)))
            self._heading = None


def check_structure(page: Page, sections: tuple[str, ...]) -> None:
    assert page.lang == "en"
    titles = [title for level, title in page.headings if level == 2]
    assert titles == list(sections)
    levels = [level for level, _ in page.headings]
    assert levels[0] == 1 and levels.count(1) == 1
    assert all(later <= earlier + 1 for earlier, later in itertools.pairwise(levels)), levels
    assert page.images and all((image.get("alt") or "").strip() for image in page.images)
    assert all((image.get("src") or "").startswith("data:image/") for image in page.images)
    assert page.header_scopes and set(page.header_scopes) <= {"col", "row"}
    for tag in ("script", "link", "iframe", "object", "embed", "font"):
        assert page.tags[tag] == 0, tag
    assert not [url for url in page.urls if EXTERNAL.match(url)]
    assert all(url.startswith(("#", "data:")) for url in page.urls), page.urls


def table_rows(source: str, caption: str) -> dict[str, list[str]]:
    """Row header -> cells of the table with `caption` (the page's own markup, one table per caption)."""
    table = source.split(f"<caption>{caption}</caption>", 1)[1].split("</table>", 1)[0]
    rows = {}
    for row in re.findall(r"<tr>(.*?)</tr>", table.split("<tbody>", 1)[1]):
        header = re.search(r'<th scope="row">(.*?)</th>', row)
        if header:
            rows[header.group(1)] = re.findall(r"<td[^>]*>(.*?)</td>", row)
    return rows


@pytest.fixture(scope="module")
def run_output(bundled_run: tuple[Path, object]) -> Path:
    return bundled_run[0]


@pytest.fixture(scope="module")
def manifest(run_output: Path) -> RunManifest:
    return RunManifest.loads((run_output / "manifest.json").read_bytes(), "manifest.json")


def test_every_run_writes_its_report_before_success(run_output: Path) -> None:
    marker = SuccessMarker.loads((run_output / "_SUCCESS").read_bytes(), "_SUCCESS")
    assert {"report.html", "report_sample.json"} <= set(marker.files)
    check_structure(Page((run_output / "report.html").read_text(encoding="utf-8")), RUN_SECTIONS)


def test_report_matches_the_manifest_and_the_input(run_output: Path, manifest: RunManifest,
                                                   sample_dir: Path) -> None:
    source = (run_output / "report.html").read_text(encoding="utf-8")
    summary = table_rows(source, "The run")
    assert summary["images listed"] == [str(manifest.counts.listed)]
    assert summary["featurized"] == [str(manifest.counts.ok)]
    assert summary["rejected"] == [str(manifest.counts.rejected)]
    assert summary["total time (s)"] == [str(manifest.timings_s.total)]
    # per class and split, against the folders themselves (an independent count)
    on_disk = Counter((path.parent.name, path.parent.parent.name) for path in sample_dir.glob("*/*/*.jpg"))
    assert manifest.class_counts is not None
    assert {(c.label, c.split): c.ok for c in manifest.class_counts} == dict(on_disk)
    per_class = table_rows(source, "Featurized photos per class and split, and rejected inputs per class")
    header = re.findall(r'<th scope="col">(.*?)</th>', source.split("per class</caption>", 1)[1].split("</thead>")[0])
    assert header == ["class", "Test", "Training", "rejected"]
    for (label, split), count in on_disk.items():
        assert per_class[label][header.index(split) - 1] == str(count)
    cost_rows = table_rows(source, "CPU and money")
    assert manifest.cost is not None
    assert cost_rows["used vCPU-seconds"] == [str(manifest.cost.vcpu_s)]
    # the sample: bounded per class, deterministic order, every class present
    sample = json.loads((run_output / "report_sample.json").read_text())
    labels = Counter(point["label"] for point in sample["points"])
    assert set(labels) == set(manifest.classes)
    assert max(labels.values()) <= sample["per_class"]
    assert len(re.findall(r'<figure><img src="data:image/jpeg;base64,', source)) == \
        report.THUMBNAILS_PER_CLASS * len(manifest.classes)


def test_cost_is_measured_and_priced_by_the_formula(manifest: RunManifest) -> None:
    measured = manifest.cost
    assert measured is not None
    assert measured.task_cpu_s is not None and measured.task_cpu_s > 0
    assert measured.python_worker_cpu_s is not None and measured.python_worker_cpu_s > 0
    assert measured.vcpu_s == pytest.approx(measured.task_cpu_s + measured.python_worker_cpu_s
                                            + measured.driver_cpu_s, abs=0.01)
    cores = os.cpu_count() or 1
    assert 0 < measured.vcpu_s <= manifest.timings_s.total * cores
    # inference runs in the Python workers during featurize: their CPU cannot exceed that stage's wall x cores
    assert measured.python_worker_cpu_s <= manifest.timings_s.stages["featurize"] * cores
    assert measured.reserved_vcpu_s == pytest.approx(manifest.timings_s.total * manifest.spark.default_parallelism,
                                                     abs=0.01)
    assert measured.estimated_cost == pytest.approx(measured.vcpu_s / 3600 * measured.price_per_vcpu_hour, abs=1e-6)
    assert measured.vcpu_s_per_1000_images == pytest.approx(measured.vcpu_s / manifest.counts.listed * 1000,
                                                            abs=0.01)
    assert measured.price_per_vcpu_hour == 0.048 and "m5.xlarge" in measured.price_assumption


def test_cost_formula_and_connect_nulls() -> None:
    figures = cost.estimate(cost.CpuSeconds(task=10.0, python_workers=62.0, driver=8.0), images=2000,
                            wall_s=50.0, cores=4, price_per_vcpu_hour=0.5)
    assert (figures.vcpu_s, figures.vcpu_s_per_1000_images, figures.reserved_vcpu_s) == (80.0, 40.0, 200.0)
    assert figures.estimated_cost == pytest.approx(80 / 3600 * 0.5)
    assert figures.reserved_cost == pytest.approx(200 / 3600 * 0.5)
    assert "as given" in figures.price_assumption
    connect = cost.estimate(cost.CpuSeconds(task=None, python_workers=None, driver=1.0, missing=("why",)),
                            images=10, wall_s=5.0, cores=2, price_per_vcpu_hour=0.048)
    assert connect.vcpu_s is None and connect.estimated_cost is None and connect.notes[-1] == "why"
    assert report.cost_section(replace(_schema1_manifest(), cost=connect)).body.count("not measured") == 5


def test_python_worker_cpu_counts_the_inference(spark, small_sample: Path) -> None:
    """The accumulator's CPU is at least half the CPU of embedding the same images in this process
    (decode + ONNX Runtime, called directly): it does count the work done in the workers."""
    from fruitpipe import sparkapi
    from fruitpipe.batch import sources
    from fruitpipe.config import DecodeLimits
    from fruitpipe.image import models
    from fruitpipe.image.decode import decode_for_model
    from fruitpipe.image.embed import embed
    from fruitpipe.ml import ImageFeaturizer
    from fruitpipe.runtime import resolve

    listing = sources.list_images(Store(), str(small_sample))
    meter = sparkapi.cpu_meter(spark)
    assert meter is not None
    assert ImageFeaturizer().meter_cpu(meter).transform(sources.to_dataframe(spark, listing)).count() == \
        len(listing.rows)
    spec, runtime = models.resolve("efficientnet-lite0"), resolve("fp32", None)
    pixels = [decode_for_model(Path(path).read_bytes(), DecodeLimits(), spec.preprocessing.input_size,
                               spec.preprocessing.resize)[0] for path, _, _ in listing.rows]
    onnx = str(models.onnx_file(spec))
    embed(pixels[0][None], spec.preprocessing, onnx, 1, runtime)  # the engine is made once per process: not timed
    started = time.process_time()
    embed(np.stack(pixels), spec.preprocessing, onnx, 1, runtime)  # as a worker does: one thread (spark.task.cpus)
    direct = time.process_time() - started
    assert meter.value >= 0.5 * direct, (meter.value, direct)


def test_report_command_adds_the_trained_model(run_output: Path, trained_bundle: Path, tmp_path: Path) -> None:
    from fruitpipe.recognise.contracts import TrainManifest

    target = tmp_path / "with-model.html"
    result = fruitpipe_cli("report", str(run_output), "--model", str(trained_bundle), "--output", str(target))
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == str(target)
    source = target.read_text(encoding="utf-8")
    check_structure(Page(source), (*RUN_SECTIONS, "Trained model"))
    trained = TrainManifest.loads((trained_bundle / "manifest.json").read_bytes(), "manifest.json")
    metrics = table_rows(source, "Test metrics")
    assert metrics["Test accuracy"] == [str(round(trained.metrics.accuracy, 4))]
    assert metrics["Test photos"] == [str(trained.counts.test)]
    assert "Confusion matrix on Test" in source and "Calibration (chosen on the validation part" in source


def test_report_of_an_old_run_and_model_says_what_is_missing(tmp_path: Path) -> None:
    target = tmp_path / "old.html"
    result = fruitpipe_cli("report", str(SCHEMA1 / "run"), "--model", str(SCHEMA1 / "model"), "--output", str(target))
    assert result.returncode == 0, result.stderr[-2000:]
    source = target.read_text(encoding="utf-8")
    assert source.count(report.NOT_RECORDED) == 4  # scatter, per-class counts, thumbnails, cost
    old = _schema1_manifest()
    assert old.cost is None and old.class_counts is None
    missing = fruitpipe_cli("report", str(tmp_path / "nothing"))
    assert missing.returncode != 0 and "is not a fruitpipe run output" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_data_is_escaped() -> None:
    hostile = "<img src=x onerror=alert(1)>&"
    manifest = replace(_schema1_manifest(), class_counts=(ClassCount(hostile, "Test", 3, 1),))
    source = report.render(hostile, [report.class_counts_section(manifest),
                                     report.Section(hostile, report.paragraph(hostile))])
    assert hostile not in source and "&lt;img src=x onerror=alert(1)&gt;&amp;" in source
    assert Page(source).tags["img"] == 0


def test_rejected_inputs_are_bounded(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    errors = tmp_path / "run" / sinks.ERRORS
    errors.mkdir(parents=True)
    for part in range(3):
        rows = [(f"/in/{part}-{index}.jpg", "decode", f"bad {part}-{index}") for index in range(120)]
        pq.write_table(pa.table({name: [row[i] for row in rows] for i, name in enumerate(sinks.ERROR_COLUMNS)}),
                       errors / f"part-{part:05d}.parquet")
    rows = sinks.first_errors(Store(), str(tmp_path / "run"), 200)
    assert len(rows) == 200
    assert rows[0] == ("/in/0-0.jpg", "decode", "bad 0-0") and rows[-1] == ("/in/1-79.jpg", "decode", "bad 1-79")


def _schema1_manifest() -> RunManifest:
    return RunManifest.loads((SCHEMA1 / "run" / "manifest.json").read_bytes(), "schema1 manifest.json")


# --- the page in a browser ---

@pytest.mark.slow
def test_report_in_headless_chromium(run_output: Path, tmp_path: Path) -> None:
    """Opened from disk: renders every section, no console message of level SEVERE, no request but the
    file itself (Chrome's network log), and no horizontal overflow at 390 px; screenshots kept in tmp."""
    page = (run_output / "report.html").resolve()
    with browser_driver(tmp_path, performance_log=True) as driver:
        for width, height in ((390, 844), (1280, 900)):
            driver.set_window_size(width, height)
            driver.get(page.as_uri())
            titles = [element.text for element in driver.find_elements("css selector", "h2")]
            assert titles == list(RUN_SECTIONS)
            inner, scroll = driver.execute_script(
                "return [window.innerWidth, document.documentElement.scrollWidth]")
            assert scroll <= inner, (width, inner, scroll)
            broken = driver.execute_script(
                "return [...document.images].filter(i => !(i.complete && i.naturalWidth > 0)).length")
            assert broken == 0
            screenshot = tmp_path / f"report-{width}px.png"
            driver.save_screenshot(str(screenshot))
            assert screenshot.stat().st_size > 10_000
        severe = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
        assert not severe, severe
        events = [json.loads(entry["message"])["message"] for entry in driver.get_log("performance")]
        requested = {event["params"]["request"]["url"] for event in events  # the page's, not chromium's own tabs
                     if event["method"] == "Network.requestWillBeSent"
                     and event["params"].get("documentURL") == page.as_uri()}
        assert requested and all(url == page.as_uri() or url.startswith("data:") for url in requested), requested
        assert driver.execute_script("return performance.getEntriesByType('resource').length") == 0


def test_sample_is_bounded_deterministic_and_projected(spark) -> None:
    """Synthetic features of 3 classes (300, 50 and 5 photos): at most per_class each, every photo of the
    small class, the same sample twice, and PC1/PC2 equal to the model's own projection of those rows."""
    from fruitpipe.batch import sampling
    from fruitpipe.ml import CentredPCA

    rng = np.random.default_rng(3)
    sizes = {"big": 300, "mid": 50, "small": 5}
    rows = [(f"/in/{label}/{index}.jpg", label, "Training", 0, rng.normal(size=8).astype(float).tolist())
            for label, size in sizes.items() for index in range(size)]
    photos = spark.createDataFrame(rows, "path string, label string, split string, view int, features array<float>")
    pca = CentredPCA(inputCol="features", outputCol="pca", k=3).fit(photos)
    counts = [ClassCount(label, "Training", size, 0) for label, size in sizes.items()]
    sample = sampling.stratified_sample(photos, pca, counts, per_class=20)
    again = sampling.stratified_sample(photos.repartition(3), pca, counts, per_class=20)
    assert sample == again
    assert Counter(point.label for point in sample.points) == {"big": 20, "mid": 20, "small": 5}
    projected = {row["path"]: row["pca"] for row in pca.transform(photos).collect()}
    for point in sample.points:
        assert (point.pc1, point.pc2) == pytest.approx(tuple(projected[point.path][:2]), abs=1e-5)
