"""atheris (libFuzzer) harness over decode + preprocessing: `python tests/fuzz_decode.py [libFuzzer flags] DIR`.

DIR is the working corpus; it is seeded with tests/fuzzing.seed_corpus() when empty. A crash writes
`crash-<sha1>` (libFuzzer); copy it into tests/data/fuzz/ so tests/test_fuzz.py replays it from then on.
tests/test_fuzz.py runs this for a bounded time (FRUITPIPE_FUZZ_SECONDS, default 60) in `make test`."""
from __future__ import annotations

import sys
import warnings
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).parent))

with atheris.instrument_imports(include=["PIL", "fruitpipe.image"]):
    from fuzzing import check_one, seed_corpus


def main() -> None:
    corpus = next((Path(arg) for arg in sys.argv[1:] if not arg.startswith("-")), None)
    if corpus is not None and not any(corpus.iterdir()):
        for name, content in seed_corpus().items():
            (corpus / name.replace("/", "_")).write_bytes(content)
    warnings.simplefilter("ignore")  # Pillow warns on every corrupt EXIF block; decode's own bomb guard still errors
    atheris.Setup(sys.argv, check_one)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
