"""Load a local folder of photos into S3-compatible storage: `fruitpipe upload LOCAL_DIR s3://bucket/prefix`.

Every non-hidden regular file below LOCAL_DIR goes to `<prefix>/<relative posix path>` (relative path
in Unicode NFC, as the pipeline's listing labels it); nothing is written outside the prefix, no
folder-marker objects are created. Hidden files and folders (any path part starting with ".") are
skipped; links to folders are not followed. Files are uploaded by a thread pool sharing one
boto3 client (thread-safe); the CLI's progress reporter shows files done / total and MB/s.

Idempotence: each object carries the SHA-256 of its content as user metadata
(`x-amz-meta-sha256`, boto3 `Metadata={"sha256": ...}`). A file is skipped when the object at its key
has the same size (from one listing of the prefix) and the same `sha256` metadata (HeadObject, only
for same-size objects). We do not compare MD5 with the ETag: the ETag is the content MD5 only for
single-part uploads without SSE-KMS/SSE-C; a multipart upload's ETag is an MD5 of the part MD5s with
a `-N` suffix that depends on the part size chosen by whoever uploaded it, and S3-compatible stores
differ. Our metadata is the same however the object was uploaded (single PUT below
`MULTIPART_THRESHOLD`, multipart above). An object without it (uploaded by another tool) is uploaded
once more and carries it from then on.

Per-file problems (unreadable file, broken link, denied PUT...) never stop the other files: they are
listed in `UploadSummary.failed`. Problems with the whole request (no local folder, not an s3://
target, missing bucket, listing denied) raise ValueError / OSError with a one-line message.
"""
from __future__ import annotations

import hashlib
import logging
import mimetypes
import os
import stat
import time
import unicodedata
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fruitpipe import storage
from fruitpipe.config import S3Options
from fruitpipe.progress import Reporter
from fruitpipe.storage import Store

logger = logging.getLogger(__name__)

DEFAULT_WORKERS = 16
MULTIPART_THRESHOLD = 64 * 1024 * 1024  # larger files go through boto3's managed multipart upload
PUT_ATTEMPTS = 3  # on top of botocore's own standard retries
UPLOADED, SKIPPED = "uploaded", "skipped"


@dataclass(frozen=True)
class UploadSummary:
    """What one `upload_folder` call did. `failed` holds (relative path, one-line reason) pairs."""

    source: str
    target: str
    files: int
    uploaded: int
    skipped: int
    failed: tuple[tuple[str, str], ...]
    bytes_uploaded: int
    bytes_skipped: int
    seconds: float

    @property
    def ok(self) -> bool:
        return not self.failed

    @property
    def mb_per_s(self) -> float:
        """Uploaded megabytes (10^6 bytes) per second of the whole call (listing and hashing included)."""
        return self.bytes_uploaded / 1e6 / self.seconds if self.seconds > 0 else 0.0

    def describe(self) -> str:
        """The lines the CLI prints."""
        lines = [
            f"fruitpipe upload {self.source} -> {self.target}",
            f"  files     {self.uploaded} uploaded, {self.skipped} skipped (already there, same sha256), "
            f"{len(self.failed)} failed, of {self.files}",
            f"  bytes     {self.bytes_uploaded:,} uploaded ({self.bytes_uploaded / 1e6:.1f} MB), "
            f"{self.bytes_skipped:,} skipped",
            f"  time      {self.seconds:.2f} s, {self.mb_per_s:.2f} MB/s",
        ]
        lines += [f"  failed    {relative}: {reason}" for relative, reason in self.failed]
        return "\n".join(lines)


@dataclass(frozen=True)
class _LocalFile:
    path: str  # on disk
    relative: str  # posix, NFC
    size: int


def upload_folder(local_dir: str | os.PathLike[str], target_uri: str, workers: int = DEFAULT_WORKERS,
                  progress: Reporter | None = None, *, s3: S3Options | None = None) -> UploadSummary:
    """Upload every non-hidden file below `local_dir` to `target_uri` (s3://bucket/prefix), skipping
    files already there with the same size and sha256. `s3` says how to reach the store (endpoint,
    region, addressing; None: the AWS chain). `progress` shows files done / total and MB/s (default:
    nothing shown).
    """
    started = time.monotonic()
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    location = _target(target_uri)
    files, failed = _local_files(local_dir)
    entries = len(files) + len(failed)  # walk problems (broken links, unreadable folders) count as entries
    store = Store(s3 or S3Options())
    remote = _remote_sizes(store, location)
    keys: dict[str, str] = {}
    todo: list[tuple[_LocalFile, str]] = []
    for item in files:
        key = f"{location.key}/{item.relative}" if location.key else item.relative
        unsafe = storage.unsafe_reason(item.relative)
        if unsafe:  # a key fruitpipe run would refuse (its folder names become labels): not uploaded
            failed.append((item.relative, unsafe))
            continue
        if key in keys:
            failed.append((item.relative, f"same key as {keys[key]!r} after Unicode NFC normalisation"))
            continue
        keys[key] = item.relative
        todo.append((item, key))
    if not todo and not failed:
        logger.warning("nothing to upload: no non-hidden files in %s", local_dir)
    logger.debug("uploading %d files to %s with %d workers", len(todo), location.uri, workers)

    counts = {UPLOADED: 0, SKIPPED: 0}
    sizes = {UPLOADED: 0, SKIPPED: 0}
    reporter = progress or Reporter.silent()
    files_done = bytes_done = 0
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fruitpipe-upload")
    total_bytes = sum(item.size for item, _ in todo)
    with reporter.stage("upload", len(todo), "files", total_bytes, steps=False), _shut_down(pool):
        futures: dict[Future[tuple[str, int]], _LocalFile] = {
            pool.submit(_upload_one, store, location.bucket, key, item, remote.get(key)): item for item, key in todo}
        for future in as_completed(futures):
            item = futures[future]
            try:
                status, size = future.result()
            except Exception as exc:  # one file's problem, reported in the summary
                failed.append((item.relative, _one_line(exc)))
                logger.debug("failed %s: %s", item.relative, exc)
            else:
                counts[status] += 1
                sizes[status] += size
            files_done += 1
            bytes_done += item.size
            reporter.update(files_done, bytes_done)
    failed.sort()
    return UploadSummary(source=str(local_dir), target=location.uri, files=entries,
                         uploaded=counts[UPLOADED], skipped=counts[SKIPPED], failed=tuple(failed),
                         bytes_uploaded=sizes[UPLOADED], bytes_skipped=sizes[SKIPPED],
                         seconds=time.monotonic() - started)


# ---------------------------------------------------------------- local side

def _local_files(local_dir: str | os.PathLike[str]) -> tuple[list[_LocalFile], list[tuple[str, str]]]:
    """Regular non-hidden files below `local_dir`, and (relative, reason) for entries we cannot upload."""
    root = Path(local_dir).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"local folder not found: {local_dir}")
    if not root.is_dir():
        raise NotADirectoryError(f"not a folder: {local_dir}")
    root = root.resolve()
    files: list[_LocalFile] = []
    problems: list[tuple[str, str]] = []

    def unreadable(error: OSError) -> None:
        relative = _relative(root, error.filename or str(root))
        problems.append((relative or ".", f"cannot list folder: {error.strerror or error}"))

    for directory, folders, names in os.walk(root, onerror=unreadable):
        kept = []
        for name in sorted(folders):
            if name.startswith("."):
                continue
            if os.path.islink(os.path.join(directory, name)):
                logger.warning("not following the link to a folder %s", os.path.join(directory, name))
                continue
            kept.append(name)
        folders[:] = kept
        for name in sorted(names):
            if name.startswith("."):
                continue
            full = os.path.join(directory, name)
            relative = _relative(root, full)
            try:
                relative.encode("utf-8")
            except UnicodeEncodeError:
                problems.append((relative.encode("utf-8", "backslashreplace").decode(),
                                 "file name is not valid UTF-8"))
                continue
            try:
                info = os.stat(full)
            except OSError as exc:
                problems.append((relative, f"cannot read: {exc.strerror or exc} (broken link?)"))
                continue
            if not stat.S_ISREG(info.st_mode):
                problems.append((relative, "not a regular file"))
                continue
            files.append(_LocalFile(full, relative, info.st_size))
    files.sort(key=lambda item: item.relative)
    return files, problems


def _relative(root: Path, full: str) -> str:
    return unicodedata.normalize("NFC", os.path.relpath(full, root).replace(os.sep, "/"))


# ---------------------------------------------------------------- remote side

def _target(uri: str) -> storage.S3Location:
    if not uri or storage.is_local(uri) or uri.split("://", 1)[0] not in ("s3", "s3a"):
        raise ValueError(f"upload target must be an s3://bucket/prefix URI, got {storage.redact(uri)!r}")
    location = storage.parse_s3(uri)  # ValueError for a missing or invalid bucket name
    if location.key and any(part in ("", ".", "..") for part in location.key.split("/")):
        raise ValueError(f"refusing upload target {storage.redact(uri)}: empty, '.' or '..' path segments")
    return location


def _remote_sizes(store: Store, location: storage.S3Location) -> dict[str, int]:
    """key -> size of every object already under the prefix (one paginated listing)."""
    try:
        return {item["Key"]: int(item.get("Size", -1)) for item in store.list_objects(location)}
    except FileNotFoundError as exc:
        if storage.error_code(exc.__cause__ or exc) == "NoSuchBucket":
            raise FileNotFoundError(f"bucket not found: s3://{location.bucket} (create it first; "
                                    "upload creates nothing outside the prefix)") from None
        raise
    except OSError as exc:  # PermissionError, connection problems: keep the message on one line
        raise type(exc)(_one_line(exc)) from exc


def _upload_one(store: Store, bucket: str, key: str, item: _LocalFile, remote_size: int | None) -> tuple[str, int]:
    """(UPLOADED or SKIPPED, bytes) for one file; raises on failure."""
    uri, client = f"s3://{bucket}/{key}", store.client()
    small = item.size <= MULTIPART_THRESHOLD
    data = b""
    if small:
        with open(item.path, "rb") as handle:
            data = handle.read()
        digest = hashlib.sha256(data).hexdigest()
        size = len(data)
    else:
        digest, size = storage.file_sha256(item.path), os.path.getsize(item.path)
    if remote_size == size and _remote_sha256(store, client, bucket, key, uri) == digest:
        return SKIPPED, size
    extra: dict[str, Any] = {"Metadata": {"sha256": digest}}
    content_type = mimetypes.guess_type(item.relative)[0]
    if content_type:
        extra["ContentType"] = content_type
    if small:
        store.with_retries(lambda: client.put_object(Bucket=bucket, Key=key, Body=data, **extra), uri,
                           attempts=PUT_ATTEMPTS)
    else:
        store.with_retries(lambda: _multipart(client, item.path, bucket, key, extra), uri, attempts=PUT_ATTEMPTS)
    return UPLOADED, size


def _remote_sha256(store: Store, client: Any, bucket: str, key: str, uri: str) -> str | None:
    try:
        head = store.with_retries(lambda: client.head_object(Bucket=bucket, Key=key), uri)
    except FileNotFoundError:  # deleted since the listing
        return None
    recorded = head.get("Metadata", {}).get("sha256")
    return str(recorded) if recorded is not None else None


def _multipart(client: Any, path: str, bucket: str, key: str, extra: dict[str, Any]) -> None:
    """boto3's managed upload; its S3UploadFailedError is unwrapped so S3 error codes map as usual."""
    from boto3.exceptions import S3UploadFailedError
    from boto3.s3.transfer import TransferConfig

    config = TransferConfig(multipart_threshold=MULTIPART_THRESHOLD, multipart_chunksize=MULTIPART_THRESHOLD,
                            use_threads=False)
    try:
        client.upload_file(path, bucket, key, ExtraArgs=extra, Config=config)
    except S3UploadFailedError as exc:
        if exc.__context__ is not None:
            raise exc.__context__ from None
        raise


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if isinstance(exc, (OSError, ValueError)) else f"{type(exc).__name__}: {text}"


@contextmanager
def _shut_down(pool: ThreadPoolExecutor) -> Iterator[None]:
    """Leave only when no upload thread runs (also on Ctrl-C): queued uploads are cancelled."""
    try:
        yield
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
