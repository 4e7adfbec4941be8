"""The cluster recipes (docs/cluster.md, deploy/) only use options that exist.

JSON files parse; every `fruitpipe run|package` flag is one the CLI has; every spark-submit option
is in `spark-submit --help`; every Spark conf key is a string in Spark's own jars (core, YARN,
Kubernetes) or one of the documented families listed below.
"""
from __future__ import annotations

import json
import re
import shlex
import subprocess
import zipfile
from functools import lru_cache
from pathlib import Path

import pytest

from fruitpipe import cli
from fruitpipe.devtools.standalone import SPARK_HOME

ROOT = Path(__file__).resolve().parents[1]
RECIPES = [ROOT / "docs" / "cluster.md", *sorted((ROOT / "deploy").rglob("*.md")),
           *sorted((ROOT / "deploy").rglob("*.sh")), *sorted((ROOT / "deploy").rglob("*.json"))]
# Keys Spark builds at run time from a prefix (checked: the prefix is in the jars), and EMR Serverless's own.
KEY_FAMILIES = {
    "spark.executorEnv.": "spark.executorEnv.",
    "spark.yarn.appMasterEnv.": "spark.yarn.appMasterEnv.",
    "spark.kubernetes.driverEnv.": "spark.kubernetes.driverEnv.",
    "spark.kubernetes.authenticate.driver.serviceAccountName": "spark.kubernetes.authenticate.driver",
    "spark.kubernetes.authenticate.executor.serviceAccountName": "spark.kubernetes.authenticate.executor",
}
EMR_SERVERLESS_PREFIX = "spark.emr-serverless.driverEnv."  # AWS's documented driver environment prefix


def test_recipes_exist() -> None:
    names = {path.relative_to(ROOT).as_posix() for path in RECIPES}
    assert {"docs/cluster.md", "deploy/emr/README.md", "deploy/emr/step.json", "deploy/emr/serverless-job.json",
            "deploy/k8s/spark-submit.sh"} <= names


@pytest.mark.parametrize("path", [p for p in RECIPES if p.suffix == ".json"], ids=lambda p: p.name)
def test_json_is_valid(path: Path) -> None:
    json.loads(path.read_text())


def commands(path: Path) -> list[list[str]]:
    """Shell-like commands in a recipe: backslash-continued lines joined; a JSON step's Args; sparkSubmit."""
    if path.suffix == ".json":
        return _json_commands(json.loads(path.read_text()))
    text = re.sub(r"\\\n\s*", " ", path.read_text())
    found = []
    for line in text.splitlines():
        line = line.strip().lstrip("$ ").split(" # ")[0]
        if re.search(r"(^|\s|=)(spark-submit|fruitpipe (run|package))\s", line):
            found.append(shlex.split(line.replace("`", "")))
    return found


def _json_commands(document: object) -> list[list[str]]:
    if isinstance(document, list):
        return [c for item in document for c in _json_commands(item)]
    if not isinstance(document, dict):
        return []
    if "Args" in document:
        return [document["Args"]]
    if "sparkSubmit" in document:
        submit = document["sparkSubmit"]
        return [["spark-submit", *shlex.split(submit["sparkSubmitParameters"]), submit["entryPoint"],
                 *submit["entryPointArguments"]]]
    return [c for value in document.values() for c in _json_commands(value)]


def split_command(tokens: list[str]) -> tuple[list[str], str | None, list[str]]:
    """(spark-submit tokens, fruitpipe subcommand, fruitpipe tokens)."""
    if "spark-submit" in tokens:
        rest = tokens[tokens.index("spark-submit") + 1:]
        for index, token in enumerate(rest):
            if token.endswith(".py") or token == "${MAIN_URL}":
                return rest[:index], rest[index + 1], rest[index + 2:]
        return rest, None, []
    start = tokens.index("fruitpipe")
    return [], tokens[start + 1], tokens[start + 2:]


def all_commands() -> list[tuple[str, list[str]]]:
    return [(path.relative_to(ROOT).as_posix(), tokens) for path in RECIPES for tokens in commands(path)]


def test_recipes_have_commands() -> None:
    sources = {source for source, _ in all_commands()}
    assert {"docs/cluster.md", "deploy/emr/step.json", "deploy/emr/serverless-job.json",
            "deploy/k8s/spark-submit.sh", "deploy/emr/README.md"} <= sources


def fruitpipe_flags(subcommand: str) -> set[str]:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[subcommand]
    return {flag for action in sub._actions for flag in action.option_strings}


def test_fruitpipe_flags_exist() -> None:
    for source, tokens in all_commands():
        _, subcommand, rest = split_command(tokens)
        if subcommand is None:
            continue
        assert subcommand in ("run", "package"), (source, tokens)
        flags = {token.split("=")[0] for token in rest if token.startswith("--")}
        assert flags <= fruitpipe_flags(subcommand), (source, flags - fruitpipe_flags(subcommand))


@lru_cache(maxsize=1)
def spark_submit_help() -> str:
    result = subprocess.run([str(SPARK_HOME / "bin" / "spark-submit"), "--help"], capture_output=True, text=True,
                            timeout=300)
    return result.stdout + result.stderr


def test_spark_submit_options_exist() -> None:
    help_text = spark_submit_help()
    assert "--archives" in help_text
    for source, tokens in all_commands():
        submit, _, _ = split_command(tokens)
        for option in {token.split("=")[0] for token in submit if token.startswith("--")}:
            assert re.search(rf"(^|\s){re.escape(option)}(\s|,|$)", help_text, re.M), (source, option)


@lru_cache(maxsize=1)
def spark_strings() -> bytes:
    jars = SPARK_HOME / "jars"
    blobs = []
    for pattern in ("spark-core_*.jar", "spark-yarn_*.jar", "spark-kubernetes_*.jar", "spark-sql_*.jar",
                    "spark-sql-api_*.jar"):
        for jar in jars.glob(pattern):
            with zipfile.ZipFile(jar) as archive:
                blobs += [archive.read(name) for name in archive.namelist() if name.endswith(".class")]
    return b"\n".join(blobs)


def conf_keys() -> set[tuple[str, str]]:
    keys = set()
    for source, tokens in all_commands():
        for token in tokens:
            match = re.match(r"^(spark\.[A-Za-z0-9_.\-]+)=", token)
            if match:
                keys.add((source, match.group(1)))
    for path in RECIPES:
        for match in re.finditer(r"--conf[ =]`?(spark\.[A-Za-z0-9_.\-]+)=", path.read_text()):
            keys.add((path.relative_to(ROOT).as_posix(), match.group(1)))
    return keys


def test_spark_conf_keys_exist() -> None:
    strings = spark_strings()
    keys = conf_keys()
    assert ("deploy/emr/step.json", "spark.pyspark.python") in keys  # the scan sees the recipes' keys
    for source, key in keys:
        if key.startswith(EMR_SERVERLESS_PREFIX):
            continue
        family = next((prefix for start, prefix in KEY_FAMILIES.items() if key.startswith(start)), None)
        assert (family or key).encode() in strings, (source, key)
