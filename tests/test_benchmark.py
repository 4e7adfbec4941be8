"""The benchmark harness itself, at a tiny size: results.json has every key with sane values (never timings)."""
from __future__ import annotations

import importlib
import json
import os
from pathlib import Path

import pytest

from fruitpipe.benchmark import DEFAULT_MEASUREMENTS, dataset, extra, harness, report
from fruitpipe.cli import main

TINY = {"images": 60, "scaling": (30, 60), "subset": 30, "s3_images": 30, "limit_images": 64, "batch_size": 16,
        "limit_seconds": 0.5}


def test_plan_runs_the_main_size_once_and_adds_the_s3_local_reference() -> None:
    steps = harness.plan(harness.BenchOptions(**{**TINY, "s3_images": 40}))
    keys = [step.key for step in steps]
    assert keys == ["limit", "fruitpipe", "limit_bf16", "fruitpipe_bf16", "seed_torch_eager", "seed_onnxruntime",
                    "spark_pandas_udf",
                    "spark_predict_batch_udf", "ray_data", "fruitpipe_30", "fruitpipe_40", "fruitpipe_s3_40"]
    assert [step.s3 for step in steps].count(True) == 1
    assert {step.key: step.size for step in steps}["fruitpipe_40"] == 40


def test_plan_adds_the_s3_reference_when_scaling_is_not_asked_for() -> None:
    steps = harness.plan(harness.BenchOptions(**TINY, only=("s3",)))
    assert [(step.key, step.size, step.s3) for step in steps] == [("fruitpipe_30", 30, False),
                                                                  ("fruitpipe_s3_30", 30, True)]
    assert [step.key for step in harness.plan(harness.BenchOptions(**{**TINY, "s3_images": 60}, only=("s3",)))] == [
        "fruitpipe", "fruitpipe_s3_60"]


def test_unknown_measurement_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="unknown measurement"):
        harness.BenchOptions(only=("limit", "tensorflow"))


@pytest.mark.parametrize(("name", "function"), [("cluster", extra.cluster_scaling), ("serve", extra.serve_latency)])
def test_cluster_and_serve_are_one_step_each_run_by_extra(name: str, function: object) -> None:
    options = harness.BenchOptions(**TINY, only=(name,), command=f"fruitpipe bench --only {name}")
    [step] = harness.plan(options)
    assert step.key == name and step.module == "fruitpipe.benchmark.extra" and not step.s3
    assert importlib.import_module(step.module).MEASURES[step.measure] is function
    assert step.params["command"] == f"fruitpipe bench --only {name}"


def test_cluster_runs_on_at_most_its_own_set_size() -> None:
    assert harness.plan(harness.BenchOptions(only=("cluster",)))[0].size == harness.CLUSTER_IMAGES
    assert harness.plan(harness.BenchOptions(**TINY, only=("cluster",)))[0].size == TINY["images"]


def test_cluster_and_serve_are_opt_in() -> None:
    assert "cluster" not in DEFAULT_MEASUREMENTS and "serve" not in DEFAULT_MEASUREMENTS
    keys = [step.key for step in harness.plan(harness.BenchOptions(**TINY))]
    assert "cluster" not in keys and "serve" not in keys and "lever_baseline" not in keys
    assert all(step.module == harness.MEASURES_MODULE for step in harness.plan(harness.BenchOptions(**TINY)))
    steps = harness.plan(harness.BenchOptions(**TINY, only=("serve", "limit", "cluster")))
    assert [step.key for step in steps] == ["limit", "cluster", "serve"]  # run order, not the order asked


def test_the_s3_reference_goes_just_before_the_s3_run_whatever_follows() -> None:
    steps = harness.plan(harness.BenchOptions(**TINY, only=("s3", "levers", "cluster")))
    keys = [step.key for step in steps]
    assert keys[:3] == ["fruitpipe_30", "fruitpipe_s3_30", "lever_embed"] and keys[-1] == "cluster"


def test_unknown_measurement_next_to_the_opt_in_ones_is_a_value_error() -> None:
    with pytest.raises(ValueError, match=r"unknown measurement.*clusters"):
        harness.BenchOptions(only=("cluster", "clusters"))


def test_child_runs_the_measurements_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stand-in measures module on PYTHONPATH: the harness's child is `python -m MODULE NAME PARAMS OUT`."""
    (tmp_path / "fake_measures.py").write_text(
        "import json, sys\n"
        "name, params, out = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]\n"
        "open(out, 'w').write(json.dumps({'name': name, 'echo': params['x']}))\n", encoding="utf-8")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    result = harness._child("anything", {"x": 7}, timeout_s=30, module="fake_measures")
    assert result["name"] == "anything" and result["echo"] == 7 and result["peak_rss_mb"]["driver"] > 0


def test_extra_main_writes_the_measures_result(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(extra.MEASURES, "fake", lambda params: {"doubled": params["n"] * 2})
    assert extra.main(["fake", json.dumps({"n": 21}), str(tmp_path / "out.json")]) == 0
    assert json.loads((tmp_path / "out.json").read_text(encoding="utf-8")) == {"doubled": 42}


def test_cluster_scaling_keeps_the_best_run_per_size(monkeypatch: pytest.MonkeyPatch) -> None:
    rates = {(1, 0): 20.0, (1, 1): 25.0, (2, 0): 40.0, (2, 1): 30.0}

    def fake_run(workers: int, images: Path, scratch: Path, index: int) -> dict[str, object]:
        return {"workers": workers, "featurize_img_s": rates[workers, index]}

    monkeypatch.setattr(extra, "_run_on_cluster", fake_run)
    result = extra.cluster_scaling({"folder": "/nowhere", "runs": 2, "command": "fruitpipe bench --only cluster"})
    assert len(result["runs"]) == 4 and result["per_core_featurize_img_s"] == 25.0
    assert result["scaling_efficiency"] == 0.8  # 40 / (2 x 25)
    assert set(result) == {"machine", "runs", "per_core_featurize_img_s", "scaling_efficiency", "command"}


def test_serve_point_summary_and_row_survive_all_requests_failing() -> None:
    context = {"loadavg_1_5_15_before": [0.5, 0.4, 0.3],
               "cpu_cores_used": {"machine": 1.5, "server": 1.0, "clients": 0.25, "other": 0.25}}
    tally = extra._Tally(4, latencies=[10.0, 20.0, 30.0, 40.0], inference=[5.0, 6.0, 7.0, 8.0])
    point = {"server": {"onnx_threads": 1, "concurrency": 2}, **extra._summary(tally, 2, 2.0, context)}
    assert point["ok"] == 4 and point["throughput_img_s"] == 2.0 and point["latency_ms"]["max"] == 40.0
    assert point["latency_ms"]["mean"] == 25.0 and point["server_cpu_ms_per_request"] == 500.0
    assert extra.row(point).startswith("| 1x2 | 2 | 4/4 | 25.0 | 38.5 |")
    failed = extra._Tally(2, failures=["500 boom", "500 boom"])
    point = {"server": {"onnx_threads": 2, "concurrency": 1}, **extra._summary(failed, 1, 1.0, context)}
    assert point["failed"] == 2 and point["latency_ms"]["p95"] is None and "| - |" in extra.row(point)
    assert [failed.next_request(), failed.next_request(), failed.next_request()] == [0, 1, None]


def test_cli_refuses_bad_scaling_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--scaling", "2k,10k"]) == 1
    expected = "fruitpipe bench: error: --scaling expects comma-separated integers, got '2k,10k'"
    assert capsys.readouterr().err.strip() == expected


def test_subsets_are_balanced_hard_links_of_one_set(tmp_path: Path) -> None:
    folders = dataset.prepare(tmp_path, [40, 72])
    small = sorted(p.relative_to(folders[40]).as_posix() for p in folders[40].rglob("*.jpg"))
    large = sorted(p.relative_to(folders[72]).as_posix() for p in folders[72].rglob("*.jpg"))
    assert len(small) == 40 and len(large) == 72 and set(small) <= set(large)
    per_class = {}
    for relative in large:
        label = relative.split("/")[1]
        per_class[label] = per_class.get(label, 0) + 1
    assert len(per_class) == 18 and max(per_class.values()) - min(per_class.values()) <= 1
    assert os.stat(folders[40] / small[0]).st_nlink >= 3  # the full set + both subsets share the file
    before = {p: p.stat().st_mtime_ns for p in folders[72].rglob("*.jpg")}
    assert dataset.prepare(tmp_path, [72])[72] == folders[72]  # reused, not rebuilt
    assert {p: p.stat().st_mtime_ns for p in folders[72].rglob("*.jpg")} == before


def test_update_doc_keeps_the_hand_written_text(tmp_path: Path) -> None:
    doc = tmp_path / "performance.md"
    doc.write_text(f"# Perf\nintro\n\n{report.BEGIN}\nold table\n{report.END}\n\n## Levers\nnotes\n", encoding="utf-8")
    results = {"command": "fruitpipe bench", "started": "t0", "finished": "t1", "options": {**TINY, "latency_ms": 20},
               "machine": {"cpus": 2, "cpu": "x", "memory_gb": 1, "os": "Linux", "python": "3.11", "java": "17",
                           "versions": {"pyspark": "4"}, "load_average_at_start": [0.0]},
               "measurements": {"limit": {"images": 64, "images_s": 80.0, "peak_rss_mb": {"total": 900.0}}},
               "targets": {}}
    report.update_doc(doc, results)
    text = doc.read_text(encoding="utf-8")
    assert text.startswith("# Perf\nintro\n") and text.endswith("## Levers\nnotes\n")
    assert "old table" not in text and text.count(report.BEGIN) == 1
    assert "| 1. Limit" in text and "**80.0**" in text


def test_targets_are_ratios_of_the_measurements() -> None:
    """Pure arithmetic on made-up results: each target is the right ratio, a missing baseline gives None."""
    measured = {"limit": {"images_s": 100.0}, "limit_bf16": {"images_s": 210.0},
                "seed_onnxruntime": {"images_s": 80.0}, "fruitpipe_bf16": {"images_s": 150.0},
                "fruitpipe": {"images_s": 60.0, "featurize_images_s": 90.0,
                              "time_to_first_batch_s": 12.0, "timings_s": {"pca_fit": 3.0, "write": 1.0,
                                                                           "write_errors": 1.0, "total": 100.0},
                              "peak_rss_mb": {"total": 1200.0, "driver_and_python_workers": 600.0}},
                "fruitpipe_30": {"images_s": 30.0, "featurize_images_s": 45.0,
                                 "peak_rss_mb": {"total": 1000.0, "driver_and_python_workers": 500.0}},
                "fruitpipe_s3_30": {"images_s": 24.0, "featurize_images_s": 36.0}}
    targets = report.targets(measured, main_images=60, sizes=(30, 60), s3_images=30)
    assert targets["fruitpipe_over_limit"]["measured"] == pytest.approx(0.6)
    assert targets["fruitpipe_over_limit"]["met"] is False and targets["fruitpipe_over_limit"]["target"] == 0.75
    assert targets["fruitpipe_over_limit_largest"]["measured"] == pytest.approx(0.6)  # 60 images is the largest
    assert targets["featurize_stage_largest_over_limit"]["measured"] == pytest.approx(0.9)
    assert targets["featurize_stage_largest_over_limit"]["met"] is False  # the bar is 0.95
    assert targets["fruitpipe_over_seed_onnxruntime"]["measured"] == pytest.approx(0.75)
    assert targets["fruitpipe_bf16_over_seed_onnxruntime_fp32"]["measured"] == pytest.approx(1.875)
    assert targets["limit_bf16_over_limit_fp32"]["measured"] == pytest.approx(2.1)
    assert targets["limit_bf16_over_limit_fp32"]["met"]
    assert targets["pca_fit_share_largest"]["measured"] == pytest.approx(0.03)
    assert targets["pca_fit_share_largest"]["met"] is False  # strictly below the bar
    assert targets["writes_share_largest"]["measured"] == pytest.approx(0.02)
    assert targets["rss_growth_total_incl_jvm"]["measured"] == pytest.approx(0.2)  # 1200 / 1000 - 1
    assert targets["rss_growth_driver_and_python_workers"]["measured"] == pytest.approx(0.2)
    assert targets["s3_over_local"]["measured"] == pytest.approx(0.8)  # against the 30-image local run
    assert targets["s3_over_local_featurize_stage"]["measured"] == pytest.approx(0.8)
    assert targets["time_to_first_batch_s"]["measured"] == 12.0 and targets["time_to_first_batch_s"]["met"] is False
    assert targets["fruitpipe_over_ray_data"]["measured"] is None  # not measured: no ratio invented
    assert targets["fruits360_total_s"]["measured"] is None


@pytest.mark.slow
def test_harness_at_a_tiny_size_writes_every_key(tmp_path: Path) -> None:
    """Three measurements in their own processes (the S3 run's local reference is the main run)."""
    options = harness.BenchOptions(**{**TINY, "images": 30, "scaling": (30,)}, only=("limit", "fruitpipe", "s3"),
                                   results=tmp_path / "results.json", doc=tmp_path / "performance.md",
                                   data_dir=tmp_path / "data")
    harness.run(options)
    results = json.loads(options.results.read_text(encoding="utf-8"))
    measured = results["measurements"]
    assert set(measured) == {"limit", "fruitpipe", "fruitpipe_s3_30"}
    assert not [key for key, result in measured.items() if "error" in result]
    for key, result in measured.items():
        assert result["images_s"] > 0 and result["wall_s"] > 0, key
        assert result["images_s"] == pytest.approx(result["images"] / result["seconds"], rel=0.02, abs=0.006), key
        assert result["peak_rss_mb"]["driver"] > 20, key  # a Python interpreter at least
    limit = measured["limit"]
    assert limit["precision"] == "fp32" and limit["images_s"] == max(limit["rates_img_s"].values())
    assert limit["best"] in limit["rates_img_s"] and len(limit["rates_img_s"]) >= 3
    run = measured["fruitpipe"]
    assert run["images"] == 30 and run["rejected"] == 0
    assert 0 < run["time_to_first_batch_s"] < run["seconds"]
    assert run["worker_processes"] >= 1 and run["peak_rss_mb"]["workers"] > 0 and run["peak_rss_mb"]["jvm"] > 0
    assert measured["fruitpipe_s3_30"]["images"] == 30 and measured["fruitpipe_s3_30"]["upload_s"] >= 0
    targets = results["targets"]
    assert targets["fruitpipe_over_limit"]["measured"] == pytest.approx(
        run["images_s"] / measured["limit"]["images_s"], rel=0.01, abs=0.001)
    assert targets["s3_over_local"]["measured"] == pytest.approx(
        measured["fruitpipe_s3_30"]["images_s"] / run["images_s"], rel=0.01, abs=0.001)
    assert targets["fruitpipe_over_seed_torch_eager"]["measured"] is None  # not measured: no ratio invented
    assert report.BEGIN in options.doc.read_text(encoding="utf-8")

    again = harness.run(options.__class__(**{**options.__dict__, "resume": True, "only": ("limit",)}))
    assert again["measurements"]["limit"] == measured["limit"]  # finished work is kept, not redone


def test_a_measurement_past_its_timeout_is_killed_and_reported(tmp_path: Path) -> None:
    with pytest.raises(TimeoutError, match="limit took longer than 0 s"):
        harness._child("limit", {"folder": str(tmp_path), "batch_size": 4, "images": 8}, timeout_s=0.3)
    import psutil

    left = [p.pid for p in psutil.process_iter(["cmdline"]) if str(tmp_path) in " ".join(p.info["cmdline"] or [])]
    assert left == []
