"""Progress while a command runs (fruitpipe.progress, batch.tracking) and Ctrl-C (batch.interrupt, cli.main)."""
from __future__ import annotations

import io
import logging
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from fruitpipe.batch.tracking import images_done
from fruitpipe.progress import CLEAR, Mode, Reporter, Snapshot, clock, render


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_render_counts_rate_and_eta() -> None:
    # 120 of 1,170 in 4 s: 30 img/s, 1,050 left -> 35 s
    line = render(Snapshot("featurize", elapsed=4.0, done=120, total=1170))
    assert line == "featurize  120 / 1,170 img  30.0 img/s  ETA 0:35"
    assert render(Snapshot("pca_fit", elapsed=75.4)) == "pca_fit  1:15"
    done = render(Snapshot("featurize", elapsed=12.0, done=1170, total=1170))
    assert done == "featurize  1,170 / 1,170 img  97.5 img/s  0:12"  # no ETA once everything is done


def test_upload_line_shows_megabytes_per_second_and_eta_by_bytes() -> None:
    snap = Snapshot("upload", elapsed=2.0, done=3, total=10, unit="files", bytes_done=5_000_000,
                    total_bytes=20_000_000)
    assert render(snap) == "upload  3 / 10 files  2.5 MB/s  ETA 0:06"  # 15 MB left at 2.5 MB/s


def test_clock() -> None:
    assert [clock(s) for s in (0, 7.4, 750, 3723)] == ["0:00", "0:07", "12:30", "1:02:03"]


def test_live_mode_rewrites_one_line_and_clears_it() -> None:
    stream, now = io.StringIO(), FakeClock()
    reporter = Reporter(stream, Mode.LIVE, now=now)
    with reporter.stage("featurize", total=100):
        now.now += 2.0
        reporter.update(40)
        now.now += 0.05  # within the redraw interval: not drawn
        reporter.update(41)
    frames = stream.getvalue().split(CLEAR)
    assert frames == ["", "featurize  0 / 100 img  0:00", "featurize  40 / 100 img  20.0 img/s  ETA 0:03", ""]
    assert "\n" not in stream.getvalue()


def test_log_mode_logs_a_start_about_every_tenth_and_the_end(caplog: pytest.LogCaptureFixture) -> None:
    stream, now = io.StringIO(), FakeClock()
    reporter = Reporter(stream, Mode.LOG, now=now)
    with caplog.at_level(logging.INFO, logger="fruitpipe.progress"):
        with reporter.stage("featurize", total=1000):
            for done in range(0, 1001, 25):
                now.now += 0.1
                reporter.update(done)
        with reporter.stage("pca_fit"):
            now.now += 3.0
    messages = [record.getMessage() for record in caplog.records]
    assert messages[0] == "featurize: started (1,000 img)"
    steps = [m for m in messages if m.endswith("%)")]
    assert [m.rsplit("(", 1)[1] for m in steps] == [f"{p}%)" for p in range(10, 100, 10)]
    assert messages[-2].startswith("featurize  1,000 / 1,000 img") and messages[-2].endswith("(done)")
    assert messages[-1] == "pca_fit  0:03 (done)"
    assert stream.getvalue() == ""  # log records only, nothing written around logging


def test_a_stage_without_steps_logs_only_its_end(caplog: pytest.LogCaptureFixture) -> None:
    now = FakeClock()
    reporter = Reporter(io.StringIO(), Mode.LOG, now=now)
    with (caplog.at_level(logging.INFO, logger="fruitpipe.progress"),
          reporter.stage("upload", total=4, unit="files", total_bytes=4_000_000, steps=False)):
        for done in range(1, 5):
            now.now += 1.0
            reporter.update(done, done * 1_000_000)
    assert [r.getMessage() for r in caplog.records] == ["upload  4 / 4 files  1.0 MB/s  0:04 (done)"]


def test_quiet_and_silent_write_nothing(caplog: pytest.LogCaptureFixture) -> None:
    stream = io.StringIO()
    for reporter in (Reporter.for_stream(stream, quiet=True), Reporter.silent()):
        with caplog.at_level(logging.INFO), reporter.stage("featurize", total=10):
            reporter.update(5)
    assert stream.getvalue() == "" and caplog.records == []


def test_a_stage_ended_by_an_error_logs_nothing_more(caplog: pytest.LogCaptureFixture) -> None:
    """The command's one error line says what stopped it: a failed stage adds no line of its own."""
    reporter = Reporter(io.StringIO(), Mode.LOG, now=FakeClock())
    with caplog.at_level(logging.INFO), pytest.raises(ValueError), reporter.stage("list"):
        raise ValueError("input not found")
    assert caplog.records == []
    with caplog.at_level(logging.INFO), reporter.stage("list"):
        pass
    assert caplog.records[-1].getMessage().endswith("(done)")


def test_images_from_the_widest_new_stage() -> None:
    # stage 3 ran before featurize started; 7 (4 tasks, 3 done) is featurize's, 8 its 1-task aggregation
    stages = {3: (50, 50), 7: (4, 3), 8: (1, 0)}
    assert images_done(stages, before={3}, images=990) == 990 * 3 // 4
    assert images_done({}, before=set(), images=990) == 0


# ---------------------------------------------------------------- the CLI, as users run it

def _command(output: Path, source: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "fruitpipe.cli", "run", "--input", str(source), "--output", str(output),
            "--master", "local[2]", *extra]


def _env() -> dict[str, str]:
    return {**os.environ, "PYSPARK_PYTHON": sys.executable}


def _read_pty(fd: int, process: subprocess.Popen[bytes], timeout: float = 600) -> bytes:
    data, deadline = b"", time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # EIO: the child's side closed
                break
            if not chunk:
                break
            data += chunk
        elif process.poll() is not None:
            break
    return data


def test_run_on_a_terminal_shows_a_live_line(small_sample: Path, tmp_path: Path) -> None:
    primary, secondary = os.openpty()
    process = subprocess.Popen(_command(tmp_path / "out", small_sample), stdout=subprocess.PIPE,
                               stderr=secondary, env=_env())
    os.close(secondary)
    try:
        err = _read_pty(primary, process).decode(errors="replace")
    finally:
        os.close(primary)
    out = process.stdout.read().decode() if process.stdout else ""
    assert process.wait(timeout=60) == 0, err[-3000:]
    images = sum(1 for _ in small_sample.rglob("*.jpg"))
    live = [frame for frame in err.split("\r") if frame.startswith("\x1b[Kfeaturize")]
    assert live, err[-3000:]
    assert any("img/s" in frame and f"/ {images} img" in frame for frame in live), live
    assert err.rstrip("\r\n").endswith("\x1b[K") or "\r\x1b[K" in err  # the line is cleared
    assert out.startswith("fruitpipe run ") and "\r" not in out and "\x1b" not in out  # stdout unchanged


@pytest.fixture(scope="module")
def quiet_run(small_sample: Path, tmp_path_factory: pytest.TempPathFactory) -> subprocess.CompletedProcess:
    """The run with stderr on a pipe (as in CI) and --quiet."""
    return subprocess.run(_command(tmp_path_factory.mktemp("piped") / "quiet", small_sample, "--quiet"),
                          capture_output=True, text=True, env=_env(), timeout=600, check=False)


def test_run_in_ci_logs_stage_lines(bundled_run, sample_dir: Path) -> None:
    """stderr on a pipe (as in CI), no --quiet: the session's `fruitpipe run` of the whole bundled sample
    (conftest.py), which other modules read too, rather than a run of its own."""
    result = bundled_run[1]
    assert result.returncode == 0, result.stderr[-3000:]
    images = sum(1 for _ in sample_dir.rglob("*.jpg"))
    assert "\r" not in result.stderr
    assert f"fruitpipe.progress: featurize: started ({images} img)" in result.stderr
    assert f"fruitpipe.progress: featurize  {images} / {images} img" in result.stderr
    for stage in ("list", "spark_start", "pca_fit", "write"):
        assert f"fruitpipe.progress: {stage}  " in result.stderr, stage


def test_quiet_run_shows_no_progress(quiet_run: subprocess.CompletedProcess) -> None:
    result = quiet_run
    assert result.returncode == 0, result.stderr[-3000:]
    assert "\r" not in result.stderr and "fruitpipe.progress" not in result.stderr
    assert result.stdout.startswith("fruitpipe run ")


@pytest.mark.parametrize(("signum", "to_group", "code"), [(signal.SIGINT, True, 130), (signal.SIGTERM, False, 143)],
                         ids=["ctrl-c", "sigterm"])
def test_ctrl_c_stops_a_run_with_one_line_and_nothing_published(sample_dir: Path, tmp_path: Path, signum: int,
                                                                to_group: bool, code: int) -> None:
    """Once featurize started: SIGINT to the command's process group (what a terminal's Ctrl-C does), or
    SIGTERM to the driver alone (what `kill`, a scheduler or Kubernetes does)."""
    output = tmp_path / "out"
    process = subprocess.Popen(_command(output, sample_dir), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env=_env(), start_new_session=True)
    assert process.stderr is not None
    lines: list[str] = []
    for raw in process.stderr:
        lines.append(raw.decode(errors="replace"))
        if "featurize: started" in lines[-1]:
            break
    else:
        pytest.fail("featurize never started: " + "".join(lines)[-3000:])
    time.sleep(2)  # tasks running, the JVM and Python workers up
    children = psutil.Process(process.pid).children(recursive=True)
    assert children, "expected a JVM and Python workers"
    if to_group:
        os.killpg(process.pid, signum)
    else:
        os.kill(process.pid, signum)
    rest = process.stderr.read().decode(errors="replace")
    assert process.wait(timeout=120) == code, rest[-3000:]
    after = rest.splitlines()
    assert [line for line in after if "interrupt" in line.lower()] == [
        f"fruitpipe run: interrupted: nothing new was published to {output} (no partial output; the images "
        "featurized so far are kept in its journal); run the same command with --resume to continue"], rest[-3000:]
    assert "Traceback" not in rest and "Exception" not in rest, rest[-3000:]
    # nothing published, the journal kept (fruitpipe run --resume continues from it: tests/test_resume.py)
    assert not (output / "_SUCCESS").exists()
    assert sorted(path.name for path in output.iterdir()) == ["_fruitpipe"]
    _, alive = psutil.wait_procs(children, timeout=30)
    assert alive == [], [p.cmdline()[:3] for p in alive]
