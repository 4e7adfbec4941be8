"""A living pipeline: the journal, `run --resume` after a crash and as an incremental pass, the writer lock,
and the faults around them (deterministic kill points from fruitpipe.faults).

Every resumed output is compared with an uninterrupted run over the same input: the exact path set,
features allclose (1e-5) and the PCA spectrum."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fruitpipe import cli
from fruitpipe.batch import lock, pipeline, sinks, sources, watch
from fruitpipe.batch.manifest import RunManifest
from fruitpipe.config import ExecutorSettings, PcaSettings, RunConfig, S3Options, WatchSchedule
from fruitpipe.ml import CentredPCAModel
from fruitpipe.storage import Store
from helpers import copy_subset

pytestmark = pytest.mark.slow

SMALL_BATCHES = ExecutorSettings(batch_size=8)  # several segments per task on a small input
RUNNER = """
import json, sys
from fruitpipe.batch import pipeline
from fruitpipe.config import ExecutorSettings, PcaSettings, RunConfig
manifest = pipeline.run(RunConfig(input=sys.argv[1], output=sys.argv[2], pca=PcaSettings(k=3), master=sys.argv[3],
                                  resume=sys.argv[4] == "resume", executor=ExecutorSettings(batch_size=8)))
print(json.dumps(manifest.counts.to_json()))
"""


def _config(source: Path, output: Path, resume: bool = False, **changes) -> RunConfig:
    return RunConfig(input=str(source), output=str(output), pca=PcaSettings(k=3), resume=resume,
                     executor=SMALL_BATCHES, **changes)


def _published(output: Path) -> tuple[dict[tuple[str, int], np.ndarray], set[str], np.ndarray]:
    """((path, view) -> features, rejected paths, PCA spectrum) of a finished output."""
    assert (output / "_SUCCESS").exists()
    features = pq.read_table(output / "features", columns=["path", "view", "features"]).to_pydict()
    rows = {(path, view): np.asarray(vector) for path, view, vector
            in zip(features["path"], features["view"], features["features"], strict=True)}
    assert len(rows) == len(features["path"]), "a (path, view) written twice"
    errors = set(pq.read_table(output / "errors", columns=["path"]).column("path").to_pylist())
    spectrum = np.asarray(json.loads((output / "manifest.json").read_text())["pca"]["explained_variance_ratio"])
    return rows, errors, spectrum


def assert_same_output(output: Path, reference: Path) -> None:
    rows, errors, spectrum = _published(output)
    expected, expected_errors, expected_spectrum = _published(reference)
    assert set(rows) == set(expected) and errors == expected_errors
    for key, vector in expected.items():
        np.testing.assert_allclose(rows[key], vector, atol=1e-5)
    np.testing.assert_allclose(spectrum, expected_spectrum, atol=1e-5)


def journal_keys(output: Path) -> set[str]:
    """The keys (relative paths) the output's journal holds, read independently of fruitpipe's reader."""
    keys: set[str] = set()
    for segment in (output / "_fruitpipe").glob("journal-*/segments/*/*.parquet"):
        table = pq.read_table(segment, columns=["key", "view"]).to_pydict()
        keys.update(key for key, view in zip(table["key"], table["view"], strict=True) if view == 0)
    return keys


def _run_killed(source: Path | str, output: Path | str, fault: str, tmp_path: Path, master: str = "local[2]",
                extra_env: dict[str, str] | None = None,
                resume: bool = False) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """RUNNER in its own process group with $FRUITPIPE_FAULT; the whole group is killed once the driver
    is gone (no JVM or worker left writing). Returns the result and the fault points that fired."""
    mark = tmp_path / f"fault-{fault.replace(':', '-')}.txt"
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "FRUITPIPE_FAULT": fault,
           "FRUITPIPE_FAULT_MARK": str(mark), **(extra_env or {})}
    process = subprocess.Popen([sys.executable, "-c", RUNNER, str(source), str(output), master,
                                "resume" if resume else "fresh"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                               start_new_session=True)
    out, err = process.communicate(timeout=600)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    _wait_until_dead(process.pid)
    fired = mark.read_text().splitlines() if mark.exists() else []
    return subprocess.CompletedProcess(process.args, process.returncode, out, err), fired


def _wait_until_dead(group: int, timeout: float = 30) -> None:
    """Until no process of process group `group` is alive (a zombie left for init to reap writes nothing)."""
    deadline = time.monotonic() + timeout
    while True:
        alive = []
        for proc in psutil.process_iter(["pid", "status", "cmdline"]):
            with contextlib.suppress(OSError):  # gone since the listing
                if os.getpgid(proc.info["pid"]) == group and proc.info["status"] != psutil.STATUS_ZOMBIE:
                    alive.append(proc.info["cmdline"])
        if not alive:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"still running {timeout:.0f} s after SIGKILL to their group: {alive}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def photos(sample_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 classes x (10 Training + 4 Test) photos."""
    return copy_subset(sample_dir, tmp_path_factory.mktemp("resume-in") / "in", 4, {"Training": 10, "Test": 4})


@pytest.fixture(scope="module")
def reference(spark, photos: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted run over `photos`."""
    output = tmp_path_factory.mktemp("resume-reference") / "out"
    manifest = pipeline.run(_config(photos, output))
    assert manifest.counts.featurized == manifest.counts.listed == 56
    assert journal_keys(output) == {str(p.relative_to(photos)) for p in photos.rglob("*.jpg")}
    return output


def _published_files(output: Path) -> dict[str, int]:
    """Every published file (the journal and the lock apart) and its modification time."""
    return {str(path.relative_to(output)): path.stat().st_mtime_ns for path in output.rglob("*")
            if path.is_file() and "_fruitpipe" not in path.relative_to(output).parts}


def test_a_finished_run_resumed_with_nothing_new_rewrites_nothing(spark, photos: Path, reference: Path,
                                                                  tmp_path: Path, capsys) -> None:
    """Up to date: no pass, nothing rewritten (every published file keeps its time), one line. Rewritten
    instead when a setting of the outputs differs (--k) or when a pass featurized and died before
    publishing: its photo is in the journal, not in the outputs (a restarted `watch` publishes it too)."""
    output = tmp_path / "out"
    shutil.copytree(reference, output)
    published = _published_files(output)
    manifest = pipeline.run(_config(photos, output, resume=True))
    assert (manifest.counts.featurized, manifest.counts.reused, manifest.counts.removed) == (0, 56, 0)
    assert manifest.counts.listed == manifest.counts.ok + manifest.counts.rejected
    assert manifest.publication == "unchanged"
    assert manifest.run_id == json.loads((reference / "manifest.json").read_text())["run_id"]
    assert _published_files(output) == published
    assert_same_output(output, reference)
    capsys.readouterr()
    assert cli.main(["run", "--input", str(photos), "--output", str(output), "--k", "3", "--resume"]) == 0
    assert "is up to date (56 listed: nothing new, changed or removed since" in capsys.readouterr().out
    assert _published_files(output) == published

    other_k = pipeline.run(replace(_config(photos, output, resume=True), pca=PcaSettings(k=4)))
    assert (other_k.publication, other_k.pca.k, other_k.counts.featurized) == ("rewritten", 4, 0)

    source = tmp_path / "in"
    shutil.copytree(photos, source)
    pipeline.run(_config(source, output, overwrite=True))
    folder = sorted((source / "Training").iterdir())[0]
    shutil.copy(sorted((source / "Test" / folder.name).glob("*.jpg"))[0], folder / "late.jpg")
    result, fired = _run_killed(source, output, "driver-before-publish", tmp_path, resume=True)
    assert result.returncode == -signal.SIGKILL and [mark.rsplit(":", 1)[0] for mark in fired] == [
        "driver-before-publish:1"], result.stderr[-2000:]
    assert (output / "_SUCCESS").exists() and "late.jpg" not in str(_published(output)[0])  # the old version
    reports: list[watch.PassReport] = []
    watch.watch(_config(source, output), WatchSchedule(interval_s=0, max_passes=1), reports.append)
    assert reports[0].manifest is not None, "a restarted watch must publish what the dead pass featurized"
    assert (reports[0].manifest.counts.featurized, reports[0].manifest.counts.listed) == (0, 57)
    assert any(path.endswith("late.jpg") for path, _ in _published(output)[0])


def test_incremental_pass_featurizes_only_new_and_changed_images(spark, sample_dir: Path, tmp_path: Path) -> None:
    """+5 new, 1 rewritten, 1 touched (same bytes), 2 deleted: 6 featurized, the touched one without a
    model call, 2 removed, PCA refitted; the output equals a fresh run over the new input."""
    source = copy_subset(sample_dir, tmp_path / "in", 3, {"Training": 8, "Test": 3})
    output = tmp_path / "out"
    first = pipeline.run(_config(source, output))
    assert first.counts.featurized == 33
    kiwi = sorted((sample_dir / "Training").iterdir())[5]
    new = sorted(kiwi.glob("*.jpg"))[:5]
    (source / "Training" / kiwi.name).mkdir()
    for photo in new:
        shutil.copy(photo, source / "Training" / kiwi.name / photo.name)
    files = sorted(source.rglob("*.jpg"))
    rewritten, touched, deleted = files[0], files[1], files[2:4]
    shutil.copy(new[0], rewritten)  # other bytes under the same key
    os.utime(touched, ns=(time.time_ns(), time.time_ns() + 10**9))  # a new version, the same bytes
    for path in deleted:
        path.unlink()
    second = pipeline.run(_config(source, output, resume=True))
    counts = second.counts
    assert (counts.featurized, counts.removed, counts.listed) == (6, 2, 36)
    assert counts.reused == 36 - 6 and counts.ok + counts.rejected == counts.listed
    assert second.pca.explained_variance_ratio != first.pca.explained_variance_ratio  # refitted on the new rows
    fresh = tmp_path / "fresh"
    pipeline.run(_config(source, fresh))
    assert_same_output(output, fresh)
    features = pq.read_table(output / "features", columns=["path", "features"]).to_pydict()
    by_path = dict(zip(features["path"], features["features"], strict=True))
    reference = pq.read_table(fresh / "features", columns=["path", "features"]).to_pydict()
    np.testing.assert_allclose(by_path[str(rewritten)],
                               dict(zip(reference["path"], reference["features"], strict=True))[str(rewritten)])


def test_touched_file_costs_no_model_call(spark, sample_dir: Path, tmp_path: Path) -> None:
    """The pass that sees a touched file records it as an alias of its earlier version (same sha256)."""
    source = copy_subset(sample_dir, tmp_path / "in", 2, {"Training": 4})
    output = tmp_path / "out"
    pipeline.run(_config(source, output))
    touched = sorted(source.rglob("*.jpg"))[0]
    os.utime(touched, ns=(time.time_ns(), time.time_ns() + 10**9))
    manifest = pipeline.run(_config(source, output, resume=True))
    assert (manifest.counts.featurized, manifest.counts.reused) == (0, 8)
    rows = pq.read_table(output / "features", columns=["path", "features"]).to_pydict()
    assert str(touched) in rows["path"]


@pytest.mark.parametrize("flag", [["--image-size", "160"], ["--model", "efficientnet-lite1"], ["--augment", "1"]])
def test_resume_with_another_model_is_refused_and_the_output_untouched(spark, photos: Path, reference: Path,
                                                                      tmp_path: Path, capsys, flag) -> None:
    output = tmp_path / "out"
    shutil.copytree(reference, output)
    before = {path: path.stat().st_mtime_ns for path in output.rglob("*")}
    code = cli.main(["run", "--input", str(photos), "--output", str(output), "--resume", "--k", "3", *flag])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert len(lines) == 1 and "was made differently" in lines[0] and "--overwrite" in lines[0], lines
    assert {"--image-size": "input size", "--model": "model", "--augment": "--augment"}[flag[0]] in lines[0]
    assert {path: path.stat().st_mtime_ns for path in output.rglob("*")} == before


def test_an_existing_output_without_resume_or_overwrite_is_refused(spark, photos: Path, reference: Path,
                                                                   tmp_path: Path) -> None:
    output = tmp_path / "out"
    shutil.copytree(reference, output)
    with pytest.raises(ValueError, match=r"already exists; pass --resume .* or --overwrite"):
        pipeline.run(_config(photos, output))


def test_driver_killed_mid_featurize_then_resume(spark, photos: Path, reference: Path, tmp_path: Path) -> None:
    output = tmp_path / "out"
    result, fired = _run_killed(photos, output, "driver-after-segments:2", tmp_path)
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    assert fired and fired[0].startswith("driver-after-segments")
    assert not (output / "_SUCCESS").exists() and not (output / "features").exists()
    done = journal_keys(output)
    assert 0 < len(done) < 56
    manifest = pipeline.run(_config(photos, output, resume=True))  # the dead run's lock: its pid is gone
    assert manifest.counts.featurized == 56 - len(done) and manifest.counts.reused == len(done)
    assert_same_output(output, reference)


def _relative_output(output: Path, root: str, photos: Path) -> None:
    """An output downloaded from S3, its s3:// photo paths rewritten to the local `photos` (the reference's)."""
    for folder in ("features", "errors"):
        for part in (output / folder).glob("*.parquet"):
            table = pq.read_table(part)
            paths = [str(photos / path[len(root) + 1:]) for path in table.column("path").to_pylist()]
            pq.write_table(table.set_column(table.schema.get_field_index("path"), "path", pa.array(paths)), part)


def test_driver_killed_mid_featurize_on_s3_then_resume(spark, s3_endpoint: str, photos: Path, reference: Path,
                                                        tmp_path: Path) -> None:
    """The same kill as above with input, output and journal in S3 (moto): segments are single PUTs, so
    the journal read back holds whole segments only; --resume featurizes exactly what it lacks."""
    from fruitpipe.devtools.s3server import download_prefix, upload_folder

    upload_folder(s3_endpoint, photos, "resume-s3", "in")
    source, output = "s3://resume-s3/in", "s3://resume-s3/killed"
    result, fired = _run_killed(source, output, "driver-after-segments:2", tmp_path,
                                extra_env={"AWS_ENDPOINT_URL": s3_endpoint})
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    assert fired and fired[0].startswith("driver-after-segments")
    killed = tmp_path / "killed"
    download_prefix(s3_endpoint, "resume-s3", "killed", killed)
    assert not (killed / "_SUCCESS").exists() and not (killed / "features").exists()
    done = journal_keys(killed)
    assert 0 < len(done) < 56
    manifest = pipeline.run(RunConfig(input=source, output=output, pca=PcaSettings(k=3), resume=True,
                                      executor=SMALL_BATCHES, s3=S3Options(endpoint_url=s3_endpoint)))
    assert manifest.counts.featurized == 56 - len(done) and manifest.counts.reused == len(done)
    resumed = tmp_path / "resumed"
    download_prefix(s3_endpoint, "resume-s3", "killed", resumed)
    _relative_output(resumed, source, photos)
    assert_same_output(resumed, reference)


def test_driver_killed_before_publishing_then_before_success_then_resume_featurizes_nothing(
        spark, photos: Path, reference: Path, tmp_path: Path) -> None:
    """Killed once everything is featurized but before publishing (the output untouched), then a --resume
    killed after publishing but before _SUCCESS (a journal compacted but not cleaned): neither state is
    visible as a version, and the next --resume featurizes nothing."""
    output = tmp_path / "out"
    result, fired = _run_killed(photos, output, "driver-before-publish", tmp_path)
    assert result.returncode == -signal.SIGKILL and [mark.rsplit(":", 1)[0] for mark in fired] == [
        "driver-before-publish:1"], result.stderr[-2000:]
    assert sorted(path.name for path in output.iterdir()) == ["_fruitpipe"] and len(journal_keys(output)) == 56
    result, fired = _run_killed(photos, output, "driver-before-success", tmp_path, resume=True)
    assert result.returncode == -signal.SIGKILL and [mark.rsplit(":", 1)[0] for mark in fired] == [
        "driver-before-success:1"], result.stderr[-2000:]
    assert (output / "features").exists() and (output / "manifest.json").exists()
    assert not (output / "_SUCCESS").exists()
    manifest = pipeline.run(_config(photos, output, resume=True))
    assert (manifest.counts.featurized, manifest.counts.reused) == (0, 56)
    assert_same_output(output, reference)


def test_python_worker_death_is_retried_and_redoes_at_most_one_batch(spark, photos: Path, reference: Path,
                                                                     tmp_path: Path) -> None:
    """local[2,3]: Spark retries a failed task. The worker of partition 0 dies after its 2nd segment; the
    retry skips what the first attempt wrote down."""
    output, batches = tmp_path / "out", tmp_path / "batches.jsonl"
    result, fired = _run_killed(photos, output, "worker-after-segment:2", tmp_path, master="local[2,3]",
                                extra_env={"FRUITPIPE_BATCH_LOG": str(batches)})
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(fired) == 1 and fired[0].startswith("worker-after-segment:2"), fired
    counts = json.loads(result.stdout.strip().splitlines()[-1])
    assert counts["featurized"] == 56 and counts["ok"] == 56
    embedded = sum(json.loads(line)["rows"] for line in batches.read_text().splitlines())
    assert 56 <= embedded <= 56 + SMALL_BATCHES.batch_size, embedded
    assert_same_output(output, reference)


def test_a_second_writer_is_refused_and_a_dead_writers_lock_taken_over(spark, photos: Path, reference: Path,
                                                                       tmp_path: Path, capsys, caplog) -> None:
    output = tmp_path / "out"
    shutil.copytree(reference, output)
    store = Store()
    with lock.held(store, str(output), "another-run"):  # a live writer (this process)
        code = cli.main(["run", "--input", str(photos), "--output", str(output), "--resume", "--k", "3"])
        lines = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and "is being written by another fruitpipe run (another-run" in lines[0]
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (output / lock.LOCK).write_text(json.dumps({"run_id": "killed-run", "host": os.uname().nodename,
                                                "pid": int(dead.stdout), "heartbeat": time.time()}))
    with caplog.at_level("WARNING", logger="fruitpipe.batch.lock"):
        manifest = pipeline.run(_config(photos, output, resume=True))
    assert manifest.counts.featurized == 0
    assert any("taking over the lock of run killed-run" in record.getMessage() for record in caplog.records)
    assert not (output / lock.LOCK).exists()  # released at the end


def test_transient_read_failures_are_retried_next_pass(spark, s3_endpoint: str, small_sample: Path,
                                                       tmp_path: Path) -> None:
    """3 keys answer 500 for good through the fault proxy: reported, not remembered; the next pass
    (without the proxy) featurizes exactly those 3."""
    from fruitpipe.devtools.faultproxy import FaultProxy
    from fruitpipe.devtools.s3server import upload_folder

    upload_folder(s3_endpoint, small_sample, "resume-in", "photos")
    failing = sorted(str(p.relative_to(small_sample)) for p in small_sample.rglob("*.jpg"))[:3]
    source, output = "s3://resume-in/photos", tmp_path / "out"
    with FaultProxy(s3_endpoint, fail_keys=set(failing)) as endpoint:
        first = pipeline.run(RunConfig(input=source, output=str(output), pca=PcaSettings(k=3),
                                       s3=S3Options(endpoint_url=endpoint, read_attempts=1)))
    assert (first.counts.rejected, first.counts.featurized) == (3, first.counts.listed - 3)
    errors = pq.read_table(output / "errors").to_pydict()
    assert sorted(errors["path"]) == [f"{source}/{key}" for key in failing] and set(errors["stage"]) == {"read"}
    second = pipeline.run(RunConfig(input=source, output=str(output), pca=PcaSettings(k=3), resume=True,
                                    s3=S3Options(endpoint_url=s3_endpoint)))
    assert (second.counts.featurized, second.counts.rejected, second.counts.ok) == (3, 0, second.counts.listed)


def _lines_until(stream, marker: str, seen: list[str]) -> str:
    """Read `stream` line by line into `seen` until a line containing `marker` (that line)."""
    for line in stream:
        seen.append(line)
        if marker in line:
            return line
    pytest.fail(f"{marker!r} never came: " + "".join(seen)[-3000:])


def _pca_by_key(output: Path, root: Path) -> dict[str, np.ndarray]:
    table = pq.read_table(output / "features", columns=["path", "view", "pca"]).to_pydict()
    return {str(Path(path).relative_to(root)): np.asarray(pca)
            for path, view, pca in zip(table["path"], table["view"], table["pca"], strict=True) if view == 0}


def test_watch_publishes_each_pass_keeps_pca_and_stops_cleanly_on_sigterm(
        spark, photos: Path, reference: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`fruitpipe watch` in one session: pass 1 featurizes all, pass 2 finds no change and publishes
    nothing, 5 new photos arrive and SIGTERM lands mid-pass: that pass finishes and publishes (PCA
    kept: 61 photos are under the 10% growth), the watch exits 0; a restart continues (no change)."""
    source, output = tmp_path / "in", tmp_path / "out"
    shutil.copytree(photos, source)
    command = [sys.executable, "-m", "fruitpipe.cli", "watch", "--input", str(source), "--output", str(output),
               "--k", "3", "--interval", "2"]  # 2 s: the 5 copies land well between two listings
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                               start_new_session=True)
    assert process.stdout is not None
    seen: list[str] = []
    try:
        assert "56 featurized, 0 reused, 0 removed" in _lines_until(process.stdout, "watch pass 1:", seen)
        published = (output / "_SUCCESS").stat().st_mtime_ns
        assert "no change (56 listed)" in _lines_until(process.stdout, "watch pass 2:", seen)
        assert (output / "_SUCCESS").stat().st_mtime_ns == published  # nothing rewritten
        arrived = sorted((source / "Training").iterdir())[0]
        for index, photo in enumerate(sorted(arrived.glob("*.jpg"))[:5]):
            shutil.copy(photo, arrived / f"arrived-{index}.jpg")  # same bytes, new keys
        _lines_until(process.stdout, "featurize: started", seen)
        os.kill(process.pid, signal.SIGTERM)
        rest = process.stdout.read()
        assert process.wait(timeout=120) == 0, "".join(seen)[-2000:] + rest[-3000:]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    pass_lines = [line for line in rest.splitlines() if line.startswith("watch pass")]
    assert len(pass_lines) == 1 and "5 featurized, 56 reused" in pass_lines[0], rest[-3000:]
    assert "appended to" in pass_lines[0]  # only new photos under the kept PCA: new parts, nothing rewritten
    assert "PCA k=3 kept (fitted on 56 photos)" in pass_lines[0]
    assert "stopped by SIGTERM after the pass in progress" in rest and "Traceback" not in rest, rest[-3000:]
    manifest = json.loads((output / "manifest.json").read_text())
    assert (manifest["counts"]["ok"], manifest["pca"]["fitted_rows"], manifest["pca"]["refitted"]) == (61, 56, False)
    pca, expected = _pca_by_key(output, source), _pca_by_key(reference, photos)
    assert len(pca) == 61
    for key, vector in expected.items():  # the frozen PCA is pass 1's: the uninterrupted run's fit on the 56
        np.testing.assert_allclose(pca[key], vector, atol=1e-4)
    for index in range(5):  # same bytes as their originals: the same projection
        key = str((arrived / f"arrived-{index}.jpg").relative_to(source))
        original = str(sorted(p for p in arrived.glob("*.jpg") if not p.name.startswith("arrived"))[index]
                       .relative_to(source))
        np.testing.assert_allclose(pca[key], pca[original], atol=1e-5)
    capsys.readouterr()
    handler = signal.getsignal(signal.SIGTERM)
    try:
        assert cli.main([*command[3:], "--max-passes", "1"]) == 0  # the restart, in this process's session
    finally:
        signal.signal(signal.SIGTERM, handler)  # cli.main installs its SIGTERM handler
    assert capsys.readouterr().out.startswith("watch pass 1: no change (61 listed)")


def _frozen_pass(spark, config: RunConfig, fitted: Path) -> RunManifest:
    """One `watch`-style pass into `config.output` with the PCA of the output `fitted` kept (frozen)."""
    model = CentredPCAModel.read().load(str(fitted / "pca_model"))
    timer = pipeline.StageTimer()
    prepared, listing = pipeline.prepare(config, timer)
    journal = pipeline.open_journal(prepared)
    job = pipeline.Job(prepared, listing, journal, timer, pipeline.new_run_id(), sinks.Publication(),
                       pipeline.FrozenPca(model, fitted_rows=56))
    return pipeline.run_pass(spark, job)


def _feature_parts(output: Path) -> dict[str, int]:
    return {part.name: part.stat().st_mtime_ns for part in (output / "features").glob("*.parquet")}


def _one_batch_per_task(source: Path, output: Path, resume: bool = False) -> RunConfig:
    """`_config` with the default batch size: one segment per task on these inputs (few journal files)."""
    return replace(_config(source, output, resume=resume), executor=ExecutorSettings())


def test_a_pass_that_only_adds_appends_and_equals_a_rewrite(spark, photos: Path, tmp_path: Path) -> None:
    """Under a frozen PCA a pass that only adds photos (3 new, 1 undecodable) writes new parts next to the
    old ones and rewrites nothing else but the manifest, sample and report; its output equals a pass that
    rewrites everything with the same PCA (rows, projections, errors, counts, sample). A pass after one
    that died once it had featurized rewrites; it compacts the journal only when due (not then: few files,
    nothing stale; then yes, once 8 of 61 photos went)."""
    source, appended, rewritten = tmp_path / "in", tmp_path / "appended", tmp_path / "rewritten"
    shutil.copytree(photos, source)
    pipeline.run(_one_batch_per_task(source, appended))
    shutil.copytree(appended, rewritten)
    for published in rewritten.glob("_fruitpipe/journal-*/published.json"):
        published.unlink()  # no record of what the version is made of: that pass must rewrite
    before = _feature_parts(appended)
    folder = sorted((source / "Training").iterdir())[1]
    for index, photo in enumerate(sorted((source / "Test" / folder.name).glob("*.jpg"))[:3]):
        shutil.copy(photo, folder / f"new-{index}.jpg")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    added = _frozen_pass(spark, _one_batch_per_task(source, appended, resume=True), appended)
    full = _frozen_pass(spark, _one_batch_per_task(source, rewritten, resume=True), appended)
    assert (added.counts.featurized, added.counts.reused, added.counts.listed) == (4, 56, 60)
    assert added.counts == full.counts and added.class_counts == full.class_counts
    assert (added.pca.refitted, full.pca.refitted) == (False, False)
    assert (added.publication, full.publication) == ("appended", "rewritten")
    parts = _feature_parts(appended)
    assert {name: parts[name] for name in before} == before  # the old parts untouched
    assert [name for name in parts if name not in before] and all(added.run_id in name for name in parts
                                                                  if name not in before)
    assert not any(full.run_id in name for name in _feature_parts(rewritten))
    assert_same_output(appended, rewritten)
    projected, expected = _pca_by_key(appended, source), _pca_by_key(rewritten, source)
    assert set(projected) == set(expected) and len(expected) == 59
    for key, vector in expected.items():
        np.testing.assert_allclose(projected[key], vector, atol=1e-5)
    assert (json.loads((appended / "report_sample.json").read_text())
            == json.loads((rewritten / "report_sample.json").read_text()))
    success = json.loads((appended / "_SUCCESS").read_text())
    assert {name for name in success["files"] if name.startswith("features/")} == {f"features/{n}" for n in parts}
    journal = next((appended / "_fruitpipe").glob("journal-*"))
    assert len(list((journal / "segments").iterdir())) == 2  # the first run's segments and this pass's

    dead = journal / "segments" / "29991231T000000Z-dead"  # a pass that featurized, then died
    dead.mkdir()
    shutil.copy(next((journal / "segments" / added.run_id).glob("*.parquet")), dead / "p00000-a00-b00000.parquet")
    shutil.copy(sorted((source / "Test" / folder.name).glob("*.jpg"))[3], folder / "new-3.jpg")
    after_death = _frozen_pass(spark, _one_batch_per_task(source, appended, resume=True), appended)
    assert not any(after_death.run_id in name for name in _feature_parts(appended))  # rewritten
    assert after_death.publication == "rewritten"
    assert after_death.counts.listed == 61 and after_death.counts.featurized == 1
    folders = sorted(p.name for p in (journal / "segments").iterdir())  # few files, nothing stale: not compacted
    assert dead.name in folders and after_death.run_id in folders and len(folders) == 4
    published = json.loads(next(journal.parent.glob("journal-*/published.json")).read_text())
    assert sorted(published["passes"]) == folders  # the next pass may append to this version

    for photo in sorted(folder.glob("*.jpg"))[:8]:  # 8 of 61 gone: the journal's stale share passes 10%
        photo.unlink()
    pruned = pipeline.run(_one_batch_per_task(source, appended, resume=True))
    assert (pruned.publication, pruned.counts.removed, pruned.counts.listed) == ("rewritten", 8, 53)
    assert [p.name for p in (journal / "segments").iterdir()] == [pruned.run_id + "-compact"]
    assert journal_keys(appended) == {str(p.relative_to(source)) for p in source.rglob("*.jpg")}
    assert "journal_compact" in pruned.timings_s.stages


WARM_WATCH = """
import json, sys
from pathlib import Path
from fruitpipe.batch import watch
from fruitpipe.benchmark.incremental import add_new_images
from fruitpipe.config import ExecutorSettings, PcaSettings, RunConfig, WatchSchedule
source, output = Path(sys.argv[1]), Path(sys.argv[2])
def on_pass(report):
    counts = report.manifest.counts if report.manifest else None
    print(json.dumps({"pass": report.number, "featurized": counts.featurized if counts else 0}), flush=True)
    if report.number == 1:
        add_new_images(source, 3)  # new bytes: each costs a model call in pass 2
config = RunConfig(input=str(source), output=str(output), pca=PcaSettings(k=3), master="local[2]",
                   executor=ExecutorSettings(batch_size=8))
watch.watch(config, WatchSchedule(interval_s=3, keep_warm_s=0.5, max_passes=2), on_pass,
            on_warm=lambda job: print(json.dumps({"warm": job.workers}), flush=True))
"""


def test_watch_keeps_the_python_workers_and_their_model_between_passes(sample_dir: Path, tmp_path: Path) -> None:
    """A watch in its own local[2] session: while it waits, keep-warm jobs run every 0.5 s on the same two
    Python workers, which hold the model; the next pass featurizes in those workers (Spark would end
    workers idle for a minute: `bench/incremental.json` measures that at `--interval 90`)."""
    source = copy_subset(sample_dir, tmp_path / "in", 2, {"Training": 6, "Test": 2})
    batches = tmp_path / "batches.jsonl"
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "FRUITPIPE_BATCH_LOG": str(batches)}
    done = subprocess.run([sys.executable, "-c", WARM_WATCH, str(source), str(tmp_path / "out")], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    passes = [line["featurized"] for line in lines if "pass" in line]
    warm = [line["warm"] for line in lines if "warm" in line]
    assert passes == [16, 3], lines
    assert len(warm) >= 2, lines  # a 3 s wait, a job every 0.5 s of idleness
    pids = {pid for job in warm for pid, _ in job}
    assert len(pids) == 2 and all(len(job) == 2 for job in warm), warm  # the same two workers, never replaced
    assert all(had for _, had in warm[-1]), warm  # they hold the model
    pass_two = [json.loads(line)["pid"] for line in batches.read_text().splitlines()][-1]
    assert pass_two in pids


class _CountingFeaturizer:
    """Stands in for ImageFeaturizer.warm: records when it was called."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    def warm(self, spark, tasks: int) -> list[tuple[int, bool]]:
        self.calls.append(time.monotonic())
        return [(1, True)] * tasks


def _keep_warm(every_s: float, monkeypatch: pytest.MonkeyPatch) -> tuple[watch._KeepWarm, _CountingFeaturizer]:
    monkeypatch.setattr(watch.sparkapi, "default_parallelism", lambda spark: 2)
    featurizer = _CountingFeaturizer()
    return watch._KeepWarm(None, featurizer, every_s, lambda job: None), featurizer  # type: ignore[arg-type]


def test_keep_warm_runs_when_workers_are_idle_and_never_when_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """Cold workers are warmed at once, then after every `every_s` of idleness; a pass that used them
    restarts the count; 0 never runs a job; a stop request ends the wait at once."""
    from fruitpipe import signals

    warmth, featurizer = _keep_warm(0.2, monkeypatch)
    began = time.monotonic()
    warmth.wait(signals.StopRequest(), 0.5)
    assert time.monotonic() - began >= 0.5
    assert 2 <= len(featurizer.calls) <= 3 and featurizer.calls[0] - began < 0.15, featurizer.calls
    assert all(b - a >= 0.2 for a, b in zip(featurizer.calls, featurizer.calls[1:], strict=False))
    warmth.used()  # a pass just ran Python tasks
    featurizer.calls.clear()
    warmth.wait(signals.StopRequest(), 0.15)
    assert featurizer.calls == []

    off, featurizer = _keep_warm(0, monkeypatch)
    off.wait(signals.StopRequest(), 0.3)
    assert featurizer.calls == []

    warmth, featurizer = _keep_warm(0.2, monkeypatch)
    stop = signals.StopRequest()
    stop.event.set()
    began = time.monotonic()
    warmth.wait(stop, 10)
    assert time.monotonic() - began < 1 and featurizer.calls == []


def test_watch_schedule_refits_on_growth_or_every_n_passes() -> None:
    growth = WatchSchedule()  # default: 10% more photos than the fit
    assert growth.refit_at(56) == 62 and not growth.refit_now(100)
    assert WatchSchedule(refit_growth=0.5).refit_at(100) == 150
    every = WatchSchedule(refit_every=2)
    assert every.refit_at(56) is None and [every.refit_now(n) for n in (1, 2, 3)] == [False, True, True]
    kept = pipeline.FrozenPca(model=None, fitted_rows=56, refit_at_rows=62)  # type: ignore[arg-type]
    assert kept.kept_for(61) and not kept.kept_for(62)


@pytest.mark.parametrize(("flags", "message"), [
    (["--refit-every", "2", "--refit-growth", "0.2"], "not allowed with argument"),
    (["--refit-every", "0"], "expected a positive integer"),
    (["--interval", "-1"], "expected a number >= 0"),
    (["--keep-warm", "60"], "expected 0 (off) or from 0.5 to under 60 seconds"),
    (["--overwrite"], "unrecognized arguments: --overwrite"),
])
def test_watch_flags_are_checked_in_one_line(capsys: pytest.CaptureFixture[str], flags: list[str],
                                            message: str) -> None:
    with pytest.raises(SystemExit) as stopped:
        cli.main(["watch", "--output", "/nonexistent/out", *flags])
    lines = capsys.readouterr().err.strip().splitlines()
    assert stopped.value.code == 2 and len(lines) == 1 and message in lines[0], lines


def test_rows_are_read_back_in_tasks_sized_by_their_bytes_not_by_the_cnn() -> None:
    """10k photos of 1280-d features on 2 cores: 4 read-back tasks (the floor of 2 per core), not the 40
    the CNN's 256 images per task would give; 2280-d (+logits) rows make smaller tasks; the CNN's setting
    stays the floor."""
    lite0 = pipeline.readback_rows_per_partition(1280, ExecutorSettings().rows_per_partition)
    assert lite0 * 1280 * 4 <= pipeline.READBACK_BYTES_PER_PARTITION < (lite0 + 1) * 1280 * 4
    assert sources.partition_count(10_000, 2, lite0) == 4
    assert sources.partition_count(90_000, 2, lite0) == 14
    assert pipeline.readback_rows_per_partition(2280, 256) < lite0
    assert pipeline.readback_rows_per_partition(1280, 10_000) == 10_000
