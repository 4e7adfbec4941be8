"""fruitpipe command line: argv -> config -> library call. No pipeline logic lives here.

User errors (bad flag, bad path, no Java, unknown model) print one line and exit non-zero.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from fruitpipe import __version__
from fruitpipe.config import DEFAULT_MASTER, DEFAULT_MODEL, PcaSettings, RunConfig, S3Options, parse_spark_conf

logger = logging.getLogger("fruitpipe")
EXIT_USAGE, EXIT_ERROR, EXIT_INTERRUPTED = 2, 1, 130


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


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}") from None
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}")
    return value


def _add_s3_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--endpoint-url", help="S3-compatible endpoint (default: $AWS_ENDPOINT_URL, else AWS)")
    parser.add_argument("--region", help="S3 region (default: the AWS chain's)")
    parser.add_argument("--addressing-style", choices=("path", "virtual", "auto"),
                        help="S3 addressing (default: path for a custom endpoint, else auto)")


def _s3_options(args: argparse.Namespace) -> S3Options:
    return S3Options(endpoint_url=args.endpoint_url, region=args.region, addressing_style=args.addressing_style)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="fruitpipe", description="Image features at scale with Spark.")
    parser.add_argument("--version", action="version", version=f"fruitpipe {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    commands.required = True

    run = commands.add_parser("run", help="images -> CNN features -> PCA -> Parquet + manifest")
    run.add_argument("--input", help="folder of images (Fruits 360 or flat layout); default: the bundled sample")
    run.add_argument("--output", default="fruitpipe-output", help="output folder (default: %(default)s)")
    run.add_argument("--model", default=DEFAULT_MODEL, help="model name, onnx:PATH or torch:ARCH:WEIGHTS "
                     "(see 'fruitpipe models'; default: %(default)s)")
    choice = run.add_mutually_exclusive_group()
    choice.add_argument("--k", type=_positive_int, help="number of PCA components")
    choice.add_argument("--variance", type=_fraction, help="keep the smallest k reaching this variance (default 0.95)")
    run.add_argument("--master", default=DEFAULT_MASTER, help="Spark master URL (default: %(default)s)")
    run.add_argument("--conf", action="append", metavar="KEY=VALUE", help="extra Spark configuration, repeatable")
    _add_s3_arguments(run)
    run.add_argument("--overwrite", action="store_true", help="replace an existing fruitpipe output")
    run.add_argument("--csv", action="store_true", help="also write csv/: path, label, split, PCA components")
    run.add_argument("--json", action="store_true", help="print the manifest as JSON instead of a summary")
    run.set_defaults(handler=_cmd_run)

    sample = commands.add_parser("sample-data", help="synthesise a larger data set from the bundled sample")
    sample.add_argument("--output", required=True, help="folder to create")
    sample.add_argument("--per-class", type=_positive_int, required=True, help="images per class in total")
    sample.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    sample.set_defaults(handler=_cmd_sample_data)

    listing = commands.add_parser("models", help="list the model registry")
    listing.set_defaults(handler=_cmd_models)

    upload = commands.add_parser("upload", help="upload a local folder of images to s3://bucket/prefix (idempotent)")
    upload.add_argument("local_dir", metavar="LOCAL_DIR", help="folder to upload (hidden files are skipped)")
    upload.add_argument("target", metavar="S3_URI", help="s3://bucket/prefix; keys are prefix/relative/path")
    _add_s3_arguments(upload)
    upload.add_argument("--workers", type=_positive_int, default=16, help="parallel uploads (default: %(default)s)")
    upload.set_defaults(handler=_cmd_upload)

    iam_policy = commands.add_parser("iam-policy", help="print a least-privilege IAM policy for an input and output")
    iam_policy.add_argument("--input", required=True, help="s3://bucket/prefix read by the run (read-only)")
    iam_policy.add_argument("--output", required=True, help="s3://bucket/prefix written by the run")
    iam_policy.set_defaults(handler=_cmd_iam_policy)
    return parser


def _cmd_run(args: argparse.Namespace) -> int:
    from fruitpipe import pipeline

    config = RunConfig(
        input=args.input or _bundled_sample(),
        output=args.output,
        model=args.model,
        pca=PcaSettings(k=args.k, variance=args.variance),
        master=args.master,
        overwrite=args.overwrite,
        csv=args.csv,
        spark_conf=parse_spark_conf(args.conf),
        s3=_s3_options(args),
    )
    manifest = pipeline.run(config)
    print(json.dumps(manifest, indent=2, ensure_ascii=False) if args.json else summary(manifest))
    return 0


def _bundled_sample() -> str:
    from fruitpipe import sampledata

    return str(sampledata.bundled_sample_dir())


def summary(manifest: dict[str, Any]) -> str:
    """The few lines a user wants after a run."""
    counts, pca, timings = manifest["counts"], manifest["pca"], manifest["timings_s"]
    return "\n".join([
        f"fruitpipe run {manifest['run_id']} done",
        f"  input     {manifest['input']} ({manifest['layout']} layout, {len(manifest['classes'])} classes)",
        f"  output    {manifest['output']}",
        f"  images    {counts['ok']} ok, {counts['rejected']} rejected of {counts['listed']} listed",
        f"  features  {manifest['feature_dim']}-d from {manifest['model']['name']}",
        f"  PCA       k={pca['k']} keeps {pca['variance_kept']:.1%} of the variance",
        f"  time      {timings['total']:.1f} s total, featurize {timings['featurize']:.1f} s "
        f"({manifest['throughput_img_s']:.1f} img/s overall, {manifest['featurize_img_s']:.1f} img/s featurizing)",
    ])


def _cmd_sample_data(args: argparse.Namespace) -> int:
    from fruitpipe import sampledata

    result = sampledata.synthesize(args.output, args.per_class, seed=args.seed)
    print(json.dumps(result, indent=2, ensure_ascii=False, default=str))
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from fruitpipe import models

    rows = models.describe_registry()
    width = max(len(row["name"]) for row in rows)
    for row in rows:
        details = "  ".join(part for part in (row["feature_dim"] and f"{row['feature_dim']}-d", row["input"],
                                              row["sha256"] and f"sha256 {row['sha256']}…") if part)
        print(f"{row['name']:<{width}}  {details}  {row['description']}".rstrip())
    return 0


def _cmd_upload(args: argparse.Namespace) -> int:
    from fruitpipe import upload

    result = upload.upload_folder(args.local_dir, args.target, workers=args.workers, s3=_s3_options(args))
    print(result.describe())
    if not result.ok:
        print(f"fruitpipe upload: error: {len(result.failed)} of {result.files} files failed (listed above)",
              file=sys.stderr)
        return EXIT_ERROR
    return 0


def _cmd_iam_policy(args: argparse.Namespace) -> int:
    from fruitpipe import iam

    print(iam.policy_json(args.input, args.output))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("py4j", "matplotlib", "PIL", "botocore", "boto3", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except (ValueError, OSError) as exc:
        print(f"fruitpipe {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("fruitpipe: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
