#!/usr/bin/env python
"""Write the bundled outlier photos (dev-time tool, run once by hand; not used at run time).

`fruitpipe train` teaches the recogniser what is *not* a fruit from photos of other things (outlier
exposure): by default the public-domain and CC0 photographs of GCompris listed with side "outliers" in
`fruitpipe/benchmark/nonfruit_gcompris.json` (hand tools, renewable-energy installations, fishes), read
out of Debian's `gcompris-qt-data` 3.1-2 and written to `src/fruitpipe/data/outliers/<kind>/<name>.jpg`
(RGB, longest side MAX_SIDE, JPEG quality QUALITY) with a LICENSE.md naming each photo's author and
licence. The other GCompris photos (animals, people, monuments, household objects) and the scikit-image,
scikit-learn and matplotlib photos are the recognition benchmark's non-fruit yardstick, never trained on.

Needs the package: .venv/bin/python -m fruitpipe.benchmark.recognition --fetch (or make recognition-data)
Run:             .venv/bin/python scripts/render_outliers.py [--cache DIR] [--out DIR]
"""
from __future__ import annotations

import argparse
import io
import json
import logging
import shutil
from pathlib import Path

from PIL import Image

from fruitpipe.benchmark.nonfruit import GCOMPRIS_LIST, gcompris_package
from fruitpipe.benchmark.packages import DEFAULT_CACHE
from fruitpipe.benchmark.qtresources import read_resource

logger = logging.getLogger("render_outliers")
MAX_SIDE, QUALITY = 200, 85
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "src" / "fruitpipe" / "data" / "outliers"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    listed = json.loads(GCOMPRIS_LIST.read_text(encoding="utf-8"))
    root = gcompris_package().root(args.cache)
    shutil.rmtree(args.out, ignore_errors=True)
    credits = []
    for photo in (p for p in listed["photos"] if p["side"] == "outliers"):
        kind, stem = Path(photo["resource"]).parent.name, Path(photo["resource"]).stem
        with Image.open(io.BytesIO(read_resource(root / photo["rcc"], photo["resource"]))) as image:
            rgb = image.convert("RGB")
        scale = min(1.0, MAX_SIDE / max(rgb.size))
        rgb = rgb.resize((max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale))), Image.Resampling.LANCZOS)
        target = args.out / kind / f"{stem}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        rgb.save(target, "JPEG", quality=QUALITY)
        credits.append(f"| `{kind}/{stem}.jpg` | {photo['subject']} | {photo['licence']} | {photo['statement']} |")
    header = f"""# Bundled outlier photos: source and licence

Photographs of things that are not fruit, which `fruitpipe train` uses by default to teach the recogniser
to answer "not sure" for them (outlier exposure; docs/recognition.md). {len(credits)} photos, each public
domain or CC0, taken from Debian's `{listed['package']}` {listed['version']} (GCompris, packed in its Qt
resource files; each photo's author and licence come from the upstream README inside the same file),
resized to at most {MAX_SIDE} px and re-encoded as JPEG by `scripts/render_outliers.py`.

| file | subject | licence | statement |
| --- | --- | --- | --- |
"""
    (args.out / "LICENSE.md").write_text(header + "\n".join(credits) + "\n", encoding="utf-8")
    size = sum(p.stat().st_size for p in args.out.rglob("*.jpg"))
    logger.info("%d outlier photos, %.2f MB in %s", len(credits), size / 1e6, args.out)


if __name__ == "__main__":
    main()
