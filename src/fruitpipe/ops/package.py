"""`fruitpipe package`: a relocatable environment archive for executors that do not share the driver's.

The archive is a venv (packed by venv-pack) holding fruitpipe, the runtime closure of its
dependencies and the exported ONNX file(s) of the models asked for. A run ships it with
`spark.archives` and uses `./fruitpipe_env/bin/python` as the executors' Python
(`fruitpipe run --env-archive PATH`).

What is left out, and why:
- torch and the torch model code: executors run ONNX Runtime only; the ONNX export travels inside
  the archive (`share/fruitpipe/onnx/`, the layout of `models.cache_dir()`), so even a driver
  running inside the archive (cluster deploy mode) never needs torch.
- pyspark and py4j: every Spark installation puts its own `pyspark.zip` and py4j on the Python
  workers' PYTHONPATH, so the cluster's Spark version is the one that runs (and 490 MB of jars stay home).
  fruitpipe requires `pyspark[connect]`: the Spark Connect client's packages (grpcio, zstandard, ~45 MB)
  come with that extra, so they stay out too (an executor is never a Connect client).
- serving, packaging and test tooling (fastapi, uvicorn, venv-pack, pytest, moto, selenium, ray ...):
  only what fruitpipe's own requirements pull in is packed, by following Requires-Dist.

The venv's python is a symlink to a base interpreter: the target needs the same Python minor
version at the same prefix (the build machine's `sys.base_prefix`, or `python_prefix`).
"""
from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from fruitpipe.config import DEFAULT_MODEL
from fruitpipe.image import models

logger = logging.getLogger(__name__)

ENV_NAME = "fruitpipe_env"  # the directory the archive unpacks to in an executor's working directory
EXECUTOR_PYTHON = f"./{ENV_NAME}/bin/python"
ONNX_DIR = "share/fruitpipe"  # FRUITPIPE_CACHE for a driver running inside the archive
DEFAULT_OUTPUT = "dist/fruitpipe_env.tar.gz"
# fruitpipe requirements that are never needed where the archive runs (see the module docstring).
LEFT_OUT = frozenset({"torch", "efficientnet-lite-pytorch", "pyspark", "py4j", "fastapi", "uvicorn",
                      "python-multipart", "venv-pack"})


@dataclass(frozen=True)
class PackResult:
    """What was built: for the CLI summary and the tests."""

    path: Path
    size_bytes: int
    seconds: float
    distributions: tuple[str, ...]
    models: tuple[str, ...]
    python: str  # the interpreter the archive's bin/python points to

    def describe(self) -> str:
        return "\n".join([
            f"fruitpipe package: {self.path} ({self.size_bytes / 1e6:.1f} MB) in {self.seconds:.1f} s",
            f"  python    {self.python} (the target needs this interpreter at this path)",
            f"  packages  {len(self.distributions)}: {', '.join(self.distributions)}",
            f"  models    {', '.join(self.models) or 'none'}",
            f"  use       fruitpipe run --env-archive {self.path} --master spark://HOST:7077 ...",
        ])


def normalise(name: str) -> str:
    """PEP 503 name, so 'Pillow', 'pillow' and 'python_multipart' compare equal."""
    return re.sub(r"[-_.]+", "-", name).lower()


def runtime_closure(root: str = "fruitpipe",
                    left_out: Iterable[str] = LEFT_OUT) -> list[importlib.metadata.Distribution]:
    """`root` and everything its (non-extra) requirements pull in, minus `left_out` and their own needs."""
    skipped = {normalise(name) for name in left_out}
    found: dict[str, importlib.metadata.Distribution] = {}
    pending = [root]
    while pending:
        name = normalise(pending.pop())
        if name in found or name in skipped:
            continue
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError as exc:
            raise ValueError(f"{name} is required but not installed in {sys.prefix}") from exc
        found[name] = dist
        pending.extend(_runtime_requirements(dist))
    return [found[name] for name in sorted(found)]


def _runtime_requirements(dist: importlib.metadata.Distribution) -> list[str]:
    """Requirement names that apply here without extras (markers evaluated for this interpreter)."""
    from packaging.requirements import Requirement

    names = []
    for text in dist.requires or []:
        requirement = Requirement(text)
        if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
            names.append(requirement.name)
    return names


def build(output: str | Path = DEFAULT_OUTPUT, model_names: Iterable[str] = (DEFAULT_MODEL,),
          python_prefix: str | None = None, compress_level: int = 4, overwrite: bool = False,
          exclude: Iterable[str] = ()) -> PackResult:
    """Stage a lean venv from the installed distributions, add the ONNX exports, pack it with venv-pack."""
    import venv_pack

    started = time.perf_counter()
    target = Path(output).resolve()
    if not str(target).endswith((".tar.gz", ".tgz", ".zip")):
        raise ValueError(f"--output must end with .tar.gz, .tgz or .zip (what spark.archives unpacks), got {output}")
    if target.exists() and not overwrite:
        raise ValueError(f"{target} exists; pass --overwrite to replace it")
    if not 0 <= compress_level <= 9:
        raise ValueError(f"--compress-level must be 0..9, got {compress_level}")
    prefix = os.path.normpath(python_prefix or sys.base_prefix)
    if not os.path.isabs(prefix):
        raise ValueError(f"--python-prefix must be an absolute path, got {python_prefix}")
    dists = runtime_closure(left_out=LEFT_OUT | set(exclude))
    onnx_files = [models.onnx_file(models.resolve(name)) for name in model_names]
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fruitpipe-package-", dir=target.parent) as scratch:
        stage = Path(scratch) / ENV_NAME
        python = _stage_venv(stage, prefix)
        site = stage / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
        for dist in dists:
            _stage_distribution(dist, site)
        for onnx in onnx_files:
            _link_or_copy(onnx, stage / ONNX_DIR / "onnx" / onnx.name)
        try:
            venv_pack.pack(prefix=str(stage), output=str(target), force=True, compress_level=compress_level)
        except venv_pack.VenvPackException as exc:
            raise ValueError(f"venv-pack: {exc}") from exc
    result = PackResult(path=target, size_bytes=target.stat().st_size,
                        seconds=round(time.perf_counter() - started, 1),
                        distributions=tuple(f"{d.metadata['Name']}=={d.version}" for d in dists),
                        models=tuple(onnx.name for onnx in onnx_files), python=python)
    logger.info("packed %d distributions into %s (%.1f MB) in %.1f s", len(dists), target,
                result.size_bytes / 1e6, result.seconds)
    return result


def _stage_venv(stage: Path, prefix: str) -> str:
    """A venv skeleton whose python points to `prefix`'s interpreter (need not exist on this machine)."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    interpreter = os.path.join(prefix, "bin", f"python{version}")
    (stage / "bin").mkdir(parents=True)
    (stage / "lib" / f"python{version}" / "site-packages").mkdir(parents=True)
    (stage / "bin" / f"python{version}").symlink_to(interpreter)
    for alias in ("python", "python3"):
        (stage / "bin" / alias).symlink_to(f"python{version}")
    (stage / "pyvenv.cfg").write_text(
        f"home = {os.path.join(prefix, 'bin')}\ninclude-system-site-packages = false\n"
        f"version = {sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro}\n")
    return interpreter


def _stage_distribution(dist: importlib.metadata.Distribution, site: Path) -> None:
    """Copy one installed distribution's files below site-packages (editable installs: the package tree)."""
    if _is_editable(dist):
        _stage_editable(dist, site)
        return
    if dist.files is None:
        raise ValueError(f"{dist.metadata['Name']} {dist.version} has no installed-files record (RECORD); "
                         "reinstall it with pip so it can be packed")
    root = Path(str(dist.locate_file("")))
    for entry in dist.files:
        relative = Path(entry)
        if relative.parts[0] == ".." or "__pycache__" in relative.parts:
            continue  # console scripts in bin/ carry the build venv's path; bytecode is rebuilt
        source = root / relative
        if source.is_file():
            _link_or_copy(source, site / relative)


def _is_editable(dist: importlib.metadata.Distribution) -> bool:
    direct_url = json.loads(dist.read_text("direct_url.json") or "{}")
    return bool(direct_url.get("dir_info", {}).get("editable"))


def _stage_editable(dist: importlib.metadata.Distribution, site: Path) -> None:
    """An editable (pip -e) install points outside the venv: copy its import packages and metadata."""
    names = (dist.read_text("top_level.txt") or "").split()
    if not names:
        raise ValueError(f"editable install of {dist.metadata['Name']} has no top_level.txt; reinstall it")
    for name in names:
        module = __import__(name)
        if module.__file__ is None:  # a namespace package has no folder of its own to copy
            raise ValueError(f"editable install of {dist.metadata['Name']}: {name} is a namespace package; "
                             "reinstall it")
        package_dir = Path(module.__file__).parent
        shutil.copytree(package_dir, site / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    info = site / f"{normalise(dist.metadata['Name']).replace('-', '_')}-{dist.version}.dist-info"
    info.mkdir()
    for meta in ("METADATA", "entry_points.txt", "top_level.txt"):
        text = dist.read_text(meta)
        if text is not None:
            (info / meta).write_text(text)
    (info / "INSTALLER").write_text("fruitpipe package\n")
    (info / "RECORD").write_text("")


def _link_or_copy(source: Path, target: Path) -> None:
    """Hard links make staging ~free on the same file system; copy otherwise."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def with_env_archive(conf: tuple[tuple[str, str], ...], archive: str, master: str) -> tuple[tuple[str, str], ...]:
    """`--env-archive`: add the archive to spark.archives (unpacked as ./fruitpipe_env) and make its
    python the executors' one, keeping any spark.archives or spark.pyspark.python the user gave."""
    if master.startswith("local") and not master.startswith("local-cluster"):
        raise ValueError(f"--env-archive needs executors in their own processes (a cluster master), not {master}")
    if "://" not in archive:
        path = Path(archive).resolve()
        if not path.is_file():
            raise ValueError(f"--env-archive {archive}: no such file (build it with 'fruitpipe package')")
        archive = str(path)
    settings = dict(conf)
    shipped = f"{archive}#{ENV_NAME}"
    settings["spark.archives"] = ",".join(filter(None, [settings.get("spark.archives", ""), shipped]))
    settings.setdefault("spark.pyspark.python", EXECUTOR_PYTHON)
    return tuple(settings.items())
