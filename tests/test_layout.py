"""The import rule of ARCHITECTURE.md, checked on the source: imports point one way (down the layers)."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

# Lowest first. A module may import its own package and any package of a lower layer, nothing above and
# nothing beside it (two packages on one layer do not know each other).
LAYERS: tuple[tuple[str, ...], ...] = (
    ("fruitpipe.devtools",),  # test and benchmark infrastructure: imports no other fruitpipe package
    ("fruitpipe.runtime",),
    ("fruitpipe.progress",),  # what a long command shows while it runs (stdlib only)
    ("fruitpipe.faults", "fruitpipe.signals"),  # the tests' kill points; SIGTERM as an exception (stdlib only)
    ("fruitpipe.config",),
    ("fruitpipe.storage",),
    ("fruitpipe.image",),
    ("fruitpipe.executor",),
    ("fruitpipe.sparkapi",),  # every use of Spark beyond the DataFrame API (classic and Spark Connect)
    ("fruitpipe.ml",),
    ("fruitpipe.batch",),
    ("fruitpipe.recognise", "fruitpipe.ops"),
    ("fruitpipe.monitor",),  # drift: on top of runs and trained models
    ("fruitpipe.benchmark",),
    ("fruitpipe.cli",),
    ("fruitpipe.__main__",),
)
# Third-party imports a package must never make, even inside a function.
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "fruitpipe.image": ("pyspark",),
    "fruitpipe.executor": ("pyspark.sql", "torch"),
    "fruitpipe.recognise.bundle": ("pyspark",),
    "fruitpipe.recognise.serve": ("pyspark",),
    "fruitpipe.config": ("numpy", "pyspark", "boto3"),
    "fruitpipe.runtime": ("numpy", "pyspark", "boto3"),
    "fruitpipe.progress": ("numpy", "pyspark", "boto3"),
    "fruitpipe.faults": ("numpy", "pyspark", "boto3"),
    "fruitpipe.signals": ("numpy", "pyspark", "boto3"),
}
# Heavy libraries allowed only in these modules.
ONLY_IN: dict[str, tuple[str, ...]] = {
    "torch": ("fruitpipe.image.models", "fruitpipe.benchmark.measures"),  # the benchmark's seed baseline
    "onnxruntime": ("fruitpipe.image.embed", "fruitpipe.image.models", "fruitpipe.benchmark.measures"),
    "openvino": ("fruitpipe.image.embed",),
}


# Spark beyond the DataFrame API (absent on Spark Connect): only fruitpipe.sparkapi may use it.
SPARK_INTERNALS = re.compile(r"\.sparkContext\b|\b_jvm\b|\b_jsc\b|\b_py2java\b|\baddFile\(|\bstatusStore\(")


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> list[str]:
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rsplit(".", 1)[0]
    return imports_in(path.read_text(encoding="utf-8"), package)


def imports_in(source: str, package: str) -> list[str]:
    """Every module an import statement names, wherever the statement is (functions included)."""
    names: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            names.append(base)
            names.extend(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return names


def layer_of(module: str) -> tuple[int, str] | None:
    for index, owners in enumerate(LAYERS):
        for owner in owners:
            if module == owner or module.startswith(owner + "."):
                return index, owner
    return None


def sources() -> list[Path]:
    return sorted(SRC.joinpath("fruitpipe").rglob("*.py"))


def test_every_module_has_a_layer() -> None:
    orphans = [module_name(p) for p in sources() if p.name != "__init__.py" or p.parent.name != "fruitpipe"]
    assert [m for m in orphans if layer_of(m) is None] == []


@pytest.mark.parametrize("path", sources(), ids=module_name)
def test_imports_point_down(path: Path) -> None:
    here = module_name(path)
    wrong = upward(here, imports_of(path))
    assert wrong == [], f"{here} imports up or sideways: {wrong}"


def upward(here: str, names: list[str]) -> list[str]:
    own = layer_of(here)
    if own is None:  # the package's __init__ (version only)
        return []
    wrong = []
    for name in names:
        target = layer_of(name)
        if target is not None and target[1] != own[1] and target[0] >= own[0]:
            wrong.append(name)
    return wrong


@pytest.mark.parametrize("path", sources(), ids=module_name)
def test_heavy_imports_stay_where_they_belong(path: Path) -> None:
    here = module_name(path)
    names = imports_of(path)
    for owner, banned in FORBIDDEN.items():
        if here == owner or here.startswith(owner + "."):
            hits = [n for n in names if any(n == b or n.startswith(b + ".") for b in banned)]
            assert hits == [], f"{here} must not import {hits}"
    for library, allowed in ONLY_IN.items():
        hits = [n for n in names if n == library or n.startswith(library + ".")]
        assert not hits or here in allowed, f"{here} imports {library}; only {allowed} may"


def test_the_rule_catches_wrong_imports() -> None:
    """The checker itself: an import up, one sideways and a relative one up are reported; down is not."""
    source = ("import numpy\nfrom fruitpipe import storage\n"
              "def f():\n    from fruitpipe.batch import pipeline\n    from ..ops import upload\n")
    names = imports_in(source, "fruitpipe.executor")
    assert upward("fruitpipe.executor.worker", names) == ["fruitpipe.batch", "fruitpipe.batch.pipeline",
                                                          "fruitpipe.ops", "fruitpipe.ops.upload"]
    assert upward("fruitpipe.recognise.train", ["fruitpipe.ops.upload"]) == ["fruitpipe.ops.upload"]
    assert upward("fruitpipe.recognise.train", ["fruitpipe.batch.sinks", "fruitpipe.storage"]) == []


@pytest.mark.parametrize("path", sources(), ids=module_name)
def test_spark_internals_only_in_sparkapi(path: Path) -> None:
    """SparkContext and the JVM do not exist on Spark Connect: every use goes through fruitpipe.sparkapi."""
    if module_name(path) == "fruitpipe.sparkapi":
        return
    code = "\n".join(line.split("#", 1)[0] for line in path.read_text(encoding="utf-8").splitlines())
    assert SPARK_INTERNALS.findall(code) == [], f"{module_name(path)} uses Spark internals; go through sparkapi"
