"""Decode + preprocessing under fuzzing: the seed corpus (the tests' bad and odd inputs and every
regression a fuzz run found) replayed as plain tests, and a bounded atheris run (libFuzzer, coverage
guided) over the same property with its address space capped (fuzz_decode.bound_memory), in `make test`."""
from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fuzzing import check_one, seed_corpus

HARNESS = Path(__file__).parent / "fuzz_decode.py"
SECONDS = int(os.environ.get("FRUITPIPE_FUZZ_SECONDS", "60"))


@pytest.mark.parametrize("name", sorted(seed_corpus()))
def test_corpus_input_keeps_the_decode_contract(name: str) -> None:
    check_one(seed_corpus()[name])


def test_seed_corpus_covers_refusals_and_acceptances() -> None:
    """The property can fail both ways: some seeds decode, some are refused (a DecodeError reason)."""
    from fruitpipe.image.decode import DecodeError, decode_for_model
    from fuzzing import LIMITS, SIZE

    outcomes = set()
    for content in seed_corpus().values():
        try:
            decode_for_model(content, LIMITS, SIZE, "bilinear")
            outcomes.add("decoded")
        except DecodeError:
            outcomes.add("refused")
    assert outcomes == {"decoded", "refused"}


def test_bounded_fuzz_run_finds_no_crash(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    result = subprocess.run(
        [sys.executable, str(HARNESS), f"-max_total_time={SECONDS}", "-rss_limit_mb=0", "-timeout=30",
         "-print_final_stats=1", str(corpus)],
        cwd=tmp_path, capture_output=True, text=True, timeout=SECONDS + 240)
    crashes = {path.name: base64.b64encode(path.read_bytes()[:4096]).decode()
               for path in tmp_path.glob("*") if path.name.startswith(("crash-", "oom-", "timeout-"))}
    assert result.returncode == 0 and not crashes, (
        f"the fuzzer broke decode (copy the input into tests/data/fuzz/): {crashes}\n{result.stderr[-4000:]}")
    assert "Done" in result.stderr and len(list(corpus.iterdir())) >= len(seed_corpus()), result.stderr[-2000:]


def test_the_fuzzer_caps_its_memory() -> None:
    """bound_memory turns an oversized allocation into a MemoryError (a crash libFuzzer saves with its
    input), in a child started by this (possibly large) pytest process."""
    probe = ("import sys, numpy; sys.argv = ['x']; sys.path.insert(0, sys.argv[0] or '.');"
             f"sys.path.insert(0, {str(HARNESS.parent)!r}); import fuzz_decode; fuzz_decode.bound_memory();"
             "numpy.ones(64 << 20, dtype=numpy.uint8)\n"
             "try:\n    numpy.ones(fuzz_decode.HEADROOM_MB << 21, dtype=numpy.uint8)\n"
             "except MemoryError:\n    print('refused')")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "refused", result.stderr[-2000:]
