"""Listing s3:// inputs on a real S3-protocol server (moto, 127.0.0.1): more than one page of keys,
odd key names, hidden and non-image keys, a sibling prefix that shares the listed prefix's name."""
from __future__ import annotations

import unicodedata
from concurrent.futures import ThreadPoolExecutor

import pytest

from fruitpipe.batch import sources
from fruitpipe.config import IMAGE_EXTENSIONS, S3Options
from fruitpipe.storage import Store

BUCKET = "listing-odd-names"
PREFIX = "data sets/fruits=360+é ñ"  # odd characters in the listed prefix itself
SIBLING = PREFIX + "2"  # shares the prefix string: must never be listed
NFD_CLASS = unicodedata.normalize("NFD", "Pepper Jalapeño")  # as macOS writes names; labels come back NFC
CLASSES = ["Apple Red", "Crème=Brûlée+1", "Piña Colada", "a b=c+d", NFD_CLASS]
SPLITS = ["Training", "Test"]
PER_CLASS_AND_SPLIT = 110  # 5 classes x 2 splits x 110 = 1,100 images: two listing pages
EXTENSIONS = [".jpg", ".JPG", ".jpeg", ".png", ".PNG", ".Jpeg"]
TOTAL_KEYS = 1234


def image_keys() -> list[str]:
    """Keys that must be listed, built from the layout (not from the library's filter)."""
    keys = []
    for split in SPLITS:
        for label in CLASSES:
            for i in range(PER_CLASS_AND_SPLIT):
                ext = EXTENSIONS[i % len(EXTENSIONS)]
                name = [f"{i}_100{ext}", f"r {i} = x+y{ext}", f"é_ñ_{i}{ext}", f"{i}%20&;,@$!'(){ext}"][i % 4]
                keys.append(f"{PREFIX}/{split}/{label}/{name}")
    return keys


def ignored_keys(count: int) -> list[str]:
    """Keys that must not be listed: hidden files and folders, non-images, folder markers, siblings."""
    fixed = [
        f"{PREFIX}/.DS_Store",
        f"{PREFIX}/Training/Apple Red/.DS_Store",
        f"{PREFIX}/Training/Apple Red/._0_100.jpg",  # AppleDouble: hidden, despite the .jpg
        f"{PREFIX}/Training/.thumbnails/0_100.jpg",  # hidden folder
        f"{PREFIX}/.cache/Training/Apple Red/0_100.jpg",
        f"{PREFIX}/Training/Apple Red/",  # folder marker
        f"{PREFIX}/Training/",
        f"{PREFIX}/README.md",
        f"{PREFIX}/labels.csv",
        f"{PREFIX}/Training/Apple Red/0_100.jpg.txt",
        f"{PREFIX}/Training/Apple Red/jpg",
        f"{PREFIX}/Training/Apple Red/0_100.gif",
        f"{PREFIX}/Training/Apple Red/0_100.jpgx",
        f"{PREFIX}.jpg",  # a file next to the folder, same stem
        f"{PREFIX}",  # an object named exactly like the prefix
        f"{SIBLING}/Training/Apple Red/0_100.jpg",
        f"{SIBLING}.png",
        "other/Training/Apple Red/0_100.jpg",
        "junk only/.DS_Store",  # a folder with no visible image at all
        "junk only/Training/Apple Red/notes.txt",
        "junk only/Training/.hidden/0_100.jpg",
    ]
    extra = [f"{SIBLING}/Test/{CLASSES[i % len(CLASSES)]}/{i}_100.jpg" for i in range(count - len(fixed) - 20)]
    extra += [f"{PREFIX}/Test/Apple Red/.hidden {i}.png" for i in range(10)]
    extra += [f"{PREFIX}/Test/Apple Red/notes {i}.txt" for i in range(10)]
    return fixed + extra


def body(key: str) -> bytes:
    return b"\xff\xd8\xff" + key.encode("utf-8") + b"\x00" + len(key).to_bytes(4, "big")


@pytest.fixture(scope="module")
def store(s3_endpoint: str) -> Store:
    return Store(S3Options(endpoint_url=s3_endpoint))


@pytest.fixture(scope="module")
def bucket(s3_endpoint: str) -> dict[str, str]:
    """1,234 tiny objects put in parallel; returns {key: expected relative path} of the images."""
    import boto3
    from botocore.config import Config

    images = image_keys()
    keys = images + ignored_keys(TOTAL_KEYS - len(images))
    assert len(keys) == len(set(keys)) == TOTAL_KEYS
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1",
                      config=Config(max_pool_connections=32))
    s3.create_bucket(Bucket=BUCKET)
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(lambda key: s3.put_object(Bucket=BUCKET, Key=key, Body=body(key)), keys))
    stored = sum(page.get("KeyCount", 0) for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET))
    assert stored == TOTAL_KEYS
    return {key: unicodedata.normalize("NFC", key[len(PREFIX) + 1:]) for key in images}


def expected_listing(expected: dict[str, str]) -> list[tuple[str, str]]:
    return sorted(((f"s3://{BUCKET}/{key}", relative) for key, relative in expected.items()), key=lambda p: p[1])


@pytest.mark.parametrize("suffix", ["", "/"])
def test_lists_exactly_the_images_across_pages(bucket: dict[str, str], store: Store, suffix: str) -> None:
    listed = store.list_files(f"s3://{BUCKET}/{PREFIX}{suffix}", IMAGE_EXTENSIONS)
    assert len(listed) == len(bucket) > 1000  # more than one list_objects_v2 page
    assert len({full for full, _ in listed}) == len(listed)
    extra = {full for full, _ in listed} - {full for full, _ in expected_listing(bucket)}
    missing = {full for full, _ in expected_listing(bucket)} - {full for full, _ in listed}
    assert not extra and not missing, (sorted(extra)[:5], sorted(missing)[:5])
    assert listed == expected_listing(bucket)
    assert [relative for _, relative in listed] == sorted(relative for _, relative in listed)
    assert not any(SIBLING in full for full, _ in listed)


def test_listed_uris_round_trip(bucket: dict[str, str], store: Store) -> None:
    listed = dict(store.list_files(f"s3://{BUCKET}/{PREFIX}", IMAGE_EXTENSIONS))
    odd = [key for key in bucket if any(c in key for c in "%&@'") or NFD_CLASS in key or "+y" in key]
    picks = [*sorted(odd)[:: max(1, len(odd) // 12)], next(key for key in bucket if NFD_CLASS in key)]
    for key in picks:
        uri = f"s3://{BUCKET}/{key}"
        assert uri in listed, uri
        assert store.read_bytes(uri) == body(key), uri
        assert store.exists(uri)


def test_labels_and_splits_from_s3_listing(bucket: dict[str, str], store: Store) -> None:
    listing = sources.list_images(store, f"s3://{BUCKET}/{PREFIX}")
    assert listing.layout == "fruits360"
    assert len(listing.rows) == len(bucket)
    expected = {f"s3://{BUCKET}/{key}": (relative.split("/")[1], relative.split("/")[0])
                for key, relative in bucket.items()}
    assert {path: (label, split) for path, label, split in listing.rows} == expected
    assert listing.labels == sorted(unicodedata.normalize("NFC", c) for c in CLASSES)
    assert "Pepper Jalapeño" in listing.labels  # NFC, though the keys are NFD
    per_split = {split: sum(1 for _, _, s in listing.rows if s == split) for split in SPLITS}
    assert per_split == {split: len(CLASSES) * PER_CLASS_AND_SPLIT for split in SPLITS}


def test_missing_bucket_is_a_clear_error(bucket: dict[str, str], store: Store) -> None:
    uri = "s3://no-such-bucket-fruitpipe/photos"
    with pytest.raises((ValueError, FileNotFoundError)) as info:
        store.list_files(uri, IMAGE_EXTENSIONS)
    assert uri in str(info.value)
    with pytest.raises((ValueError, FileNotFoundError), match="no-such-bucket-fruitpipe"):
        sources.list_images(store, uri)


@pytest.mark.parametrize("prefix", ["nothing-here", f"{PREFIX}/Training/Apple",
                                    f"{PREFIX}/Training/Apple Red/0_100.jpg"])
def test_empty_prefix_is_a_clear_error(bucket: dict[str, str], store: Store, prefix: str) -> None:
    # A string prefix of real keys ("Training/Apple" of "Training/Apple Red/...") or a file is no folder.
    uri = f"s3://{BUCKET}/{prefix}"
    with pytest.raises((ValueError, FileNotFoundError)) as info:
        store.list_files(uri, IMAGE_EXTENSIONS)
    assert uri in str(info.value)


def test_folder_without_visible_images(bucket: dict[str, str], store: Store) -> None:
    uri = f"s3://{BUCKET}/junk only"
    assert store.list_files(uri, IMAGE_EXTENSIONS) == []
    with pytest.raises(ValueError, match="no images") as info:
        sources.list_images(store, uri)
    assert uri in str(info.value)
