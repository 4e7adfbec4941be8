"""atheris (libFuzzer) harness over decode + preprocessing: `python tests/fuzz_decode.py [libFuzzer flags] DIR`
(pass -rss_limit_mb=0: the harness bounds its own memory, see bound_memory).

DIR is the working corpus; it is seeded with tests/fuzzing.seed_corpus() when empty. A crash writes
`crash-<sha1>` (libFuzzer); copy it into tests/data/fuzz/ so tests/test_fuzz.py replays it from then on.
tests/test_fuzz.py runs this for a bounded time (FRUITPIPE_FUZZ_SECONDS, default 60) in `make test`."""
from __future__ import annotations

import resource
import sys
import warnings
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).parent))

with atheris.instrument_imports(include=["PIL", "fruitpipe.image"]):
    from fuzzing import check_one, seed_corpus


HEADROOM_MB = 768  # address space one process may add while fuzzing: decode must refuse big images before allocating


def bound_memory() -> None:
    """Cap this process's address space at what it uses now plus HEADROOM_MB, so an input that makes decode
    allocate too much fails right there (MemoryError: libFuzzer saves that very input as a crash).
    libFuzzer's -rss_limit_mb cannot do it: Linux carries the parent's peak RSS across fork + exec into
    ru_maxrss, so a fuzzer started by a large pytest process would be "out of memory" from its first input."""
    with open("/proc/self/statm", encoding="ascii") as statm:
        used = int(statm.read().split()[0]) * resource.getpagesize()
    limit = used + HEADROOM_MB * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def main() -> None:
    corpus = next((Path(arg) for arg in sys.argv[1:] if not arg.startswith("-")), None)
    if corpus is not None and not any(corpus.iterdir()):
        for name, content in seed_corpus().items():
            (corpus / name.replace("/", "_")).write_bytes(content)
    warnings.simplefilter("ignore")  # Pillow warns on every corrupt EXIF block; decode's own bomb guard still errors
    atheris.Setup(sys.argv, check_one)
    bound_memory()
    atheris.Fuzz()


if __name__ == "__main__":
    main()
