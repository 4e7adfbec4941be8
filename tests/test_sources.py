"""Store.list_files and sources: layouts, names, filtering, errors, partitioning, DataFrame."""
from __future__ import annotations

import math
import unicodedata
from pathlib import Path

import pytest

from fruitpipe.batch import sources
from fruitpipe.config import IMAGE_EXTENSIONS
from fruitpipe.storage import Store

JPEG = b"\xff\xd8\xff\xe0 not decoded by listing"


def touch(root: Path, *relatives: str) -> None:
    for relative in relatives:
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(JPEG)


def relatives(listing: sources.ImageListing) -> list[str]:
    return [str(Path(path).relative_to(listing.root)) for path, _, _ in listing.rows]


def test_fruits360_layout_gives_split_and_label(tmp_path: Path) -> None:
    touch(tmp_path, "Training/Apple Red/1.jpg", "Training/Banana/2.jpg", "Test/Apple Red/3.jpg",
          "validation/Banana/4.jpg")
    listing = sources.list_images(Store(), str(tmp_path))
    assert listing.layout == "fruits360"
    assert [(Path(p).name, label, split) for p, label, split in listing.rows] == [
        ("3.jpg", "Apple Red", "Test"),
        ("1.jpg", "Apple Red", "Training"),
        ("2.jpg", "Banana", "Training"),
        ("4.jpg", "Banana", "validation"),
    ]
    assert listing.labels == ["Apple Red", "Banana"]
    assert all(Path(p).is_file() for p, _, _ in listing.rows)


def test_flat_layout_gives_label_and_no_split(tmp_path: Path) -> None:
    touch(tmp_path, "Kiwi/a.jpg", "Lemon/b.jpg", "loose.jpg")
    listing = sources.list_images(Store(), str(tmp_path))
    assert listing.layout == "flat"
    assert [(Path(p).name, label, split) for p, label, split in listing.rows] == [
        ("a.jpg", "Kiwi", None), ("b.jpg", "Lemon", None), ("loose.jpg", None, None)]


def test_split_folder_alone_is_flat(tmp_path: Path) -> None:
    """Pointing at Training/ itself: its class folders are labels, there is no split."""
    touch(tmp_path, "Training/Kiwi/a.jpg", "Training/Lemon/b.jpg")
    listing = sources.list_images(Store(), str(tmp_path / "Training"))
    assert listing.layout == "flat"
    assert [label for _, label, _ in listing.rows] == ["Kiwi", "Lemon"]


def test_mixed_layout_falls_back_to_flat(tmp_path: Path) -> None:
    touch(tmp_path, "Training/Kiwi/a.jpg", "Extra/b.jpg")
    listing = sources.list_images(Store(), str(tmp_path))
    assert listing.layout == "flat"
    assert [split for _, _, split in listing.rows] == [None, None]


def test_class_names_with_spaces_and_non_ascii(tmp_path: Path) -> None:
    names = ["Apple Red", "Pitahaya Rosé", "Jalapeño", "Čili 辣椒"]
    for name in names:
        touch(tmp_path, f"Training/{name}/1.jpg")
    listing = sources.list_images(Store(), str(tmp_path))
    assert listing.labels == sorted(names)
    assert {Path(p).parent.name for p, _, _ in listing.rows} == set(names)


def test_decomposed_unicode_names_become_nfc_labels(tmp_path: Path) -> None:
    """A folder written in NFD (as macOS does) must give the same label as its NFC spelling."""
    nfd = unicodedata.normalize("NFD", "Pitahaya Rosé")
    assert nfd != "Pitahaya Rosé"
    touch(tmp_path, f"{nfd}/1.jpg")
    listing = sources.list_images(Store(), str(tmp_path))
    assert listing.labels == ["Pitahaya Rosé"]
    assert Path(listing.rows[0][0]).is_file()  # the path itself still points at the real file


def test_extensions_case_insensitive_and_others_ignored(tmp_path: Path) -> None:
    kept = ["A/a.JPG", "A/b.jpeg", "A/c.png", "A/d.PNG", "A/e.Jpeg", "A/f.jpg"]
    ignored = ["A/g.gif", "A/h.txt", "A/i.jpg.bak", "A/jpg", "A/k.webp", "A/README", "A/l.tiff"]
    touch(tmp_path, *kept, *ignored)
    assert relatives(sources.list_images(Store(), str(tmp_path))) == kept
    found = Store().list_files(str(tmp_path), IMAGE_EXTENSIONS)
    assert [relative for _, relative in found] == kept


def test_hidden_files_and_folders_ignored(tmp_path: Path) -> None:
    touch(tmp_path, "A/ok.jpg", "A/.hidden.jpg", "A/._ok.jpg", ".thumbs/t.jpg", "A/.cache/x.jpg", ".DS_Store.png")
    assert relatives(sources.list_images(Store(), str(tmp_path))) == ["A/ok.jpg"]


def test_listing_is_sorted_by_relative_path(tmp_path: Path) -> None:
    files = ["b/2.jpg", "a/10.jpg", "B/1.jpg", "a/2.jpg", "a b/1.jpg", "é/1.jpg", "a/1.png"]
    touch(tmp_path, *files)
    assert relatives(sources.list_images(Store(), str(tmp_path))) == sorted(files)


def test_full_paths_are_absolute_even_for_relative_input(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    touch(tmp_path, "in/A/a.jpg")
    monkeypatch.chdir(tmp_path)
    found = Store().list_files("in/", IMAGE_EXTENSIONS)
    assert found == [(str(tmp_path / "in/A/a.jpg"), "A/a.jpg")]


def test_missing_folder_is_value_error_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(ValueError, match="not found") as caught:
        sources.list_images(Store(), str(missing))
    assert str(missing) in str(caught.value)


def test_file_instead_of_folder_is_value_error(tmp_path: Path) -> None:
    touch(tmp_path, "a.jpg")
    with pytest.raises(ValueError, match="not a folder") as caught:
        sources.list_images(Store(), str(tmp_path / "a.jpg"))
    assert str(tmp_path / "a.jpg") in str(caught.value)


@pytest.mark.parametrize("contents", [[], ["A/notes.txt", "A/.hidden.jpg"]])
def test_folder_without_images_is_value_error_naming_it(tmp_path: Path, contents: list[str]) -> None:
    (tmp_path / "in").mkdir()
    touch(tmp_path / "in", *contents)
    with pytest.raises(ValueError, match="no images") as caught:
        sources.list_images(Store(), str(tmp_path / "in"))
    assert str(tmp_path / "in") in str(caught.value)


@pytest.mark.parametrize("images, cores, expected", [
    (3, 2, 3), (10, 2, 4), (100, 2, 4), (1000, 2, 4), (1025, 2, 5), (10_000, 2, 40),
    (100, 8, 16), (10_000, 8, 40), (10, 1, 2), (100_000, 4, 391),
])
def test_partition_count_values(images: int, cores: int, expected: int) -> None:
    assert sources.partition_count(images, cores) == expected


@pytest.mark.parametrize("images", [50, 500, 5_000, 50_000])
@pytest.mark.parametrize("cores", [1, 2, 8])
def test_partition_count_neither_one_per_file_nor_one_for_all(images: int, cores: int) -> None:
    count = sources.partition_count(images, cores)
    assert 1 < count < images
    assert count >= min(images, 2 * cores)  # every core gets work, twice over for balance
    assert math.ceil(images / count) <= 256  # partitions stay small enough to pipeline


def test_to_dataframe_rows_and_partitions(spark, tmp_path: Path) -> None:
    touch(tmp_path, *(f"Training/C{i % 3}/{i:02d}.jpg" for i in range(11)), "Test/C0/t.jpg")
    listing = sources.list_images(Store(), str(tmp_path))
    df = sources.to_dataframe(spark, listing)
    assert df.columns == ["path", "label", "split"]
    assert [tuple(row) for row in df.collect()] == listing.rows
    expected = sources.partition_count(12, spark.sparkContext.defaultParallelism)
    assert df.rdd.getNumPartitions() == expected == 4  # local[2]: 2 tasks per core
    slices = [[tuple(row) for row in part] for part in df.rdd.glom().collect()]
    assert [row for part in slices for row in part] == listing.rows  # contiguous slices, in order
    assert all(part for part in slices)
