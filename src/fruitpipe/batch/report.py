"""`<output>/report.html`: one self-contained page about a run, built from the run's typed contracts.

Self-contained means opened from disk with no network: images are data URIs, the CSS is inline, there
is no script and no font, and a Content-Security-Policy forbids fetching anything else. The page is a
list of `Section`s (title + HTML body); this module makes the run's, higher layers add theirs (the
trained model's, recognise.report_section) and `write` joins them. Every string that comes from data
(class names, paths, reasons) is escaped here with `html.escape` (`text`), never pasted raw.

What it reads is small whatever the run's size: the manifest, the sample drawn at run time
(`report_sample.json`), the first `ERROR_ROWS` rows of errors/, and a few thumbnails per class.
"""
from __future__ import annotations

import base64
import html
import io
import logging
import re
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from fruitpipe import storage
from fruitpipe.batch import plots, sinks
from fruitpipe.batch.manifest import ReportSample, RunManifest
from fruitpipe.config import DecodeLimits
from fruitpipe.storage import Store

logger = logging.getLogger(__name__)

ERROR_ROWS = 200  # rejected inputs listed in the page; the total is given beside them
THUMBNAILS_PER_CLASS = 4
THUMBNAIL_PX = 96
THUMBNAIL_MAX_BYTES = 20 * 1024 * 1024  # a thumbnail's source file larger than this is not read
READ_THREADS = 8
PER_IMAGE_STAGES = ("featurize", "pca_fit", "write")  # stages that pass over every image: images/s means something
NOT_RECORDED = "Not recorded by this run (written by a fruitpipe before the report existed)."
CSS = """
:root { color: #1b1b1b; background: #ffffff; font-family: system-ui, -apple-system, "Segoe UI", sans-serif; }
body { margin: 0 auto; max-width: 64rem; padding: 0 1rem 3rem; line-height: 1.45; }
h1 { font-size: 1.6rem; margin-top: 1.2rem; }
h2 { font-size: 1.3rem; border-bottom: 2px solid #2f5d8a; padding-bottom: .2rem; margin-top: 2.2rem; }
h3 { font-size: 1.05rem; margin: 1rem 0 .4rem; }
img { max-width: 100%; height: auto; }
.scroll { overflow-x: auto; max-width: 100%; }
table { border-collapse: collapse; margin: .5rem 0 1rem; font-size: .92rem; }
caption { text-align: left; font-weight: 600; padding: .3rem 0; }
th, td { border: 1px solid #c4c4c4; padding: .25rem .5rem; text-align: left; vertical-align: top;
         overflow-wrap: anywhere; }
th { background: #e8eef4; }
td.number { text-align: right; font-variant-numeric: tabular-nums; }
nav ul { padding-left: 1.2rem; }
a { color: #1d4f7c; }
.thumbs { display: flex; flex-wrap: wrap; gap: .5rem; }
.thumbs figure { margin: 0; width: 96px; }
.thumbs figcaption { font-size: .72rem; color: #3d3d3d; overflow-wrap: anywhere; }
.note { color: #3d3d3d; font-size: .9rem; }
"""
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


@dataclass(frozen=True)
class Section:
    """One part of the page: a heading (plain text, escaped when rendered) and an HTML body (built with
    this module's helpers, data already escaped). The anchor is derived from the title."""

    title: str
    body: str

    @property
    def anchor(self) -> str:
        return re.sub(r"[^a-z0-9]+", "-", self.title.lower()).strip("-") or "section"


@dataclass(frozen=True)
class RunOutput:
    """What the run's sections show, read from a run output (or handed over by the pipeline that just
    wrote it): the manifest, the sample, the first rejected inputs and the sample's thumbnails."""

    uri: str
    manifest: RunManifest
    sample: ReportSample | None
    errors: tuple[tuple[str, str, str], ...]
    thumbnails: dict[str, list[tuple[str, str | None]]] = field(default_factory=dict)  # class -> (path, data URI)

    @classmethod
    def read(cls, store: Store, output: str, manifest: RunManifest | None = None,
             sample: ReportSample | None = None) -> RunOutput:
        """`manifest` / `sample` when the caller has them, else read from `output`; a run written before
        the sample existed has none (its sections say so)."""
        if manifest is None:
            where = f"{sinks.MANIFEST} of {storage.redact(output)}"
            try:
                raw = store.read_bytes(storage.join(output, sinks.MANIFEST))
            except FileNotFoundError:
                raise ValueError(f"{storage.redact(output)} is not a fruitpipe run output (no {sinks.MANIFEST})") \
                    from None
            manifest = RunManifest.loads(raw, where)
        if sample is None and store.exists(storage.join(output, sinks.REPORT_SAMPLE)):
            sample = ReportSample.loads(store.read_bytes(storage.join(output, sinks.REPORT_SAMPLE)),
                                        f"{sinks.REPORT_SAMPLE} of {storage.redact(output)}")
        errors = tuple(sinks.first_errors(store, output, ERROR_ROWS)) if manifest.counts.rejected else ()
        return cls(output, manifest, sample, errors, read_thumbnails(store, sample) if sample else {})


def read_thumbnails(store: Store, sample: ReportSample) -> dict[str, list[tuple[str, str | None]]]:
    """The first THUMBNAILS_PER_CLASS sample photos of each class as JPEG data URIs (None: unreadable
    now, e.g. moved since the run), read from the input through the store, a few at a time."""
    chosen: dict[str, list[str]] = {}
    for point in sample.points:
        paths = chosen.setdefault(point.label or "(no class)", [])
        if len(paths) < THUMBNAILS_PER_CLASS:
            paths.append(point.path)
    flat = [path for paths in chosen.values() for path in paths]
    with ThreadPoolExecutor(max_workers=READ_THREADS) as pool:
        images = dict(zip(flat, pool.map(lambda path: _thumbnail(store, path), flat), strict=True))
    return {label: [(path, images[path]) for path in paths] for label, paths in chosen.items()}


def _thumbnail(store: Store, path: str) -> str | None:
    from PIL import Image

    from fruitpipe.image.decode import decode_rgb

    try:
        image = decode_rgb(store.read_bytes(path, limit=THUMBNAIL_MAX_BYTES), DecodeLimits())
    except Exception as exc:  # any reason: the page shows the photo as unavailable, the report still renders
        logger.warning("thumbnail of %s: %s", storage.redact(path), exc)
        return None
    image.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return data_uri(buffer.getvalue(), "image/jpeg")


# --- HTML helpers (shared with the sections of higher layers) ---

def text(value: object) -> str:
    """Any value from data, escaped for HTML text and attributes."""
    return html.escape(str(value), quote=True)


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def image(png: bytes, alt: str, mime: str = "image/png") -> str:
    """An embedded image with its alt text (required: the figure's content in words)."""
    return f'<img src="{data_uri(png, mime)}" alt="{text(alt)}">'


def paragraph(content: str, note: bool = False) -> str:
    """A paragraph of plain text (escaped)."""
    opening = '<p class="note">' if note else "<p>"
    return f"{opening}{text(content)}</p>"


def table(caption: str, headers: Sequence[str], rows: Iterable[Sequence[object]], row_headers: bool = True) -> str:
    """A captioned table: column headers `<th scope="col">`, the first cell of each row `<th scope="row">`
    when `row_headers`; numbers right-aligned; every cell escaped. Wide tables scroll on their own so
    the page never does."""
    head = "".join(f'<th scope="col">{text(header)}</th>' for header in headers)
    body = []
    for row in rows:
        cells = []
        for index, value in enumerate(row):
            if index == 0 and row_headers:
                cells.append(f'<th scope="row">{text(value)}</th>')
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                cells.append(f'<td class="number">{text(value)}</td>')
            else:
                cells.append(f"<td>{text('' if value is None else value)}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    return (f'<div class="scroll"><table><caption>{text(caption)}</caption><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table></div>")


def render(title: str, sections: Sequence[Section]) -> str:
    """The whole page: title, a table of contents, the sections in order (h2 each)."""
    contents = "".join(f'<li><a href="#{section.anchor}">{text(section.title)}</a></li>' for section in sections)
    parts = "".join(f'<section id="{section.anchor}" aria-labelledby="{section.anchor}-h">'
                    f'<h2 id="{section.anchor}-h">{text(section.title)}</h2>{section.body}</section>'
                    for section in sections)
    return ("<!DOCTYPE html>\n"
            '<html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            f"<title>{text(title)}</title><style>{CSS}</style></head>"
            f"<body><header><h1>{text(title)}</h1></header>"
            f'<nav aria-label="Contents"><ul>{contents}</ul></nav><main>{parts}</main></body></html>\n')


def write(store: Store, output: str, sections: Sequence[Section], target: str | None = None,
          title: str | None = None) -> str:
    """Render and write the page (default `<output>/report.html`); returns where it went."""
    destination = target or storage.join(output, sinks.REPORT)
    store.write_bytes(destination, render(title or f"fruitpipe run report: {output}", sections).encode("utf-8"))
    return destination


# --- the run's sections ---

def run_sections(run: RunOutput) -> list[Section]:
    """Summary, PCA spectrum, scatter, per-class counts, thumbnails, rejected inputs, cost: in that order."""
    return [summary_section(run.manifest), spectrum_section(run.manifest), scatter_section(run),
            class_counts_section(run.manifest), thumbnails_section(run), rejected_section(run),
            cost_section(run.manifest)]


def summary_section(manifest: RunManifest) -> Section:
    counts, timings, model = manifest.counts, manifest.timings_s, manifest.model
    overview = [
        ("run id", manifest.run_id), ("input", manifest.input), ("output", manifest.output),
        ("layout", manifest.layout), ("classes", len(manifest.classes)),
        ("images listed", counts.listed), ("featurized", counts.ok), ("rejected", counts.rejected),
        ("augmented views", counts.views if counts.views is not None else "not recorded"),
        ("total time (s)", timings.total),
        ("throughput, whole run (images/s)", manifest.throughput_img_s),
        ("throughput, featurize (images/s)", manifest.featurize_img_s),
    ]
    stages = [(name, seconds, round(counts.listed / seconds, 1) if seconds > 0 and name in PER_IMAGE_STAGES else None)
              for name, seconds in timings.stages.items()]
    fingerprint = [
        ("model", model.name), ("architecture", model.arch), ("weights sha256", model.weights_sha256),
        ("ONNX graph sha256", model.onnx_sha256 or "not recorded"), ("runtime", model.runtime or "not recorded"),
        ("precision", model.precision or "fp32"), ("input size (px)", model.input_size),
        ("preprocessing", ", ".join(f"{key} {value}" for key, value in model.preprocessing.to_json().items())),
        ("feature dimension", manifest.feature_dim),
    ]
    spark = manifest.spark
    setting = [("master", spark.master or "unknown"), ("application", spark.application_id or "unknown"),
               ("default parallelism", spark.default_parallelism), ("partitions", spark.partitions)]
    executors = (table("Executors", ("id", "host", "active", "completed tasks", "failed tasks"),
                       [(e.id, e.host, "yes" if e.active else "no", e.completed_tasks, e.failed_tasks)
                        for e in spark.executors])
                 if spark.executors is not None
                 else paragraph("Executors: not available through Spark Connect.", note=True))
    return Section("Run summary", table("The run", ("what", "value"), overview)
                   + table("Time per stage; images/s where a stage passes over every image",
                           ("stage", "seconds", "images/s"), stages)
                   + table("Model and preprocessing fingerprint", ("what", "value"), fingerprint)
                   + table("Spark", ("what", "value"), setting) + executors)


def spectrum_section(manifest: RunManifest) -> Section:
    pca = manifest.pca
    png = plots.scree_png(list(pca.explained_variance_ratio), pca.k, pca.variance_target)
    target = "k given" if pca.variance_target is None else f"the smallest k reaching {pca.variance_target:.0%}"
    described = (f"Scree plot: explained variance per principal component (bars) and cumulative (line) for the "
                 f"first components of {len(pca.explained_variance_ratio)}; chosen k = {pca.k} keeps "
                 f"{pca.variance_kept:.1%} of the variance.")
    return Section("PCA: explained variance",
                   paragraph(f"k = {pca.k} ({target}) keeps {pca.variance_kept:.1%} of the variance of the "
                             f"{manifest.feature_dim}-d features.") + image(png, described))


def scatter_section(run: RunOutput) -> Section:
    title = "PCA scatter by class"
    if run.sample is None:
        return Section(title, paragraph(NOT_RECORDED, note=True))
    points = [(point.pc1, point.pc2, point.label or "(no class)") for point in run.sample.points]
    classes = sorted({label for _, _, label in points})
    png = plots.pca_scatter_png(points, classes)
    return Section(title, paragraph(
        f"A deterministic sample of up to {run.sample.per_class} photos per class ({len(points)} in all), chosen "
        "by a hash of the path, on the first two principal components.")
        + image(png, f"Scatter plot of {len(points)} sampled photos of {len(classes)} classes on the first two "
                     "principal components, one colour per class."))


def class_counts_section(manifest: RunManifest) -> Section:
    title = "Photos per class and split"
    if manifest.class_counts is None:
        return Section(title, paragraph(NOT_RECORDED, note=True))
    splits = sorted({count.split or "(none)" for count in manifest.class_counts})
    cells: dict[tuple[str, str], tuple[int, int]] = {
        (count.label or "(no class)", count.split or "(none)"): (count.ok, count.rejected)
        for count in manifest.class_counts}
    labels = sorted({label for label, _ in cells})
    rows = [(label, *(cells.get((label, split), (0, 0))[0] for split in splits),
             sum(cells.get((label, split), (0, 0))[1] for split in splits)) for label in labels]
    return Section(title, table("Featurized photos per class and split, and rejected inputs per class",
                                ("class", *splits, "rejected"), rows)
                   + paragraph("Files refused at listing (unsafe paths) have no trusted class: they are counted "
                               "in the rejected inputs only.", note=True))


def thumbnails_section(run: RunOutput) -> Section:
    title = "Sample photos per class"
    if run.sample is None:
        return Section(title, paragraph(NOT_RECORDED, note=True))
    blocks = []
    for label, photos in run.thumbnails.items():
        figures = "".join(
            f'<figure><img src="{uri}" alt="{text(f"{label}: {_name(path)}")}" width="{THUMBNAIL_PX}" '
            f'height="{THUMBNAIL_PX}"><figcaption>{text(_name(path))}</figcaption></figure>' if uri
            else f"<figure><figcaption>{text(_name(path))}: not readable now</figcaption></figure>"
            for path, uri in photos)
        blocks.append(f'<h3>{text(label)}</h3><div class="thumbs">{figures}</div>')
    return Section(title, paragraph(f"The first {THUMBNAILS_PER_CLASS} photos per class of the sample, read from "
                                    "the input.") + "".join(blocks))


def rejected_section(run: RunOutput) -> Section:
    total = run.manifest.counts.rejected
    title = "Rejected inputs"
    if not total:
        return Section(title, paragraph("No input was rejected."))
    shown = len(run.errors)
    caption = f"{total} rejected inputs" + (f", the first {shown} shown" if shown < total else "")
    return Section(title, table(caption, ("path", "stage", "reason"), run.errors))


def cost_section(manifest: RunManifest) -> Section:
    title = "Cost"
    cost = manifest.cost
    if cost is None:
        return Section(title, paragraph(NOT_RECORDED, note=True))
    missing = "not measured"
    rows = [
        ("Spark task CPU, JVM (s)", cost.task_cpu_s if cost.task_cpu_s is not None else missing),
        ("Python worker CPU, featurize (s)",
         cost.python_worker_cpu_s if cost.python_worker_cpu_s is not None else missing),
        ("driver Python CPU (s)", cost.driver_cpu_s),
        ("used vCPU-seconds", cost.vcpu_s if cost.vcpu_s is not None else missing),
        ("used vCPU-seconds per 1,000 images",
         cost.vcpu_s_per_1000_images if cost.vcpu_s_per_1000_images is not None else missing),
        ("reserved vCPU-seconds (wall x cores)", cost.reserved_vcpu_s),
        ("price per vCPU-hour (assumed)", cost.price_per_vcpu_hour),
        ("estimated cost of the used CPU",
         f"{cost.estimated_cost:.6f}" if cost.estimated_cost is not None else missing),
        ("estimated cost of the reserved cores", f"{cost.reserved_cost:.6f}"),
    ]
    notes = "".join(f"<li>{text(note)}</li>" for note in cost.notes)
    return Section(title, table("CPU and money", ("what", "value"), rows)
                   + paragraph(f"Price assumption: {cost.price_assumption}.")
                   + f'<ul class="note">{notes}</ul>')


def _name(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]
