"""fruitpipe command line: argv -> config -> library call. No pipeline logic lives here.

User errors (bad flag, bad path, no Java, unknown model) print one line and exit non-zero.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, NoReturn

from fruitpipe import __version__, signals
from fruitpipe.benchmark import DEFAULT_MEASUREMENTS, MEASUREMENTS
from fruitpipe.config import (
    BUNDLED_OUTLIERS,
    DEFAULT_MASTER,
    DEFAULT_MODEL,
    DEFAULT_PRICE_PER_VCPU_HOUR,
    KEEP_WARM_RANGE,
    MAX_AUGMENT_STRENGTH,
    PcaSettings,
    RunConfig,
    S3Options,
    WatchSchedule,
    keep_warm_allowed,
    parse_spark_conf,
)
from fruitpipe.progress import Mode, Reporter
from fruitpipe.runtime import DEFAULT_PRECISION, PRECISION_CHOICES

if TYPE_CHECKING:  # the contracts' modules are imported by the commands that produce them
    from fruitpipe.batch.manifest import RunManifest
    from fruitpipe.batch.watch import PassReport
    from fruitpipe.monitor.contracts import DriftReport
    from fruitpipe.recognise.bundle import Prediction
    from fruitpipe.recognise.contracts import Calibration, Outliers, TrainManifest
    from fruitpipe.recognise.evaluation import EvaluationReport

logger = logging.getLogger("fruitpipe")
EXIT_USAGE, EXIT_ERROR, EXIT_INTERRUPTED, EXIT_TERMINATED = 2, 1, 130, 143
EXIT_DRIFT_ERROR = 2  # fruitpipe drift: 1 means drift, so errors and incomparable runs are 2


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is a single line naming the fix, not a usage dump."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _port(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"expected a TCP port 0-65535, got {text!r}")
    return int(text)


def _number(text: str, accept: Callable[[float], bool], expected: str) -> float:
    """A float flag value `accept` allows; anything else is argparse's one-line error naming `expected`."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    if not accept(value):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def _positive_number(text: str) -> float:
    return _number(text, lambda value: 0 < value < float("inf"), "a positive number")


def _non_negative_number(text: str) -> float:
    return _number(text, lambda value: 0 <= value < float("inf"), "a number >= 0")


def _keep_warm_seconds(text: str) -> float:
    return _number(text, keep_warm_allowed, KEEP_WARM_RANGE)


def _names(text: str) -> tuple[str, ...]:
    """A comma-separated list of names (blanks dropped)."""
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    if not names:
        raise argparse.ArgumentTypeError(f"expected comma-separated names, got {text!r}")
    return names


def _augment_strength(text: str) -> float:
    return _number(text, lambda value: 0 < value <= MAX_AUGMENT_STRENGTH, f"a number in (0, {MAX_AUGMENT_STRENGTH:g}]")


def _fraction(text: str) -> float:
    return _number(text, lambda value: 0.0 < value <= 1.0, "a number in (0, 1]")


def _open_fraction(text: str) -> float:
    return _number(text, lambda value: 0.0 < value < 1.0, "a number in (0, 1)")


def _probability(text: str) -> float:
    return _number(text, lambda value: 0.0 <= value <= 1.0, "a probability between 0 and 1")


def _distance(text: str) -> float:
    return _number(text, lambda value: 0.0 <= value <= 2.0, "a cosine distance between 0 and 2")


TTA_HELP = ("test-time augmentation: average the calibrated probabilities of N views of each photo (the photo "
            "and N-1 fixed rotations/mirrors), 1..16; costs N model runs per photo (default: the tta in "
            "bundle.json, 1 when absent)")
NOVELTY_HELP = ("answer 'not sure' (unknown) when a photo is unlike every class trained on: its cosine distance "
                "to the nearest class centroid is above D, 0..2, 2 turns the gate off (default: the threshold "
                "chosen by 'fruitpipe train', in bundle.json)")
NOT_FRUIT_HELP = ("'on': answer 'not sure' (unknown, 'not a fruit') when the model's 'not a fruit' class, trained "
                  "on outlier photos, is at least as probable as its most probable fruit; 'off': answer with the "
                  "fruit guesses anyway (default: on; a model trained with --outliers none has no such class)")
THRESHOLD_HELP = ("answer 'not sure' (unknown) when the highest calibrated probability is below T, 0..1 "
                  "(default: the threshold chosen by 'fruitpipe train', in bundle.json)")


def _add_s3_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--endpoint-url", help="S3-compatible endpoint (default: $AWS_ENDPOINT_URL, else AWS)")
    parser.add_argument("--region", help="S3 region (default: the AWS chain's)")
    parser.add_argument("--addressing-style", choices=("path", "virtual", "auto"),
                        help="S3 addressing (default: path for a custom endpoint, else auto)")


def _s3_options(args: argparse.Namespace) -> S3Options:
    return S3Options(endpoint_url=args.endpoint_url, region=args.region, addressing_style=args.addressing_style)


def _add_session_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--master", help=f"Spark master URL (default: {DEFAULT_MASTER})")
    parser.add_argument("--remote", metavar="sc://HOST:PORT",
                        help="run on a Spark Connect server instead of a session of our own (default: $SPARK_REMOTE); "
                             "the server's master and settings apply")
    parser.add_argument("--conf", action="append", metavar="KEY=VALUE", help="extra Spark configuration, repeatable")


def _add_progress_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="no progress (a live line on a terminal, stage log lines otherwise) and no info logs")


def _progress(args: argparse.Namespace) -> Reporter:
    """The command's progress reporter on stderr; on a terminal, log records first clear its live line."""
    if args.quiet:
        logging.getLogger().setLevel(logging.WARNING)
    reporter = Reporter.for_stream(sys.stderr, quiet=args.quiet)
    if reporter.mode is Mode.LIVE:
        for handler in logging.getLogger().handlers:
            handler.addFilter(reporter.before_log)
    return reporter


def _session(args: argparse.Namespace) -> tuple[str, str | None]:
    """(master, remote) of a command: --remote or $SPARK_REMOTE picks a Spark Connect server, which
    owns the master; asking for both is refused rather than one silently ignored."""
    remote = args.remote or os.environ.get("SPARK_REMOTE") or None
    if remote and args.master:
        source = "--remote" if args.remote else "SPARK_REMOTE"
        raise ValueError(f"--master cannot apply with {source} (the Spark Connect server has its own master); "
                         "give one of them")
    if remote and getattr(args, "env_archive", None):
        raise ValueError("--env-archive cannot apply to a Spark Connect server (its executors' environment is the "
                         "server's); install fruitpipe there instead")
    return args.master or DEFAULT_MASTER, remote


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="fruitpipe", description="Image features at scale with Spark.")
    parser.add_argument("--version", action="version", version=f"fruitpipe {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    commands.required = True

    run = commands.add_parser("run", help="images -> CNN features -> PCA -> Parquet + manifest")
    _add_run_arguments(run)
    run.add_argument("--overwrite", action="store_true", help="replace an existing fruitpipe output")
    run.add_argument("--resume", action="store_true", help="continue an interrupted run in --output, or bring a "
                     "finished one up to date with the input: only new or changed images are featurized")
    run.add_argument("--json", action="store_true", help="print the manifest as JSON instead of a summary")
    run.set_defaults(handler=_cmd_run)

    watch = commands.add_parser("watch", help="keep --output up to date with --input: an incremental pass every "
                                "--interval seconds in one Spark session, until SIGTERM or Ctrl-C")
    _add_run_arguments(watch)
    watch.add_argument("--interval", type=_non_negative_number, default=60.0, metavar="SECONDS",
                       help="seconds between the end of a pass and the next listing (default: %(default)s)")
    refit = watch.add_mutually_exclusive_group()
    refit.add_argument("--refit-every", type=_positive_int, metavar="N",
                       help="refit PCA every N publishing passes (frozen in between)")
    refit.add_argument("--refit-growth", type=_positive_number, metavar="F",
                       help="refit PCA once the photos grew by the fraction F since its fit (default 0.1)")
    watch.add_argument("--max-passes", type=_positive_int, metavar="N", help="stop after N passes")
    watch.add_argument("--keep-warm", type=_keep_warm_seconds, default=WatchSchedule.keep_warm_s,
                       metavar="SECONDS", help="while waiting, a tiny job every SECONDS keeps the Python workers and "
                       "their loaded model (Spark ends workers idle for a minute); 0: let them go, e.g. with "
                       "dynamic allocation so that idle executors are released (default %(default)s)")
    watch.set_defaults(handler=_cmd_watch)

    report = commands.add_parser("report", help="rebuild a run's report.html (one self-contained page), "
                                 "optionally with a trained model's metrics")
    report.add_argument("run_output", metavar="RUN_OUTPUT", help="output folder of 'fruitpipe run' (local or s3://)")
    report.add_argument("--model", metavar="MODEL_DIR", help="folder written by 'fruitpipe train': adds its "
                        "metrics, confusion matrix and calibration")
    report.add_argument("--drift", metavar="DRIFT_DIR", help="output folder of 'fruitpipe drift': adds its verdict, "
                        "tests and figure")
    report.add_argument("--output", metavar="FILE", help="where to write the page (default: RUN_OUTPUT/report.html)")
    _add_s3_arguments(report)
    report.set_defaults(handler=_cmd_report)

    sample = commands.add_parser("sample-data", help="synthesise a larger data set, or a shifted test set, from "
                                 "the bundled sample")
    sample.add_argument("--output", help="folder to create (required unless --list-shifts)")
    sample.add_argument("--per-class", type=_positive_int, help="images per class in total (required without "
                        "--shift; with --shift default: one per bundled Test image)")
    sample.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    sample.add_argument("--shift", metavar="NAME", help="write the bundled Test images shifted by this family "
                        "(Test/<Class>/<n>_100.jpg), or every evaluation-side family with 'all-evaluation'")
    sample.add_argument("--list-shifts", action="store_true", help="name every shift family, its side and what "
                        "it does, and exit")
    sample.set_defaults(handler=_cmd_sample_data)

    listing = commands.add_parser("models", help="list the model registry")
    listing.set_defaults(handler=_cmd_models)

    upload = commands.add_parser("upload", help="upload a local folder of images to s3://bucket/prefix (idempotent)")
    upload.add_argument("local_dir", metavar="LOCAL_DIR", help="folder to upload (hidden files are skipped)")
    upload.add_argument("target", metavar="S3_URI", help="s3://bucket/prefix; keys are prefix/relative/path")
    _add_s3_arguments(upload)
    upload.add_argument("--workers", type=_positive_int, default=16, help="parallel uploads (default: %(default)s)")
    _add_progress_arguments(upload)
    upload.set_defaults(handler=_cmd_upload)

    iam_policy = commands.add_parser("iam-policy", help="print a least-privilege IAM policy for an input and output")
    iam_policy.add_argument("--input", required=True, help="s3://bucket/prefix read by the run (read-only)")
    iam_policy.add_argument("--output", required=True, help="s3://bucket/prefix written by the run")
    iam_policy.set_defaults(handler=_cmd_iam_policy)

    train = commands.add_parser("train", help="fit a classifier on a run's PCA features; metrics + portable bundle")
    train.add_argument("--features", required=True, metavar="RUN_OUTPUT", help="output folder of 'fruitpipe run'")
    train.add_argument("--output", required=True, metavar="MODEL_DIR", help="model folder to write")
    _add_session_arguments(train)
    _add_s3_arguments(train)
    train.add_argument("--overwrite", action="store_true", help="replace an existing fruitpipe model folder")
    train.add_argument("--json", action="store_true", help="print the model manifest as JSON instead of a summary")
    _add_progress_arguments(train)
    train.add_argument("--target-precision", type=_fraction, default=0.95, metavar="P",
                       help="choose the 'not sure' threshold on validation so that answered photos are right at "
                            "least this often (default: %(default)s)")
    train.add_argument("--outliers", default=BUNDLED_OUTLIERS, metavar="DIR|s3://...|bundled|none",
                       help="photos of things that are not fruit, trained as a 'not a fruit' class so that such "
                            "photos come out unknown (outlier exposure); 'bundled': fruitpipe's own (tools, "
                            "energy installations, fishes), 'none': no such class (default: %(default)s)")
    train.add_argument("--classifier", metavar="NAME",
                       help="use this classifier configuration instead of choosing one on the validation part "
                            "(lr-l2-0.01-standardised, lr-l2-0.001-standardised, lr-l2-0.1-standardised, "
                            "lr-l2-0.01-raw)")
    train.add_argument("--tta", type=int, default=1, metavar="N",
                       help="test-time views per photo recorded in bundle.json for predict, serve and evaluate "
                            "(1..16; default: %(default)s, the photo alone)")
    train.set_defaults(handler=_cmd_train)

    predict = commands.add_parser("predict", help="classify photos with a trained bundle (in process, no Spark)")
    predict.add_argument("--model", required=True, metavar="MODEL_DIR", help="folder written by 'fruitpipe train'")
    predict.add_argument("photos", nargs="+", metavar="PHOTO", help="photos (.jpg, .png, ...; any size)")
    predict.add_argument("--top-k", type=_positive_int, default=5,
                         help="classes shown per photo (default: %(default)s)")
    predict.add_argument("--json", action="store_true", help="one JSON document with every photo's result")
    predict.add_argument("--threshold", type=_probability, metavar="T", help=THRESHOLD_HELP)
    predict.add_argument("--novelty-threshold", type=_distance, metavar="D", help=NOVELTY_HELP)
    predict.add_argument("--not-fruit", choices=("on", "off"), default="on", help=NOT_FRUIT_HELP)
    predict.add_argument("--tta", type=int, metavar="N", help=TTA_HELP)
    predict.set_defaults(handler=_cmd_predict)

    evaluate = commands.add_parser("evaluate", help="score a trained model on a labelled folder: accuracy, top-3, "
                                   "macro-F1, per class, calibration, the \"not sure\" curve")
    evaluate.add_argument("--model", required=True, metavar="MODEL_DIR", help="folder written by 'fruitpipe train'")
    evaluate.add_argument("--input", required=True, metavar="DIR",
                          help="labelled photos, local or s3://: Fruits 360 (<Split>/<Class>/) or flat (<Class>/)")
    evaluate.add_argument("--output", metavar="DIR", help="write metrics.json, per_class.csv, confusion.png, "
                          "reliability.png and coverage.png here (local or s3://)")
    evaluate.add_argument("--split", help="Fruits 360 split to evaluate (default: Test)")
    evaluate.add_argument("--threshold", type=float, metavar="T",
                          help="\"not sure\" threshold on the max probability: report coverage and accuracy at it")
    evaluate.add_argument("--novelty-threshold", type=_distance, metavar="D", help=NOVELTY_HELP)
    evaluate.add_argument("--not-fruit", choices=("on", "off"), default="on", help=NOT_FRUIT_HELP)
    evaluate.add_argument("--spark", action="store_true", help="use the Spark path even for a few local photos "
                          "(default: Spark for s3:// input or more than 2,000 photos; refused with tta > 1, "
                          "which always runs in process)")
    evaluate.add_argument("--tta", type=int, metavar="N", help=TTA_HELP)
    evaluate.add_argument("--json", action="store_true", help="print metrics.json's content instead of a summary")
    _add_progress_arguments(evaluate)
    _add_session_arguments(evaluate)
    _add_s3_arguments(evaluate)
    evaluate.set_defaults(handler=_cmd_evaluate)

    drift = commands.add_parser(
        "drift", help="has the current run's data drifted from the reference run's? exit 0 no drift (a warning "
        "too), 1 drift, 2 error or incomparable runs",
        description="Compares two complete runs in the reference run's PCA space (MMD^2 and a classifier "
        "two-sample test, calibrated against the reference's own halves; reconstruction error for content the "
        "reference never had; with --model, prediction drift) and writes drift.json + drift.png. Exit status: "
        "0 no drift or a warning (said on the console and in drift.json), 1 drift, 2 error or incomparable "
        "runs (other model weights, preprocessing, input size or feature dimension).")
    drift.add_argument("--reference", required=True, metavar="RUN", help="output folder of 'fruitpipe run' whose "
                       "PCA space and own variation the comparison uses (local or s3://)")
    drift.add_argument("--current", required=True, metavar="RUN", help="output folder of the run to check")
    drift.add_argument("--model", metavar="MODEL_DIR", help="folder written by 'fruitpipe train' (local): adds "
                       "prediction drift (class mix, confidence)")
    drift.add_argument("--output", default="fruitpipe-drift", metavar="DIR",
                       help="folder for drift.json and drift.png, only those two files are replaced "
                       "(default: %(default)s; never inside a run folder unless you say so)")
    drift.add_argument("--alpha", type=_open_fraction, default=0.01,
                       help="significance level, shared by the verdict tests (default: %(default)s)")
    drift.add_argument("--sample", type=_positive_int, default=1000, metavar="N",
                       help="rows per side for MMD and the diagnostics (default: %(default)s)")
    drift.add_argument("--seed", type=int, default=0, help="seed of samples, splits and permutations "
                       "(default: %(default)s)")
    drift.add_argument("--json", action="store_true", help="print drift.json's content instead of a summary")
    drift.add_argument("-q", "--quiet", action="store_true", help="no info logs; print the verdict line only")
    _add_session_arguments(drift)
    _add_s3_arguments(drift)
    drift.set_defaults(handler=_cmd_drift)

    bench = commands.add_parser("bench", help="benchmark fruitpipe against the limit and the alternatives "
                                "(bench/results.json + docs/performance.md)")
    bench.add_argument("--images", type=_positive_int, default=10_000, help="main data set size (default: %(default)s)")
    bench.add_argument("--scaling", default="2000,10000,20000", help="fruitpipe run sizes (default: %(default)s)")
    bench.add_argument("--subset", type=_positive_int, default=1_000,
                       help="images for baselines slower than 50 img/s (default: %(default)s)")
    bench.add_argument("--s3-images", type=_positive_int, default=2_000,
                       help="images read from S3 (default: %(default)s)")
    bench.add_argument("--latency-ms", type=float, default=20.0, help="added per S3 request (default: %(default)g)")
    bench.add_argument("--limit-images", type=_positive_int, default=1_280,
                       help="images pushed through the raw model (default: %(default)s)")
    bench.add_argument("--only", help="comma-separated subset of: " + ", ".join(MEASUREMENTS)
                       + " (default: all but the opt-in levers [A/B runs of docs/performance.md], cluster "
                       "[1 vs 2 standalone workers] and serve [fruitpipe serve's latency])")
    bench.add_argument("--resume", action="store_true", help="keep finished measurements of an interrupted run")
    bench.add_argument("--results", default="bench/results.json", help="results file (default: %(default)s)")
    bench.add_argument("--doc", default="docs/performance.md",
                       help="markdown to update ('' for none; default: %(default)s)")
    bench.add_argument("--data-dir", help="where the synthetic images are kept (default: $FRUITPIPE_CACHE/bench-data)")
    bench.set_defaults(handler=_cmd_bench)

    serve = commands.add_parser("serve", help="serve a trained model over HTTP: POST /predict, the upload page at /")
    serve.add_argument("--model", required=True, metavar="MODEL_DIR", help="folder written by 'fruitpipe train'")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    serve.add_argument("--port", type=_port, default=8000, help="TCP port, 0 for any free one (default: %(default)s)")
    serve.add_argument("--max-upload-mb", type=_positive_number, default=10.0,
                       help="largest photo accepted, in MiB (default: %(default)g)")
    serve.add_argument("--threads", type=_positive_int, default=1,
                       help="ONNX Runtime threads per inference (default: %(default)s)")
    serve.add_argument("--concurrency", type=_positive_int,
                       help="photos classified at the same time; others queue (default: one per core)")
    serve.add_argument("--threshold", type=_probability, metavar="T", help=THRESHOLD_HELP)
    serve.add_argument("--novelty-threshold", type=_distance, metavar="D", help=NOVELTY_HELP)
    serve.add_argument("--not-fruit", choices=("on", "off"), default="on", help=NOT_FRUIT_HELP)
    serve.add_argument("--tta", type=int, metavar="N", help=TTA_HELP)
    serve.set_defaults(handler=_cmd_serve)

    package = commands.add_parser("package", help="build the relocatable environment archive for cluster executors")
    package.add_argument("--output", default="dist/fruitpipe_env.tar.gz",
                         help="archive to write, .tar.gz or .zip (default: %(default)s)")
    package.add_argument("--model", action="append", metavar="NAME",
                         help="model whose ONNX file goes inside, repeatable (default: efficientnet-lite0)")
    package.add_argument("--exclude", action="append", metavar="DIST", default=[],
                         help="leave out this distribution and what only it needs, repeatable")
    package.add_argument("--python-prefix", metavar="DIR",
                         help="prefix of the Python 3.x the target has, e.g. /usr (default: this one's base prefix)")
    package.add_argument("--compress-level", type=int, default=4, help="gzip level 0-9 (default: %(default)s)")
    package.add_argument("--overwrite", action="store_true", help="replace an existing archive")
    package.set_defaults(handler=_cmd_package)
    return parser


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """What `run` and `watch` share: input, output, model, PCA, Spark, storage, progress, cost."""
    parser.add_argument("--input", help="folder of images (Fruits 360 or flat layout); default: the bundled sample")
    parser.add_argument("--output", default="fruitpipe-output", help="output folder (default: %(default)s)")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="model name, onnx:PATH or torch:ARCH:WEIGHTS "
                        "(see 'fruitpipe models'; default: %(default)s)")
    choice = parser.add_mutually_exclusive_group()
    choice.add_argument("--k", type=_positive_int, help="number of PCA components")
    choice.add_argument("--variance", type=_fraction, help="keep the smallest k reaching this variance (default 0.95)")
    parser.add_argument("--image-size", type=_positive_int, metavar="PIXELS",
                        help="square model input side (default: the model's, 224 for efficientnet-lite0); "
                        "smaller is faster, less accurate")
    parser.add_argument("--precision", choices=PRECISION_CHOICES, default=DEFAULT_PRECISION,
                        help="fp32 (reference), bf16 (OpenVINO, CPUs with AMX/AVX512-BF16: ~2x faster, features' "
                             "cosine to fp32 >= 0.99) or auto (bf16 where the CPU has it); default: %(default)s")
    parser.add_argument("--augment", type=int, default=0, metavar="N",
                        help="also featurize N augmented views of every Training image (training-side shifts, "
                             "deterministic per path and view; rows carry view 0..N; 0-32, default: %(default)s)")
    parser.add_argument("--augment-families", type=_names, default=(), metavar="A,B",
                        help="the training-side shift families the views draw from, comma-separated (default: the "
                             "five of the default mix; sketch, scale_jitter and cutout are opt-in; "
                             "'fruitpipe sample-data --list-shifts' names them)")
    parser.add_argument("--augment-strength", type=_augment_strength, default=1.0, metavar="F",
                        help="scales each family's strength in the views, 0 < F <= 2 (default: %(default)s)")
    _add_session_arguments(parser)
    parser.add_argument("--env-archive", metavar="PATH", help="environment archive from 'fruitpipe package' for "
                        "executors without fruitpipe: shipped with spark.archives, its python runs the executors")
    _add_s3_arguments(parser)
    parser.add_argument("--csv", action="store_true", help="also write csv/: path, label, split, PCA components")
    _add_progress_arguments(parser)
    parser.add_argument("--price-per-vcpu-hour", type=_positive_number, default=DEFAULT_PRICE_PER_VCPU_HOUR,
                        metavar="PRICE", help="price of one vCPU for one hour, for the cost estimate in the manifest "
                        "and report (default: %(default)s, AWS on-demand m5.xlarge us-east-1, USD 0.192/h for 4 "
                        "vCPUs)")


def _cmd_run(args: argparse.Namespace) -> int:
    from fruitpipe.batch import pipeline

    config = _run_config(args, overwrite=args.overwrite, resume=args.resume)
    manifest = pipeline.run(config, _progress(args))
    print(json.dumps(manifest.to_json(), indent=2, ensure_ascii=False) if args.json else summary(manifest))
    return 0


def _cmd_watch(args: argparse.Namespace) -> int:
    """One line per pass on stdout (flushed: a log collector sees it at once); exit 0 on a clean stop."""
    from fruitpipe.batch import watch

    schedule = WatchSchedule(interval_s=args.interval, refit_every=args.refit_every,
                             refit_growth=args.refit_growth, max_passes=args.max_passes,
                             keep_warm_s=args.keep_warm)
    stop = watch.watch(_run_config(args, overwrite=False, resume=True), schedule,
                       lambda report: print(pass_line(report), flush=True), _progress(args))
    if stop.signum is not None:
        print(f"fruitpipe watch: stopped by {signal.Signals(stop.signum).name} after the pass in progress; "
              f"{args.output} holds the last published version", file=sys.stderr)
    return 0


def pass_line(report: PassReport) -> str:
    """`watch`'s line for one pass."""
    from fruitpipe.batch.manifest import APPENDED

    manifest = report.manifest
    if manifest is None:
        return f"watch pass {report.number}: no change ({report.listed} listed), {report.seconds:.1f} s"
    counts, pca = manifest.counts, manifest.pca
    fit = "refitted" if pca.refitted else f"kept (fitted on {pca.fitted_rows} photos)"
    how = "appended to" if manifest.publication == APPENDED else "published"
    return (f"watch pass {report.number}: {counts.featurized} featurized, {counts.reused} reused, {counts.removed} "
            f"removed, {counts.ok} ok / {counts.rejected} rejected; PCA k={pca.k} {fit}; {report.seconds:.1f} s; "
            f"{how} {manifest.output} ({manifest.run_id})")


def _run_config(args: argparse.Namespace, overwrite: bool, resume: bool) -> RunConfig:
    master, remote = _session(args)
    return RunConfig(
        input=args.input or _bundled_sample(),
        output=args.output,
        model=args.model,
        pca=PcaSettings(k=args.k, variance=args.variance),
        master=master,
        overwrite=overwrite,
        csv=args.csv,
        spark_conf=_run_spark_conf(args),
        s3=_s3_options(args),
        image_size=args.image_size,
        precision=args.precision,
        remote=remote,
        augment=args.augment,
        augment_families=args.augment_families,
        augment_strength=args.augment_strength,
        price_per_vcpu_hour=args.price_per_vcpu_hour,
        resume=resume,
    )


def _cmd_report(args: argparse.Namespace) -> int:
    from fruitpipe.batch import report
    from fruitpipe.storage import Store

    store = Store(_s3_options(args))
    run = report.RunOutput.read(store, args.run_output)
    sections = report.run_sections(run)
    if args.model:
        from fruitpipe.recognise.report_section import model_section

        sections.append(model_section(store, args.model, run.manifest))
    if args.drift:
        from fruitpipe.monitor.report_section import drift_section

        sections.append(drift_section(store, args.drift))
    print(report.write(store, args.run_output, sections, target=args.output))
    return 0


def _run_spark_conf(args: argparse.Namespace) -> tuple[tuple[str, str], ...]:
    conf = parse_spark_conf(args.conf)
    if not args.env_archive:
        return conf
    from fruitpipe.ops import package

    return package.with_env_archive(conf, args.env_archive, args.master or DEFAULT_MASTER)


def _cmd_package(args: argparse.Namespace) -> int:
    from fruitpipe.ops import package

    result = package.build(args.output, model_names=args.model or [DEFAULT_MODEL], python_prefix=args.python_prefix,
                           compress_level=args.compress_level, overwrite=args.overwrite, exclude=args.exclude)
    print(result.describe())
    return 0


def _bundled_sample() -> str:
    from fruitpipe.image import sampledata

    return str(sampledata.bundled_sample_dir())


def summary(manifest: RunManifest) -> str:
    """The few lines a user wants after a run."""
    from fruitpipe.batch.manifest import UNCHANGED

    counts, pca, timings = manifest.counts, manifest.pca, manifest.timings_s
    if manifest.publication == UNCHANGED:
        return (f"fruitpipe run: {manifest.output} is up to date ({counts.listed} listed: nothing new, changed or "
                f"removed since {manifest.run_id}); nothing rewritten, {timings.total:.1f} s")
    return "\n".join([
        f"fruitpipe run {manifest.run_id} done",
        f"  input     {manifest.input} ({manifest.layout} layout, {len(manifest.classes)} classes)",
        f"  output    {manifest.output}",
        f"  images    {counts.ok} ok, {counts.rejected} rejected of {counts.listed} listed"
        + (f", {counts.views} augmented views" if counts.views else ""),
        *([f"  this pass {counts.featurized} featurized, {counts.reused or 0} reused from the journal, "
           f"{counts.removed or 0} removed"] if counts.featurized is not None else []),
        f"  features  {manifest.feature_dim}-d from {manifest.model.name} "
        f"({manifest.model.precision or 'fp32'}, {manifest.model.runtime})",
        f"  PCA       k={pca.k} keeps {pca.variance_kept:.1%} of the variance",
        f"  time      {timings.total:.1f} s total, featurize {timings.stages['featurize']:.1f} s "
        f"({manifest.throughput_img_s:.1f} img/s overall, {manifest.featurize_img_s:.1f} img/s featurizing)",
    ])


def _cmd_sample_data(args: argparse.Namespace) -> int:
    from fruitpipe.image import sampledata, shifts, shiftsets

    if args.list_shifts:
        width = max(len(name) for name in shifts.FAMILIES)
        for family in shifts.FAMILIES.values():
            print(f"{family.name:<{width}}  {family.side:<10}  {family.description}")
        return 0
    if not args.output:
        raise ValueError("sample-data needs --output DIR")
    if args.shift is not None:
        print(json.dumps(shiftsets.write_shifted(args.output, args.shift, args.per_class, args.seed).to_json(),
                         indent=2, ensure_ascii=False))
        return 0
    if args.per_class is None:
        raise ValueError("sample-data needs --per-class N (or --shift NAME)")
    result = sampledata.synthesize(args.output, args.per_class, seed=args.seed)
    print(json.dumps(result, indent=2, ensure_ascii=False, default=str))
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from fruitpipe.image import models

    rows = models.describe_registry()
    width = max(len(row["name"]) for row in rows)
    for row in rows:
        details = "  ".join(part for part in (row["feature_dim"] and f"{row['feature_dim']}-d", row["input"],
                                              row["sha256"] and f"sha256 {row['sha256']}…") if part)
        print(f"{row['name']:<{width}}  {details}  {row['description']}".rstrip())
    return 0


def _cmd_upload(args: argparse.Namespace) -> int:
    from fruitpipe.ops import upload

    result = upload.upload_folder(args.local_dir, args.target, workers=args.workers, s3=_s3_options(args),
                                  progress=_progress(args))
    print(result.describe())
    if not result.ok:
        print(f"fruitpipe upload: error: {len(result.failed)} of {result.files} files failed (listed above)",
              file=sys.stderr)
        return EXIT_ERROR
    return 0


def _cmd_iam_policy(args: argparse.Namespace) -> int:
    from fruitpipe.ops import iam

    print(iam.policy_json(args.input, args.output))
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from fruitpipe.config import TrainConfig
    from fruitpipe.recognise import train

    master, remote = _session(args)
    manifest = train.train(TrainConfig(features=args.features, output=args.output, overwrite=args.overwrite,
                                       master=master, spark_conf=parse_spark_conf(args.conf),
                                       s3=_s3_options(args), remote=remote,
                                       target_precision=args.target_precision, tta=args.tta,
                                       outliers=None if args.outliers == "none" else args.outliers,
                                       classifier=args.classifier), _progress(args))
    print(json.dumps(manifest.to_json(), indent=2, ensure_ascii=False) if args.json
          else train_summary(manifest, args.output))
    return 0


def train_summary(manifest: TrainManifest, output: str) -> str:
    metrics, counts = manifest.metrics, manifest.counts
    return "\n".join([
        f"fruitpipe train done: {output}",
        f"  source      run {manifest.source.run_id} ({len(manifest.classes)} classes)",
        f"  classifier  {manifest.classifier.name} (chosen on {counts.validation} validation images)",
        f"  Test        accuracy {metrics.accuracy:.2%}, macro-F1 {metrics.macro_f1:.4f} "
        f"on {counts.test} images (per class: per_class.csv, confusion_matrix.png)",
        f"  bundle      {output}/bundle (fruitpipe predict --model {output} PHOTO...)",
        *([_calibration_line(manifest.calibration)] if manifest.calibration else []),
        *([_outliers_line(manifest.outliers)] if manifest.outliers else []),
    ])


def _outliers_line(outliers: Outliers) -> str:
    o = outliers
    return (f"  not fruit   {o.photos} outlier photos ({o.source}); validation: {o.validation_rejected:.1%} of "
            f"{o.validation_photos} held-out outliers and {o.validation_fruit_rejected:.1%} of fruit rows "
            "come out 'not a fruit'")


def _calibration_line(calibration: Calibration) -> str:
    c = calibration
    reached = "" if c.target_reached else f", target {c.target_precision:.0%} not reached"
    return (f"  not sure    below {c.threshold:.4f} (temperature {c.temperature:.4g}; validation: "
            f"{c.coverage_at_threshold:.1%} answered, {c.precision_at_threshold:.1%} of them right, "
            f"ECE {c.ece_before:.4f} -> {c.ece_after:.4f}{reached})")


def _cmd_predict(args: argparse.Namespace) -> int:
    from fruitpipe.recognise.bundle import Bundle, predict_photos

    model = Bundle.load(args.model, threshold=args.threshold, tta=args.tta, novelty_threshold=args.novelty_threshold,
                        not_fruit=args.not_fruit == "on")
    results = predict_photos(model, args.photos, args.top_k)
    if args.json:
        print(json.dumps([result.to_dict() for result in results], indent=2, ensure_ascii=False))
    for result in results:
        if result.error is not None:
            print(f"fruitpipe predict: error: {result.photo}: {result.error}", file=sys.stderr)
        elif not args.json:
            print(result.photo)
            if result.answer is not None and result.answer.unknown:
                print(f"  {not_sure(result.predictions)} ({result.answer.reason})")
            print("\n".join(f"  {p.probability:8.2%}  {p.label}" for p in result.predictions))
    failed = sum(result.error is not None for result in results)
    if failed:
        print(f"fruitpipe predict: error: {failed} of {len(results)} photos could not be classified", file=sys.stderr)
        return EXIT_ERROR
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from fruitpipe.config import EvaluateConfig
    from fruitpipe.recognise import evaluate

    master, remote = _session(args)
    report = evaluate.evaluate(EvaluateConfig(
        model=args.model, input=args.input, output=args.output, split=args.split, threshold=args.threshold,
        spark=args.spark, master=master, spark_conf=parse_spark_conf(args.conf), s3=_s3_options(args),
        remote=remote, tta=args.tta, novelty_threshold=args.novelty_threshold, not_fruit=args.not_fruit == "on"),
        _progress(args))
    print(json.dumps(report.to_json(), indent=2, ensure_ascii=False) if args.json
          else evaluate_summary(report, args.output))
    return 0


def evaluate_summary(report: EvaluationReport, output: str | None) -> str:
    metrics = report.metrics
    what = f"{report.split} split" if report.split else "flat folder"
    lines = [
        f"fruitpipe evaluate: {report.input} ({what}, {len(report.folders)} classes, through the {report.engine}"
        + (f", {report.tta} views per photo)" if report.tta > 1 else ")"),
        f"  photos      {metrics.count} scored, {len(report.unreadable)} unreadable",
        f"  accuracy    {metrics.accuracy:.2%} (top-3 {metrics.top3_accuracy:.2%}), macro-F1 {metrics.macro_f1:.4f}",
        f"  calibration ECE {metrics.ece:.4f} (15 equal-width bins of the max probability)"
        + ("" if metrics.log_loss is None else f", log-loss {metrics.log_loss:.4f}"),
    ]
    if metrics.at_threshold is not None:
        point = metrics.at_threshold
        accuracy = "-" if point.accuracy is None else f"{point.accuracy:.2%}"
        lines.append(f"  threshold   {point.threshold:g}: answers {point.coverage:.2%}, accuracy {accuracy} on those")
    if report.unknown_folders:
        lines.append("  not scored  " + ", ".join(f"{folder.name} ({folder.photos} photos)"
                                                  for folder in report.unknown_folders) + ": no such class")
    if output:
        lines.append(f"  written     {output}: metrics.json, per_class.csv, confusion.png, reliability.png, "
                     "coverage.png")
    return "\n".join(lines)


def not_sure(predictions: Sequence[Prediction]) -> str:
    """The console line of an unknown answer: its two best guesses."""
    guesses = " or ".join(f"{p.label} ({p.probability:.0%})" for p in predictions[:2])
    return f"not sure: maybe {guesses}"


def _cmd_drift(args: argparse.Namespace) -> int:
    """Exit 0 no drift or warning, 1 drift, 2 anything that stopped the comparison (one line)."""
    from fruitpipe.config import DriftConfig

    if args.quiet:
        logging.getLogger().setLevel(logging.WARNING)
    try:
        from fruitpipe.monitor import drift

        master, remote = _session(args)
        report = drift.run_drift(DriftConfig(
            reference=args.reference, current=args.current, output=args.output, model=args.model,
            alpha=args.alpha, sample=args.sample, seed=args.seed, master=master,
            spark_conf=parse_spark_conf(args.conf), s3=_s3_options(args), remote=remote))
    except KeyboardInterrupt:
        raise
    except (ValueError, OSError) as exc:
        print(f"fruitpipe drift: error: {exc}", file=sys.stderr)
        return EXIT_DRIFT_ERROR
    except Exception as exc:  # a failed Spark job or a bug: still one line and exit 2, the scheduler's "error"
        logger.debug("drift failed", exc_info=True)
        first_line = (str(exc).strip().splitlines() or [""])[0][:300]
        print(f"fruitpipe drift: failed: {type(exc).__name__}: {first_line} (run with -v for the traceback)",
              file=sys.stderr)
        return EXIT_DRIFT_ERROR
    if args.json:
        print(report.dumps())
    elif args.quiet:
        print(drift_verdict_line(report))
    else:
        print(drift_summary(report, args.output))
    return 1 if report.status == "drift" else 0


def drift_verdict_line(report: DriftReport) -> str:
    figures = ", ".join(f"{t.name} {t.statistic:.4g} (p {t.p_value:.2g})" for t in report.tests)
    return f"fruitpipe drift: {report.status}: {figures}"


def drift_summary(report: DriftReport, output: str) -> str:
    lines = [
        drift_verdict_line(report),
        f"  reference   {report.reference.output} ({report.reference.rows} photos)",
        f"  current     {report.current.output} ({report.current.rows} photos)",
        f"  space       {report.space.model}, reference PCA k={report.space.k}",
        *(f"  reason      {reason}" for reason in report.reasons),
    ]
    shifted = [c for c in report.components if c.q_value < report.settings.alpha]
    lines.append(f"  components  {len(shifted)} of {len(report.components)} shifted (KS, BH q < "
                 f"{report.settings.alpha:g}; diagnostic)")
    if report.status == "warning":
        lines.append("  exit 0      a warning is not drift (see the reasons)")
    lines.append(f"  written     {output}: drift.json, drift.png ({report.seconds:.1f} s)")
    return "\n".join(lines)


def _integers(text: str, flag: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise ValueError(f"{flag} expects comma-separated integers, got {text!r}") from None


def _cmd_bench(args: argparse.Namespace) -> int:
    from pathlib import Path

    from fruitpipe.benchmark import harness, report

    options = harness.BenchOptions(
        images=args.images, scaling=_integers(args.scaling, "--scaling"), subset=args.subset,
        s3_images=args.s3_images, latency_ms=args.latency_ms, limit_images=args.limit_images,
        only=tuple(args.only.split(",")) if args.only else DEFAULT_MEASUREMENTS, resume=args.resume,
        results=Path(args.results), doc=Path(args.doc) if args.doc else None,
        command=" ".join(["fruitpipe", *sys.argv[1:]]),
    )
    if args.data_dir:
        options = dataclasses.replace(options, data_dir=Path(args.data_dir))
    results = harness.run(options)
    print(report.table(results))
    failed = [key for key, result in results["measurements"].items() if "error" in result]
    if failed:
        print(f"fruitpipe bench: error: {len(failed)} measurement(s) failed: {', '.join(failed)}", file=sys.stderr)
        return EXIT_ERROR
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from fruitpipe.recognise import serve

    serve.serve(args.model, host=args.host, port=args.port, max_upload_bytes=int(args.max_upload_mb * 2**20),
                threads=args.threads, concurrency=args.concurrency, threshold=args.threshold, tta=args.tta,
                novelty_threshold=args.novelty_threshold, not_fruit=args.not_fruit == "on")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("py4j", "matplotlib", "PIL", "botocore", "boto3", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    handler: Callable[[argparse.Namespace], int] = args.handler
    signals.install_terminate_handler()
    try:
        return handler(args)
    except (ValueError, OSError) as exc:
        print(f"fruitpipe {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt as stop:  # Ctrl-C, or SIGTERM (signals.Terminated)
        print(f"fruitpipe {args.command}: {interrupted(args)}", file=sys.stderr)
        return EXIT_TERMINATED if isinstance(stop, signals.Terminated) else EXIT_INTERRUPTED
    except Exception as exc:  # a failed Spark job (Py4JJavaError...) or a bug: one line, -v for the traceback
        logger.debug("%s failed", args.command, exc_info=True)
        from fruitpipe.batch import session

        missing = session.executors_without(exc)
        if missing:
            print(f"fruitpipe {args.command}: error: {session.executors_without_message(missing)}", file=sys.stderr)
            return EXIT_ERROR
        first_line = (str(exc).strip().splitlines() or [""])[0][:300]
        print(f"fruitpipe {args.command}: failed: {type(exc).__name__}: {first_line} "
              "(run with -v for the traceback)", file=sys.stderr)
        return EXIT_ERROR


def interrupted(args: argparse.Namespace) -> str:
    """The one line after Ctrl-C or SIGTERM: what is (not) left behind and how to go on."""
    if args.command == "run":
        return (f"interrupted: nothing new was published to {args.output} (no partial output; the images "
                "featurized so far are kept in its journal); run the same command with --resume to continue")
    if args.command == "watch":
        return (f"interrupted during a pass: {args.output} keeps its last published version (the pass's images "
                "featurized so far are kept in its journal); run the same command to continue")
    if args.command == "train":
        return (f"interrupted: nothing was published to {args.output} (no _SUCCESS; the partial output was "
                "removed); run the command again")
    if args.command == "upload":
        return ("interrupted: the files uploaded so far stay; run it again to upload the rest "
                "(files already there are skipped)")
    if args.command == "evaluate" and args.output:
        return f"interrupted: {args.output} may hold a partial evaluation; run the command again"
    return "interrupted"


if __name__ == "__main__":
    sys.exit(main())
