"""Photos that are not fruit, for reporting how often the recogniser answers "unknown" on them.

A recogniser trained only on fruit still returns a fruit for a cat or a cup; the rate at which it says
"not sure" instead is measured on this set. It is a yardstick only: never used to train, choose a recipe,
calibrate or pick a threshold (a set used for a choice stops measuring that choice).

The photos come from registry packages (no download at run time): the sample images shipped inside the
scikit-image wheel, scikit-learn's `load_sample_images` files and matplotlib's sample data (17, always),
and, when the yardstick cache holds Debian's `gcompris-qt-data` 3.1-2 (`make recognition-data`), the 121
public-domain and CC0 photographs packed in GCompris' Qt resource files that `nonfruit_gcompris.json` puts
on the report side (animals, musicians, monuments, household objects, landscapes; each listed with its
subject and the upstream licence statement; fruit, vegetables and flowers left out by eye). The 94 on the
other side (tools, renewable-energy installations, fishes) are the bundled training outliers
(`data/outliers`, `fruitpipe train --outliers`): a kind of thing is either trained on or reported, never
both. Only images whose licence the package states (or, for the one matplotlib photo, whose public-domain
status is a matter of record) are used; each is listed with its package, version and licence in
`LICENSES.json` written beside the photos. Files are re-encoded as JPEG (RGB, longest side at most
MAX_SIDE), byte for byte the same on every call with the same package versions.
"""
from __future__ import annotations

import importlib.metadata
import io
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

from PIL import Image

from fruitpipe.benchmark.packages import DEBIAN, Package
from fruitpipe.benchmark.qtresources import read_resource

logger = logging.getLogger(__name__)

MAX_SIDE = 800
JPEG_QUALITY = 92
LICENSES_FILE = "LICENSES.json"
SKIMAGE_NOTE = "the image's docstring in skimage.data"
SKLEARN_NOTE = "sklearn/datasets/images/README.txt"


@dataclass(frozen=True)
class NonFruitSource:
    """One photo inside an installed distribution, and what its package says about its licence."""

    name: str  # the JPEG's stem
    package: str  # the distribution that ships it
    file: str  # its path inside the distribution (site-packages relative)
    subject: str
    licence: str  # the image's own licence, as stated where `statement` says
    statement: str


def _skimage(name: str, file: str, subject: str, licence: str) -> NonFruitSource:
    return NonFruitSource(f"skimage-{name}", "scikit-image", f"skimage/data/{file}", subject, licence, SKIMAGE_NOTE)


PUBLIC_DOMAIN = "public domain (no known copyright restrictions)"
SOURCES = (
    _skimage("astronaut", "astronaut.png", "astronaut Eileen Collins, portrait (NASA)", PUBLIC_DOMAIN),
    _skimage("camera", "camera.png", "man with a camera on a tripod, outdoors",
             "CC0 by the photographer (Lav Varshney)"),
    _skimage("coffee", "coffee.png", "cup of coffee on a saucer", "CC0 by the photographer (Rachel Michetti)"),
    _skimage("chelsea", "chelsea.png", "cat (Chelsea)", "CC0 by the photographer (Stefan van der Walt)"),
    _skimage("rocket", "rocket.jpg", "SpaceX rocket on its launch pad", "public domain (released by SpaceX)"),
    _skimage("brick", "brick.png", "brick wall", "CC0 (CC0Textures Bricks25)"),
    _skimage("grass", "grass.png", "grass", "CC0 (DeviantArt, linolafett)"),
    _skimage("gravel", "gravel.png", "gravel", "CC0 (CC0Textures Gravel04)"),
    _skimage("hubble", "hubble_deep_field.jpg", "Hubble deep field: galaxies", "public domain (NASA)"),
    _skimage("text", "text.png", "printed text photographed at an angle", "public domain (Wikipedia, Corner.png)"),
    _skimage("retina", "retina.jpg", "fundus photograph of a human eye",
             "CC0 1.0 (Mikael Haggstrom, Wikimedia Commons)"),
    _skimage("coins", "coins.png", "ancient Greek coins (Brooklyn Museum)", "no known copyright restrictions"),
    _skimage("clock", "clock_motion.png", "motion-blurred wall clock",
             "public domain (released by the photographer, Stefan van der Walt)"),
    _skimage("tissue", "ihc.png", "stained tissue under a microscope (immunohistochemistry)",
             "no known copyright restrictions"),
    NonFruitSource("sklearn-china", "scikit-learn", "sklearn/datasets/images/china.jpg",
                   "Chinese pagoda above a lake", "CC BY 2.0, attribution: danielbuechele (Flickr)", SKLEARN_NOTE),
    NonFruitSource("sklearn-flower", "scikit-learn", "sklearn/datasets/images/flower.jpg",
                   "orange dahlia flower", "CC BY 2.0, attribution: vultilion (Flickr)", SKLEARN_NOTE),
    NonFruitSource("matplotlib-grace-hopper", "matplotlib", "matplotlib/mpl-data/sample_data/grace_hopper.jpg",
                   "portrait of Rear Admiral Grace Hopper in uniform",
                   "public domain (official U.S. Navy photograph, a work of the U.S. federal government)",
                   "not stated by matplotlib; the photograph's public-domain status as a U.S. Navy work"),
)


GCOMPRIS_LIST = Path(__file__).with_name("nonfruit_gcompris.json")
REPORT_SIDE, OUTLIER_SIDE = "report", "outliers"  # a GCompris photo is a yardstick or a bundled training outlier


def gcompris_package() -> Package:
    listed = json.loads(GCOMPRIS_LIST.read_text(encoding="utf-8"))
    return Package(DEBIAN, listed["package"], listed["version"])


def non_fruit_photos(folder: str | Path, cache: Path | None = None) -> list[Path]:
    """Write the non-fruit photos as JPEGs into `folder` (created) with LICENSES.json; return their paths,
    in SOURCES order, then (with `cache`) the GCompris photos in their listed order. A missing Python package
    is a ValueError naming it (scikit-image and scikit-learn come with fruitpipe's `test` extra); a cache
    without the GCompris package is a `PackageMissingError` naming the command that fetches it."""
    target = Path(folder)
    target.mkdir(parents=True, exist_ok=True)
    records, written = [], []
    for source in SOURCES:
        original, version = _locate(source)
        path = target / f"{source.name}.jpg"
        with Image.open(original) as image:
            _write_jpeg(image, path)
        written.append(path)
        records.append({**asdict(source), "photo": path.name, "version": version,
                        "package_licence": _package_licence(source.package)})
    if cache is not None:
        for record in _gcompris_photos(target, cache):
            written.append(target / record["photo"])
            records.append(record)
    (target / LICENSES_FILE).write_text(json.dumps(records, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    logger.info("wrote %d non-fruit photos to %s", len(written), target)
    return written


def _locate(source: NonFruitSource) -> tuple[Path, str]:
    """The file inside its installed distribution (found from the distribution's metadata, not imported)."""
    try:
        dist = importlib.metadata.distribution(source.package)
    except importlib.metadata.PackageNotFoundError:
        raise ValueError(f"the non-fruit photo set needs {source.package} installed "
                         f"(pip install 'fruitpipe[test]')") from None
    path = Path(str(dist.locate_file(source.file)))
    if not path.is_file():
        raise ValueError(f"{source.package} {dist.version} does not ship {source.file}")
    return path, dist.version


def _package_licence(package: str) -> str:
    expressions = importlib.metadata.distribution(package).metadata.get_all("License-Expression") or []
    if expressions:
        return str(expressions[0])
    return {"scikit-image": "BSD-3-Clause", "matplotlib": "Matplotlib License (PSF-based)"}.get(package, "unknown")


def _gcompris_photos(target: Path, cache: Path) -> list[dict[str, str]]:
    """The listed GCompris photos, read out of their .rcc files into `target`; one LICENSES.json record each."""
    package = gcompris_package()
    root = package.root(cache)
    records = []
    for photo in json.loads(GCOMPRIS_LIST.read_text(encoding="utf-8"))["photos"]:
        if photo["side"] != REPORT_SIDE:
            continue
        name = f"gcompris-{Path(photo['rcc']).stem}-{Path(photo['resource']).stem}"
        with Image.open(io.BytesIO(read_resource(root / photo["rcc"], photo["resource"]))) as image:
            _write_jpeg(image, target / f"{name}.jpg")
        records.append({"name": name, "package": package.name, "file": f"/{photo['rcc']}:{photo['resource']}",
                        "subject": photo["subject"], "licence": photo["licence"], "statement": photo["statement"],
                        "photo": f"{name}.jpg", "version": package.version,
                        "package_licence": "per photo (the upstream README in its .rcc; see licence)"})
    return records


def _write_jpeg(image: Image.Image, target: Path) -> None:
    """RGB (grey and palette images expanded), longest side at most MAX_SIDE, a fixed JPEG quality."""
    rgb = image.convert("RGB")
    if max(rgb.size) > MAX_SIDE:
        scale = MAX_SIDE / max(rgb.size)
        rgb = rgb.resize((round(rgb.width * scale), round(rgb.height * scale)), Image.Resampling.LANCZOS)
    rgb.save(target, "JPEG", quality=JPEG_QUALITY)
