"""Writers for the output contract: features/, errors/, pca_model/, scree.png, manifest.json, _SUCCESS.

`_SUCCESS` is written last and lists every file of the run: a reader that finds it can trust
the rest. An existing output is replaced only on request, and only if it is a fruitpipe output.
"""
from __future__ import annotations

import json
import logging
from typing import Any

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from fruitpipe import storage

logger = logging.getLogger(__name__)

FEATURES, ERRORS, PCA_MODEL, CSV = "features", "errors", "pca_model", "csv"
SCREE, MANIFEST, SUCCESS = "scree.png", "manifest.json", "_SUCCESS"
FEATURE_COLUMNS = ("path", "label", "split", "width", "height", "features", "pca")
ERROR_COLUMNS = ("path", "stage", "reason")


def prepare_output(uri: str, overwrite: bool) -> None:
    """Refuse an existing output unless overwrite; never delete something fruitpipe did not write."""
    if not storage.exists(uri) or storage.is_empty_dir(uri):
        return
    if not overwrite:
        raise ValueError(f"output {uri} already exists; pass --overwrite to replace it")
    if not any(storage.exists(storage.join(uri, marker)) for marker in (MANIFEST, SUCCESS)):
        raise ValueError(f"output {uri} is not empty and is not a fruitpipe output; refusing to overwrite it")
    logger.info("removing previous output %s", uri)
    storage.remove_tree(uri)


def write_parquet(df: DataFrame, uri: str) -> None:
    df.write.mode("error").parquet(storage.spark_path(uri))


def write_features(df: DataFrame, output: str) -> None:
    write_parquet(df.select(*FEATURE_COLUMNS), storage.join(output, FEATURES))


def write_errors(df: DataFrame, output: str) -> None:
    """One row per rejected input; written even when empty so readers always find the dataset."""
    write_parquet(df.select(*ERROR_COLUMNS), storage.join(output, ERRORS))


def write_csv(df: DataFrame, output: str, k: int) -> None:
    """path, label, split and one column per PCA component (the seed's CSV)."""
    columns = [F.col("path"), F.col("label"), F.col("split")]
    columns += [F.col("pca")[i].alias(f"pc{i + 1}") for i in range(k)]
    df.select(*columns).write.mode("error").option("header", True).csv(storage.spark_path(storage.join(output, CSV)))


def write_json(uri: str, document: dict[str, Any]) -> None:
    storage.write_bytes(uri, (json.dumps(document, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))


def commit(output: str, counts: dict[str, int]) -> None:
    """Write _SUCCESS last: the run's files and counts."""
    files = [path for path in storage.list_tree(output) if path != SUCCESS]
    write_json(storage.join(output, SUCCESS), {"files": files, "counts": counts})
