"""What `fruitpipe run --resume` saves (issue 15): an incremental pass and a resume after a dead driver,
measured against an uninterrupted full run (`python -m fruitpipe.benchmark.incremental --images N`).

1. full: `fruitpipe run` over ~N synthetic images (`fruitpipe sample-data`) into a fresh output.
2. killed + resume: the same input into a second output, the driver SIGKILLed (with its process group,
   `FRUITPIPE_FAULT=driver-after-segments:K`) once ~60% of the journal's segments exist, then
   `run --resume`. The journal left by the kill says how much was done; the work ratio is everything
   featurized by both passes over N (at most the batches in flight are redone: target <= 1.1).
3. correctness: the resumed output has the same rows as the full one, the same features (allclose 1e-5 on
   a sample), so a resume is not a different result.
4. incremental: +100 new images (re-encoded copies: new keys and new bytes, so no sha256 match) and
   `run --resume` on the first output: it must featurize exactly those 100; target wall time < 0.15 of
   the full run's. `run --resume` refits PCA on every row and rewrites every output, in a new process.
5. watch: `fruitpipe watch` on that output: a first pass finds nothing new, then +100 and later +20 new
   images land between two listings; each such pass keeps the PCA (under the 10% growth) and appends
   (`publication: appended`). Its seconds (from the pass line) against the full run's wall time, and the
   latency from the last image landing to the pass line (the interval's wait included).
6. watch after a long wait: `--interval 75` (Spark ends Python workers idle for a minute), 20 photos
   featurized in pass 1 and 20 more in pass 2, with `--keep-warm 40` (the default) and `--keep-warm 0`:
   pass 2's featurize seconds say what reloading the model in new workers costs.

Every run is a child process (`python -m fruitpipe run ... --json`), timed around it, JVM start included,
as a user would see it. Not a test: the times depend on the machine and on what else runs on it.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image

from fruitpipe import faults
from fruitpipe.config import ExecutorSettings, WatchSchedule
from fruitpipe.executor.journal import KEY
from fruitpipe.executor.worker import FIRST_CHUNK, VIEW
from fruitpipe.image import sampledata

logger = logging.getLogger(__name__)

K = 20  # PCA components: fixed, so every run fits the same model and --variance cannot differ
KILL_AT = 0.6  # fraction of the expected segments at which the driver dies
ADDED = 100  # images of the incremental pass
ADDED_NAME = re.compile(r"^(inc|w[0-9]+x)[0-9]{4}_")  # what add_new_images names: never a source again
REENCODE_QUALITY = 83  # not the synthesiser's quality: the copies' bytes differ from their sources'
SAMPLE_ROWS = 200  # rows whose features are compared
ATOL = RTOL = 1e-5
WATCH_ARRIVALS = (100, 20)  # images landing before watch passes 2 and 3
WATCH_INTERVAL_S = 5.0  # between two listings: the arrivals (renames, milliseconds) land well inside one
IDLE_INTERVAL_S = 75.0  # longer than the minute Spark keeps idle Python workers
IDLE_ARRIVALS = 20
TARGET_INCREMENTAL_RATIO = 0.15
TARGET_WORK_RATIO = 1.1


@dataclass(frozen=True)
class RunResult:
    """One `fruitpipe run` child: how long it took, how it ended, what it published (None when killed)."""

    name: str
    wall_s: float
    returncode: int
    manifest: dict[str, Any] | None
    load_avg_1m_before: float

    def figures(self) -> dict[str, Any]:
        """The manifest's counts and stage timings next to our own wall time."""
        figures: dict[str, Any] = {"wall_s": round(self.wall_s, 2), "returncode": self.returncode,
                                   "load_avg_1m_before": round(self.load_avg_1m_before, 2)}
        if self.manifest is not None:
            figures |= {"counts": self.manifest["counts"], "timings_s": self.manifest["timings_s"],
                        "featurize_img_s": self.manifest.get("featurize_img_s"),
                        "partitions": self.manifest.get("spark", {}).get("partitions")}
        return figures


# ---------------------------------------------------------------- inputs


def build_input(work: Path, images: int) -> tuple[Path, int]:
    """`fruitpipe sample-data` with as many per class as give ~`images` in all (the CLI, as a user would)."""
    classes = len([p for p in (sampledata.bundled_sample_dir() / sampledata.SPLITS[0]).iterdir() if p.is_dir()])
    per_class = max(2, round(images / classes))
    folder = work / "input"
    command = [sys.executable, "-m", "fruitpipe", "sample-data", "--output", str(folder),
               "--per-class", str(per_class)]
    logger.info("sample-data: %d per class x %d classes -> %s", per_class, classes, folder)
    subprocess.run(command, check=True, capture_output=True, text=True)
    return folder, per_class * classes


def add_new_images(folder: Path, count: int, prefix: str = "inc", staging: Path | None = None) -> list[Path]:
    """`count` Training photos re-encoded under new names in their own class folders: new keys whose bytes
    match nothing in the journal, so each must cost one model call (a plain copy would be a sha256 hit).
    With `staging`, each is encoded there first and renamed into place (all land within milliseconds)."""
    sources = sorted(p for p in (folder / sampledata.SPLITS[0]).rglob("*.jpg") if not ADDED_NAME.match(p.name))
    step = max(1, len(sources) // count)
    encoded = []
    for index, source in enumerate(sources[::step][:count]):
        target = source.with_name(f"{prefix}{index:04d}_{source.name}")
        written = target if staging is None else staging / f"{index:04d}.jpg"
        written.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(source) as image:
            image.convert("RGB").save(written, format="JPEG", quality=REENCODE_QUALITY)
        encoded.append((written, target))
    added = []
    for written, target in encoded:
        if written != target:
            written.rename(target)
        added.append(target)
    if len(added) != count:
        raise RuntimeError(f"made {len(added)} new images, wanted {count}")
    return added


# ---------------------------------------------------------------- runs


def run_command(images: Path, output: Path, resume: bool) -> list[str]:
    command = [sys.executable, "-m", "fruitpipe", "run", "--input", str(images), "--output", str(output),
               "--k", str(K), "--quiet", "--json"]
    return [*command, "--resume"] if resume else command


def run_fruitpipe(name: str, images: Path, output: Path, *, resume: bool = False,
                  fault: str | None = None, mark: Path | None = None) -> RunResult:
    """One run in its own session (so a fault's SIGKILL of the driver's group hits only this run's tree)."""
    env = dict(os.environ)
    if fault is not None:
        env[faults.FAULT_ENV] = fault
        if mark is not None:
            env[faults.MARK_ENV] = str(mark)
    load = os.getloadavg()[0]
    logger.info("%s: %s%s", name, " ".join(run_command(images, output, resume)),
                f" ({faults.FAULT_ENV}={fault})" if fault else "")
    started = time.perf_counter()
    child = subprocess.Popen(run_command(images, output, resume), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=env, start_new_session=True)
    stdout, stderr = child.communicate()
    wall = time.perf_counter() - started
    if fault is None and child.returncode != 0:
        raise RuntimeError(f"{name} exited with {child.returncode}: {stderr.strip()[-3000:]}")
    manifest = json.loads(stdout) if child.returncode == 0 and stdout.strip() else None
    logger.info("%s: exit %d after %.1f s", name, child.returncode, wall)
    _reap_group(name, child.pid)
    return RunResult(name, wall, child.returncode, manifest, load)


def _reap_group(name: str, pgid: int) -> None:
    """After a kill, nothing of the run's process group may live on (a worker still writing segments would
    make the kill a lie); say so and end the group we started if anything survived."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return
    logger.warning("%s: processes of group %d outlived the run; ending them", name, pgid)
    os.killpg(pgid, signal.SIGKILL)


def expected_segments(listed: int, partitions: int) -> int:
    """Segments a full pass writes: one per featurized chunk (the first FIRST_CHUNK rows, then batch_size)
    per partition, partitions cut as Spark's parallelize cuts a list (contiguous, i*n//p)."""
    batch = ExecutorSettings.batch_size
    total = 0
    for index in range(partitions):
        rows = (index + 1) * listed // partitions - index * listed // partitions
        if rows:
            total += 1 + math.ceil(max(0, rows - min(FIRST_CHUNK, batch)) / batch)
    return total


def journal_state(output: Path) -> dict[str, Any]:
    """What a killed pass left: its segment files and the distinct photos (view 0) they hold."""
    files = sorted(output.glob("_fruitpipe/journal-*/segments/*/*.parquet"))
    keys: set[str] = set()
    for path in files:
        table = pq.read_table(path, columns=[KEY, VIEW])
        keys.update(table.filter(pc.equal(table.column(VIEW), 0)).column(KEY).to_pylist())
    return {"segment_files": len(files), "images": len(keys)}


# ---------------------------------------------------------------- correctness


def compare_outputs(reference: Path, candidate: Path, sample: int) -> dict[str, Any]:
    """Same set of paths in features/, no duplicates, and the same features on a seeded sample of rows."""
    ref, cand = _features(reference), _features(candidate)
    common = sorted(set(ref) & set(cand))
    rng = np.random.default_rng(0)
    chosen = [common[i] for i in rng.choice(len(common), size=min(sample, len(common)), replace=False)]
    a = np.stack([ref[path][0] for path in chosen])
    b = np.stack([cand[path][0] for path in chosen])
    return {
        "reference_rows": len(ref), "candidate_rows": len(cand),
        "same_paths": set(ref) == set(cand),
        "only_in_reference": len(set(ref) - set(cand)), "only_in_candidate": len(set(cand) - set(ref)),
        "sampled_rows": len(chosen),
        "features_allclose": bool(np.allclose(a, b, rtol=RTOL, atol=ATOL)),
        "features_max_abs_diff": float(np.abs(a - b).max()),
        "pca_max_abs_diff_sign_aligned": _pca_difference(np.stack([ref[p][1] for p in chosen]),
                                                        np.stack([cand[p][1] for p in chosen])),
    }


def _features(output: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """path -> (features, pca) of the photos (view 0); a duplicated path fails here, not silently."""
    table = pq.read_table(output / "features", columns=["path", VIEW, "features", "pca"])
    table = table.filter(pc.equal(table.column(VIEW), 0))
    rows: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for path, features, pca in zip(table.column("path").to_pylist(), table.column("features").to_pylist(),
                                   table.column("pca").to_pylist(), strict=True):
        if path in rows:
            raise RuntimeError(f"{output}: {path} appears twice in features/")
        rows[path] = (np.asarray(features, dtype=np.float32), np.asarray(pca, dtype=np.float32))
    return rows


def _pca_difference(a: np.ndarray, b: np.ndarray) -> float:
    """Informative only: PCA components are defined up to sign, so each is aligned before comparing."""
    signs = np.sign((a * b).sum(axis=0))
    signs[signs == 0] = 1
    return float(np.abs(a - b * signs).max())


# ---------------------------------------------------------------- the measurement


def machine() -> dict[str, Any]:
    """The CPU as lscpu names it and the cores the runs had (shared: see `contention`)."""
    try:
        lines = subprocess.run(["lscpu"], check=True, capture_output=True, text=True).stdout.splitlines()
        model = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("Model name")), "unknown")
    except (OSError, subprocess.CalledProcessError):
        model = "unknown"
    return {"cpu_model": model, "cores": os.cpu_count(), "niceness": os.nice(0)}


def kill_and_resume(images: Path, output: Path, full: RunResult, work: Path) -> dict[str, Any]:
    """The killed run and its resume; the journal between them says how much the kill left done."""
    assert full.manifest is not None
    listed, partitions = full.manifest["counts"]["listed"], full.manifest["spark"]["partitions"]
    expected = expected_segments(listed, partitions)
    kill_after = max(1, round(KILL_AT * expected))
    mark = work / "fault-mark.txt"
    killed = run_fruitpipe("killed", images, output, fault=f"driver-after-segments:{kill_after}", mark=mark)
    journal = journal_state(output)
    resumed = run_fruitpipe("resume-after-kill", images, output, resume=True)
    assert resumed.manifest is not None
    featurized_after = resumed.manifest["counts"]["featurized"]
    total = journal["images"] + featurized_after
    return {
        "expected_segments": expected, "kill_after_segments": kill_after,
        "fault_fired": mark.is_file() and mark.read_text(encoding="utf-8").strip() != "",
        "fault_mark": mark.read_text(encoding="utf-8").strip() if mark.is_file() else None,
        "killed": killed.figures(), "journal_at_kill": journal,
        "fraction_done_at_kill": round(journal["images"] / listed, 4),
        "resume": resumed.figures(), "featurized_by_resume": featurized_after,
        "reused_by_resume": resumed.manifest["counts"]["reused"],
        "featurized_total": total, "work_ratio": round(total / listed, 4),
        "wall_killed_plus_resume_s": round(killed.wall_s + resumed.wall_s, 2),
        "wall_ratio_vs_full": round((killed.wall_s + resumed.wall_s) / full.wall_s, 4),
    }


def incremental(images: Path, output: Path, full: RunResult) -> dict[str, Any]:
    """+ADDED new images and one `--resume` pass over the full run's output."""
    added = add_new_images(images, ADDED)
    logger.info("added %d re-encoded images (e.g. %s)", len(added), added[0])
    run = run_fruitpipe("incremental", images, output, resume=True)
    assert run.manifest is not None
    return {"added": len(added), "run": run.figures(), "featurized": run.manifest["counts"]["featurized"],
            "reused": run.manifest["counts"]["reused"], "listed": run.manifest["counts"]["listed"],
            "wall_ratio_vs_full": round(run.wall_s / full.wall_s, 4)}


PASS_SECONDS = re.compile(r"; ([0-9.]+) s; ")


def watch_passes(images: Path, output: Path, full: RunResult, work: Path) -> dict[str, Any]:
    """`fruitpipe watch` over the full run's output, WATCH_ARRIVALS landing after passes 1 and 2; SIGTERM
    after pass 3 (it exits after the pass in progress)."""
    command = [sys.executable, "-m", "fruitpipe", "watch", "--input", str(images), "--output", str(output),
               "--k", str(K), "--interval", str(WATCH_INTERVAL_S)]
    logger.info("watch: %s", " ".join(command))
    log = work / "watch.log"
    passes: list[dict[str, Any]] = []
    with log.open("w", encoding="utf-8") as errors:
        child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=errors, text=True, start_new_session=True)
        assert child.stdout is not None
        try:
            landed = None
            for number in range(1, len(WATCH_ARRIVALS) + 2):
                line = _next_pass_line(child.stdout, number, log)
                seen = time.perf_counter()
                passes.append(_pass_figures(line, None if landed is None else seen - landed,
                                            WATCH_ARRIVALS[number - 2] if number > 1 else 0))
                if number <= len(WATCH_ARRIVALS):
                    add_new_images(images, WATCH_ARRIVALS[number - 1], prefix=f"w{number}x", staging=work / "staging")
                    landed = time.perf_counter()
        finally:
            child.send_signal(signal.SIGTERM)
            child.communicate(timeout=300)
            _reap_group("watch", child.pid)
    manifest = json.loads((output / "manifest.json").read_text(encoding="utf-8"))
    return {"interval_s": WATCH_INTERVAL_S, "passes": passes, "returncode": child.returncode,
            "final_publication": manifest.get("publication"),
            "final_pca": {name: manifest["pca"].get(name) for name in ("k", "fitted_rows", "refitted")},
            "final_counts": manifest["counts"], "timings_s_last_pass": manifest["timings_s"],
            "ratio_vs_full": {str(p["arrived"]): round(p["pass_s"] / full.wall_s, 4) for p in passes if p["arrived"]}}


def watch_idle(images: Path, output: Path, work: Path) -> dict[str, Any]:
    """A pass after a wait longer than Spark keeps idle Python workers (a minute), keep-warm on and off:
    IDLE_ARRIVALS photos land before the watch starts (pass 1 featurizes them: the workers hold the model)
    and as many after pass 1; pass 2 comes IDLE_INTERVAL_S later. With `--keep-warm 0` Spark has ended the
    workers by then and pass 2 starts new ones and loads the model again; with keep-warm it finds them."""
    result: dict[str, Any] = {"interval_s": IDLE_INTERVAL_S, "arrivals": IDLE_ARRIVALS}
    for index, keep_warm in enumerate((WatchSchedule.keep_warm_s, 0.0)):
        name = f"keep_warm_{keep_warm:g}"
        add_new_images(images, IDLE_ARRIVALS, prefix=f"w{20 + 2 * index}x", staging=work / "staging")
        command = [sys.executable, "-m", "fruitpipe", "watch", "--input", str(images), "--output", str(output),
                   "--k", str(K), "--interval", str(IDLE_INTERVAL_S), "--keep-warm", str(keep_warm)]
        logger.info("watch (%s): %s", name, " ".join(command))
        log = work / f"watch-{name}.log"
        with log.open("w", encoding="utf-8") as errors:
            child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=errors, text=True, start_new_session=True)
            assert child.stdout is not None
            try:
                first = _pass_figures(_next_pass_line(child.stdout, 1, log), None, IDLE_ARRIVALS)
                add_new_images(images, IDLE_ARRIVALS, prefix=f"w{21 + 2 * index}x", staging=work / "staging")
                landed = time.perf_counter()
                second = _next_pass_line(child.stdout, 2, log)
                second_figures = _pass_figures(second, time.perf_counter() - landed, IDLE_ARRIVALS)
            finally:
                child.send_signal(signal.SIGTERM)
                child.communicate(timeout=300)
                _reap_group(f"watch {name}", child.pid)
        manifest = json.loads((output / "manifest.json").read_text(encoding="utf-8"))
        result[name] = {"pass_1": first, "pass_2": second_figures, "timings_s_pass_2": manifest["timings_s"],
                        "keep_warm_lines": [line.strip() for line in log.read_text(encoding="utf-8").splitlines()
                                            if "keep-warm" in line]}
    on, off = (result[f"keep_warm_{k:g}"]["timings_s_pass_2"]["featurize"] for k in (WatchSchedule.keep_warm_s, 0))
    result["featurize_s_pass_2"] = {"keep_warm_on": on, "keep_warm_off": off}
    return result


def _next_pass_line(stream: Any, number: int, log: Path) -> str:
    for line in stream:
        if line.startswith(f"watch pass {number}:"):
            return str(line.strip())
    raise RuntimeError(f"watch ended before pass {number}: {log.read_text(encoding='utf-8')[-3000:]}")


def _pass_figures(line: str, landed_to_line_s: float | None, arrived: int) -> dict[str, Any]:
    found = PASS_SECONDS.search(line)
    return {"line": line, "arrived": arrived, "pass_s": float(found.group(1)) if found else None,
            "appended": "appended to" in line,
            "landed_to_published_s": None if landed_to_line_s is None else round(landed_to_line_s, 2)}


def checks(result: dict[str, Any]) -> dict[str, bool]:
    """The issue's targets and the must-holds, each a yes or no (a failure is reported, never hidden)."""
    kill, inc, same = result["kill_and_resume"], result["incremental"], result["correctness"]
    watched = [p for p in result["watch"]["passes"] if p["arrived"]]
    return {
        "watch_passes_featurized_exactly_the_arrivals": all(f"{p['arrived']} featurized" in p["line"] for p in watched),
        "watch_passes_appended": all(p["appended"] for p in watched),
        "watch_pass_ratio_below_target": all(p["pass_s"] is not None and p["pass_s"] / result["full"]["wall_s"]
                                             < TARGET_INCREMENTAL_RATIO for p in watched),
        "fault_fired_and_run_died": kill["fault_fired"] and kill["killed"]["returncode"] != 0,
        "incremental_featurized_exactly_added": inc["featurized"] == inc["added"],
        "incremental_ratio_below_target": inc["wall_ratio_vs_full"] < TARGET_INCREMENTAL_RATIO,
        "work_ratio_within_target": kill["work_ratio"] <= TARGET_WORK_RATIO,
        "resume_same_paths": same["same_paths"],
        "resume_features_allclose": same["features_allclose"],
    }


def measure(work: Path, images: int) -> dict[str, Any]:
    """The whole benchmark in order: full, killed + resume (same input), compare, then +ADDED and resume
    (last, so the comparison is over the same input as the full run)."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    started = time.perf_counter()
    folder, total = build_input(work, images)
    full = run_fruitpipe("full", folder, work / "out")
    result: dict[str, Any] = {"machine": machine(), "images_requested": images, "images": total,
                              "input": str(folder), "full": full.figures()}
    result["kill_and_resume"] = kill_and_resume(folder, work / "out2", full, work)
    result["correctness"] = compare_outputs(work / "out", work / "out2", SAMPLE_ROWS)
    result["incremental"] = incremental(folder, work / "out", full)
    result["watch"] = watch_passes(folder, work / "out", full, work)
    result["watch_idle"] = watch_idle(folder, work / "out", work)
    result["checks"] = checks(result)
    result["benchmark_wall_s"] = round(time.perf_counter() - started, 1)
    result["commands"] = {"full": run_command(folder, work / "out", False),
                          "resume": run_command(folder, work / "out", True)}
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fruitpipe.benchmark.incremental",
                                     description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=10_000, help="about this many input images")
    parser.add_argument("--work", type=Path, default=Path("/tmp/incbench"), help="scratch folder (emptied first)")
    parser.add_argument("--out", type=Path, default=Path("bench/incremental.json"), help="results JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    result = measure(args.work / f"n{args.images}", args.images)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    sys.stdout.write(json.dumps(result, indent=2) + "\n")
    failed = [name for name, ok in result["checks"].items() if not ok]
    if failed:
        logger.error("failed: %s", ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
