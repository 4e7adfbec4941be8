"""`fruitpipe upload` against a real S3-protocol server (moto on 127.0.0.1), checked with boto3 directly."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fruitpipe import storage
from fruitpipe.config import S3Options
from fruitpipe.devtools.s3server import DUMMY_SECRET, client
from fruitpipe.ops import upload

# relative path -> content; odd names on purpose ("é" in NFC, as the walker normalises it)
FILES = {
    "Apple Red/r_0 1.jpg": b"\xff\xd8apple" * 10,
    "a=b/c+d.jpg": b"equals and plus",
    "Pepper Jalape\u00f1o/\u00e9t\u00e9 %20.png": b"\x89PNG non-ascii",
    "nested/deep/er/notes.txt": b"every non-hidden file, not only images",
    "empty.bin": b"",
}
HIDDEN = {".hidden": b"skip me", "Apple Red/.DS_Store": b"skip me too", ".cache/x.jpg": b"hidden folder"}


@pytest.fixture
def s3(s3_endpoint: str):
    """A boto3 client of our own (independent of fruitpipe.storage)."""
    return client(s3_endpoint)


def make_bucket(s3, name: str) -> str:
    s3.create_bucket(Bucket=name)
    return name


def make_folder(root: Path, files: dict[str, bytes]) -> Path:
    for relative, content in files.items():
        path = root.joinpath(*relative.split("/"))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    return root


def bucket_contents(s3, bucket: str) -> dict[str, bytes]:
    keys = [item["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
            for item in page.get("Contents", [])]
    return {key: s3.get_object(Bucket=bucket, Key=key)["Body"].read() for key in keys}


def run(s3_endpoint: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AWS_ENDPOINT_URL": s3_endpoint}
    result = subprocess.run([sys.executable, "-m", "fruitpipe.cli", *args], env=env, capture_output=True,
                            text=True, timeout=120)
    assert DUMMY_SECRET not in result.stdout + result.stderr
    return result


def test_upload_exact_keys_idempotent_and_only_changed_file(s3, s3_endpoint: str, tmp_path: Path) -> None:
    bucket = make_bucket(s3, "upload-idempotent")
    s3.put_object(Bucket=bucket, Key="photos2/sibling.jpg", Body=b"not ours")
    s3.put_object(Bucket=bucket, Key="photos", Body=b"an object named like the prefix")
    folder = make_folder(tmp_path / "in", {**FILES, **HIDDEN})
    options = S3Options(endpoint_url=s3_endpoint)

    first = upload.upload_folder(folder, f"s3://{bucket}/photos", workers=4, s3=options)

    expected = {f"photos/{relative}": content for relative, content in FILES.items()}
    untouched = {"photos2/sibling.jpg": b"not ours", "photos": b"an object named like the prefix"}
    assert bucket_contents(s3, bucket) == {**expected, **untouched}
    assert (first.files, first.uploaded, first.skipped, first.failed) == (len(FILES), len(FILES), 0, ())
    assert first.bytes_uploaded == sum(map(len, FILES.values())) and first.ok
    head = s3.head_object(Bucket=bucket, Key="photos/a=b/c+d.jpg")
    assert head["Metadata"]["sha256"] == hashlib.sha256(FILES["a=b/c+d.jpg"]).hexdigest()

    second = upload.upload_folder(folder, f"s3://{bucket}/photos/", workers=4, s3=options)
    assert (second.uploaded, second.skipped, second.bytes_uploaded) == (0, len(FILES), 0)

    changed = "Apple Red/r_0 1.jpg"
    new_content = FILES[changed].replace(b"apple", b"APPLE")
    assert len(new_content) == len(FILES[changed]) and new_content != FILES[changed]
    (folder / "Apple Red" / "r_0 1.jpg").write_bytes(new_content)
    third = upload.upload_folder(folder, f"s3://{bucket}/photos", workers=4, s3=options)
    assert (third.uploaded, third.skipped, third.bytes_uploaded) == (1, len(FILES) - 1, len(new_content))
    assert bucket_contents(s3, bucket) == {**expected, f"photos/{changed}": new_content, **untouched}


def test_same_size_object_without_our_checksum_is_replaced(s3, s3_endpoint: str, tmp_path: Path) -> None:
    bucket = make_bucket(s3, "upload-foreign")
    folder = make_folder(tmp_path / "in", {"a.jpg": b"0123456789", "b.jpg": b"abcdefghij"})
    s3.put_object(Bucket=bucket, Key="p/a.jpg", Body=b"9876543210")  # same size, other tool, no metadata
    s3.put_object(Bucket=bucket, Key="p/b.jpg", Body=b"ABCDEFGHIJ",  # same size, stale checksum
                  Metadata={"sha256": hashlib.sha256(b"abcdefghij").hexdigest() + "0"})
    summary = upload.upload_folder(folder, f"s3://{bucket}/p", s3=S3Options(endpoint_url=s3_endpoint))
    assert (summary.uploaded, summary.skipped) == (2, 0)
    assert bucket_contents(s3, bucket) == {"p/a.jpg": b"0123456789", "p/b.jpg": b"abcdefghij"}


def test_multipart_upload_is_recognised_on_the_next_run(s3, s3_endpoint: str, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(upload, "MULTIPART_THRESHOLD", 5 * 1024 * 1024)  # S3's minimum part size
    bucket = make_bucket(s3, "upload-multipart")
    big = os.urandom(6 * 1024 * 1024)
    folder = make_folder(tmp_path / "in", {"big.bin": big, "small.txt": b"small"})
    options = S3Options(endpoint_url=s3_endpoint)
    first = upload.upload_folder(folder, f"s3://{bucket}/m", s3=options)
    assert first.uploaded == 2
    etag = s3.head_object(Bucket=bucket, Key="m/big.bin")["ETag"]
    assert etag.strip('"').endswith("-2"), etag  # really multipart: the ETag is not the content MD5
    assert bucket_contents(s3, bucket) == {"m/big.bin": big, "m/small.txt": b"small"}
    second = upload.upload_folder(folder, f"s3://{bucket}/m", s3=options)
    assert (second.uploaded, second.skipped) == (0, 2)


def test_bucket_root_target(s3, s3_endpoint: str, tmp_path: Path) -> None:
    bucket = make_bucket(s3, "upload-root")
    folder = make_folder(tmp_path / "in", {"x/y z.jpg": b"1", ".git/config": b"hidden"})
    upload.upload_folder(folder, f"s3://{bucket}", s3=S3Options(endpoint_url=s3_endpoint))
    assert bucket_contents(s3, bucket) == {"x/y z.jpg": b"1"}


def test_cli_upload_summary_and_failed_file(s3, s3_endpoint: str, tmp_path: Path) -> None:
    bucket = make_bucket(s3, "upload-cli")
    folder = make_folder(tmp_path / "in", {"ok one.jpg": b"fine", "sub/ok=two.jpg": b"fine too"})
    (folder / "dangling.jpg").symlink_to(tmp_path / "does-not-exist")

    result = run(s3_endpoint, "upload", str(folder), f"s3://{bucket}/cli", "--workers", "2")
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert "2 uploaded, 0 skipped" in result.stdout and "1 failed, of 3" in result.stdout
    assert "failed    dangling.jpg:" in result.stdout and "MB/s" in result.stdout
    errors = [line for line in result.stderr.strip().splitlines() if "fruitpipe.progress" not in line]
    assert errors == ["fruitpipe upload: error: 1 of 3 files failed (listed above)"]
    assert set(bucket_contents(s3, bucket)) == {"cli/ok one.jpg", "cli/sub/ok=two.jpg"}

    (folder / "dangling.jpg").unlink()
    again = run(s3_endpoint, "-v", "upload", str(folder), f"s3://{bucket}/cli")  # debug logging: still no secret
    assert again.returncode == 0, again.stderr
    assert "0 uploaded, 2 skipped" in again.stdout


@pytest.mark.parametrize(("args", "message"), [
    (["{missing}", "s3://{bucket}/p"], "local folder not found"),
    (["{folder}", "/tmp/not-s3"], "must be an s3://bucket/prefix URI"),
    (["{folder}", "gs://{bucket}/p"], "must be an s3://bucket/prefix URI"),
    (["{folder}", "s3://{bucket}/a/../b"], "'..'"),
    (["{folder}", "s3://no-such-bucket-fp/p"], "bucket not found: s3://no-such-bucket-fp"),
])
def test_cli_errors_are_one_line(s3, s3_endpoint: str, tmp_path: Path, args: list[str], message: str) -> None:
    bucket = make_bucket(s3, f"upload-errors-{hashlib.md5(message.encode()).hexdigest()[:8]}")
    folder = make_folder(tmp_path / "in", {"a.jpg": b"a"})
    values = {"missing": str(tmp_path / "missing"), "folder": str(folder), "bucket": bucket}
    result = run(s3_endpoint, "upload", *(arg.format(**values) for arg in args))
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fruitpipe upload: error: ") and message in lines[0], lines
    assert bucket_contents(s3, bucket) == {}  # nothing written anywhere


def test_upload_refuses_names_a_run_would_refuse(s3, s3_endpoint: str, tmp_path: Path) -> None:
    """Folder names become labels: a control character in one is reported, not uploaded."""
    bucket = make_bucket(s3, "upload-unsafe")
    folder = make_folder(tmp_path / "in", {"Kiwi/k.jpg": b"kiwi", "Ki\x1bwi/k.jpg": b"escape", "Li\nme/l.jpg": b"l"})
    summary = upload.upload_folder(folder, f"s3://{bucket}/p", progress=False, s3=S3Options(endpoint_url=s3_endpoint))
    assert bucket_contents(s3, bucket) == {"p/Kiwi/k.jpg": b"kiwi"}
    assert sorted(summary.failed) == sorted([("Ki\x1bwi/k.jpg", storage.unsafe_reason("Ki\x1bwi/k.jpg")),
                                             ("Li\nme/l.jpg", storage.unsafe_reason("Li\nme/l.jpg"))])
    assert all(reason and "control" in reason for _, reason in summary.failed) and not summary.ok
