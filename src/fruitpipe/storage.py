"""One storage interface for every location: local paths and s3:// (any S3-compatible store).

Used by the driver to list and to write small files, and by executors to read image bytes and
write part files. The operations are methods of `Store`, a frozen value built from `S3Options` and
passed explicitly to every call site (and in tasks to executors): there is no process-wide "current
configuration", so two endpoints in one process never overwrite each other's settings. Credentials are
never handled here: boto3 takes them from the standard AWS chain (environment, profile, instance or
container role). Reads of whole objects are retried with backoff on throttling, 5xx and cut
connections, never on 403/404.
"""
from __future__ import annotations

import functools
import hashlib
import logging
import os
import posixpath
import random
import re
import shutil
import threading
import time
import unicodedata
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from fruitpipe.config import S3Options

if TYPE_CHECKING:
    import pyarrow as pa

logger = logging.getLogger(__name__)
T = TypeVar("T")

_clients: dict[tuple[Any, ...], Any] = {}  # boto3 clients by (resolved endpoint, region, style, pid)
_clients_lock = threading.Lock()
RETRYABLE_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "InternalError",
                   "ServiceUnavailable", "500", "502", "503", "504"}
DENIED_CODES = {"AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken"}
MISSING_CODES = {"NoSuchKey", "404", "NotFound"}
LISTING_FAN_DEPTH = 2  # Training/ and Test/, then their class folders: each class paginated on its own
LISTING_THREADS = 16
BUCKET_NAME = re.compile(r"[a-zA-Z0-9.\-_]{1,255}")  # what botocore accepts (S3 itself is stricter)


# ---------------------------------------------------------------- URIs

def is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def local_path(uri: str) -> str:
    path = uri[len("file://"):] if uri.startswith("file://") else uri
    return os.path.abspath(os.path.expanduser(path))


@dataclass(frozen=True)
class S3Location:
    bucket: str
    key: str  # no leading slash; "" for the bucket root

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}" if self.key else f"s3://{self.bucket}"

    @property
    def prefix(self) -> str:
        """The key as a folder prefix ("" or ending in /)."""
        return self.key.rstrip("/") + "/" if self.key else ""


def parse_s3(uri: str) -> S3Location:
    if USERINFO.match(uri):
        raise ValueError(f"credentials in a URI are not accepted ({redact(uri)}): use the standard AWS chain")
    scheme, rest = uri.split("://", 1)
    if scheme not in ("s3", "s3a"):
        raise ValueError(f"unsupported location {redact(uri)}: use a local path or s3://bucket/prefix")
    bucket, _, key = rest.partition("/")
    if not BUCKET_NAME.fullmatch(bucket):
        raise ValueError(f"invalid or missing bucket name {bucket!r} in {redact(uri)}")
    return S3Location(bucket, key.strip("/"))


def join(uri: str, *parts: str) -> str:
    """Join path parts onto a URI without touching its scheme."""
    if is_local(uri):
        return os.path.join(local_path(uri), *parts)
    return posixpath.join(uri.rstrip("/"), *parts)


def canonical(uri: str) -> str:
    """Absolute local path, or the s3:// URI without a trailing slash."""
    return local_path(uri) if is_local(uri) else parse_s3(uri).uri


USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^@/:]*(?::[^@]*?)?@")


MAX_SEGMENT_BYTES = 255  # a file name's limit on common file systems: a label longer than that cannot be a folder


def unsafe_reason(relative: str) -> str | None:
    """Why a listed relative path may not be used, or None. Folder names become labels, and labels become
    file and folder names (sample sets, per-class outputs, reports) and S3 keys: a '..' or '.' segment, an
    absolute or empty segment, a control character or an over-long name could escape or break them."""
    parts = relative.split("/")
    if relative.startswith("/") or "" in parts:
        return "absolute path or empty path segment ('//')"
    if any(part in (".", "..") for part in parts):
        return "'.' or '..' path segment"
    if not relative.isprintable() and any(unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp") for char in relative):
        return "control or invisible formatting character in the path"  # isprintable(): none of these (C speed)
    if (len(relative) * 4 > MAX_SEGMENT_BYTES  # 4 bytes a character at most: short paths need no encoding
            and any(len(part.encode("utf-8")) > MAX_SEGMENT_BYTES for part in parts)):
        return f"a path segment longer than {MAX_SEGMENT_BYTES} bytes"
    return None


def _hidden(relative: str) -> bool:
    """A segment starting with '.' (not '.' or '..' themselves: `unsafe_reason` refuses those)."""
    if not relative.startswith(".") and "/." not in relative:
        return False  # the usual path, decided at C speed
    return any(part.startswith(".") and part not in (".", "..") for part in relative.split("/"))


def redact(uri: str) -> str:
    """A URI safe to print: a user[:password]@ part removed (even when the secret holds a '/')."""
    return USERINFO.sub(r"\1", uri)


def spark_path(uri: str) -> str:
    """The form Spark's own (Hadoop) readers take: local paths only."""
    if not is_local(uri):
        raise ValueError(f"Spark cannot read {redact(uri)} directly (no Hadoop S3 connector); use fruitpipe.storage")
    return f"file://{local_path(uri)}"


# ---------------------------------------------------------------- S3 errors and retries

def error_code(exc: BaseException) -> str | None:
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return None
    code = response.get("Error", {}).get("Code")
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return str(code or status) if (code or status) else None


def is_retryable(exc: BaseException) -> bool:
    """Throttling, 5xx, timeouts and cut connections; never 403/404, missing credentials or our ValueErrors."""
    from botocore import exceptions as boto

    if isinstance(exc, boto.ClientError):
        return error_code(exc) in RETRYABLE_CODES
    from urllib3.exceptions import HTTPError  # urllib3 ships with botocore
    transient = (boto.ConnectionError, boto.HTTPClientError, boto.IncompleteReadError,
                 boto.ResponseStreamingError, HTTPError, ConnectionError, TimeoutError)
    return isinstance(exc, transient)


def _user_error(exc: Exception, what: str) -> Exception:
    """Map S3 errors to the exceptions users see: PermissionError, FileNotFoundError, OSError."""
    from botocore.exceptions import NoCredentialsError, PartialCredentialsError

    if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
        return PermissionError(f"no AWS credentials found for {what}: set them in the environment, "
                               "a profile, or use an instance/container role")
    code = error_code(exc)
    if code in DENIED_CODES:
        return PermissionError(f"access denied to {what} ({code}): check the credentials or role")
    if code in MISSING_CODES:
        return FileNotFoundError(f"not found: {what}")
    if code == "NoSuchBucket":
        return FileNotFoundError(f"bucket not found: {what}")
    if isinstance(exc, (ValueError, OSError)):
        return exc
    return OSError(f"{what}: {type(exc).__name__}: {exc}")


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Content checksum of a local file, read in 1 MiB blocks (weights pinning, upload idempotence)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------- operations

@dataclass(frozen=True)
class Listed:
    """One listed file: its full URI, its path relative to the listed folder (NFC) and its version."""

    uri: str
    relative: str
    version: str  # "size:mtime_ns" (local) or "size:ETag" (S3): changes when the file is rewritten


@dataclass(frozen=True)
class Store:
    """Local paths, and s3:// through `options`: every read, write and listing of a run goes through one.

    A value, not a setting: the driver builds it from the run's `S3Options` and passes it to each call
    site, and tasks carry it to executors (it pickles as its options alone), so stores for different
    endpoints can serve one process side by side. `Store()` is local paths plus the default AWS chain.
    """

    options: S3Options = field(default_factory=S3Options)

    def client(self) -> Any:
        """A thread-safe boto3 S3 client for this process and these options (built once, then shared)."""
        options = self.options
        endpoint = options.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        key = (endpoint, options.region, options.addressing_style, os.getpid())
        with _clients_lock:
            if key not in _clients:
                import boto3
                from botocore.config import Config

                style = options.addressing_style or ("path" if endpoint else "auto")
                # 3 attempts per request here; whole-object reads add their own attempts around them
                config = Config(retries={"mode": "standard", "total_max_attempts": 3}, max_pool_connections=64,
                                connect_timeout=10, read_timeout=60, s3={"addressing_style": style})
                session = boto3.session.Session(region_name=options.region)
                _clients[key] = session.client("s3", endpoint_url=endpoint, config=config)
            return _clients[key]

    def with_retries(self, action: Callable[[], T], what: str, attempts: int | None = None) -> T:
        """Run `action`, retrying retryable failures with full-jitter exponential backoff
        (`attempts`, default the options' read_attempts)."""
        attempts = attempts or self.options.read_attempts
        for attempt in range(1, attempts + 1):
            try:
                return action()
            except Exception as exc:
                if attempt == attempts or not is_retryable(exc):
                    raise _user_error(exc, what) from exc
                delay = random.uniform(0, min(8.0, 0.1 * 2 ** attempt))
                logger.debug("retrying %s after %s (attempt %d/%d, %.2fs)", what, type(exc).__name__, attempt,
                             attempts, delay)
                time.sleep(delay)
        raise AssertionError("unreachable")

    def list_objects(self, location: S3Location) -> Iterator[dict[str, Any]]:
        """Every object under the prefix, paginated (1,000 keys a page)."""
        paginator = self.client().get_paginator("list_objects_v2")
        pages = paginator.paginate(Bucket=location.bucket, Prefix=location.prefix)
        iterator = iter(pages)
        while True:
            page = self.with_retries(lambda: next(iterator, None), f"listing {location.uri}")
            if page is None:
                return
            yield from page.get("Contents", [])

    def object_tables(self, location: S3Location, depth: int = LISTING_FAN_DEPTH,
                      threads: int = LISTING_THREADS) -> Iterator[pa.Table]:
        """Every object under the prefix as (key, size, etag) Arrow tables of at most LISTING_CHUNK rows,
        never one Python object per key beyond a chunk and the pages in flight. When there is more than
        one page, the folders `depth` levels down (Training/ and Test/, then their class folders) are found
        with delimiter listings and paginated concurrently: one sequential chain of 1,000-key pages becomes
        one per folder. Folders are taken in order and at most `threads` of them are listed ahead of the
        caller, so a slow caller does not keep every folder's objects waiting in memory. Objects met above
        the folders come first, so the order is not always the key order (callers sort)."""
        first = self.with_retries(lambda: self.client().list_objects_v2(Bucket=location.bucket,
                                                                       Prefix=location.prefix),
                                  f"listing {location.uri}")
        if not first.get("IsTruncated"):  # one page holds it all: nothing to gain from fanning out
            yield from _object_chunks(first.get("Contents", []))
            return
        folders, objects = self._folders(location.prefix, location, depth, threads)
        yield from _object_chunks(objects)
        if not folders:
            return
        with ThreadPoolExecutor(max_workers=min(threads, len(folders))) as pool:
            ahead: deque[Future[list[pa.Table]]] = deque()  # folders listed, not yet taken: `threads` at most
            for folder in folders:
                ahead.append(pool.submit(self._folder_tables, S3Location(location.bucket, folder)))
                if len(ahead) > threads:
                    yield from ahead.popleft().result()
            while ahead:
                yield from ahead.popleft().result()

    def _folder_tables(self, location: S3Location) -> list[pa.Table]:
        """One folder's objects, paginated, as (key, size, etag) tables (a listing thread's work)."""
        return list(_object_chunks(self.list_objects(location)))

    def _folders(self, prefix: str, location: S3Location, depth: int,
                 threads: int) -> tuple[list[str], list[dict[str, Any]]]:
        """(the prefixes `depth` delimiter levels below `prefix`, the objects met on the way there)."""
        level, objects = [prefix], list[dict[str, Any]]()
        for _ in range(depth):
            with ThreadPoolExecutor(max_workers=max(1, min(threads, len(level)))) as pool:
                found = list(pool.map(lambda folder: self._one_level(S3Location(location.bucket, folder)), level))
            level = [sub for subfolders, _ in found for sub in subfolders]
            objects.extend(item for _, items in found for item in items)
            if not level:
                break
        return level, objects

    def _one_level(self, location: S3Location) -> tuple[list[str], list[dict[str, Any]]]:
        """A delimiter listing: (subfolder prefixes, objects directly in the folder)."""
        paginator = self.client().get_paginator("list_objects_v2")
        iterator = iter(paginator.paginate(Bucket=location.bucket, Prefix=location.prefix, Delimiter="/"))
        folders: list[str] = []
        objects: list[dict[str, Any]] = []
        while True:
            page = self.with_retries(lambda: next(iterator, None), f"listing {location.uri}")
            if page is None:
                return folders, objects
            folders.extend(common["Prefix"] for common in page.get("CommonPrefixes", []))
            objects.extend(page.get("Contents", []))

    def list_files(self, uri: str, extensions: Iterable[str]) -> list[tuple[str, str]]:
        """All files below `uri` with one of `extensions` (case-insensitive), skipping hidden ones.

        Returns (full URI, path relative to `uri` in NFC) pairs, sorted by relative path. A '.' or '..'
        segment (possible in S3 keys) is not "hidden": such paths are returned for the caller to refuse.
        """
        return [(listed.uri, listed.relative) for listed in self.list_versions(uri, extensions)]

    def list_versions(self, uri: str, extensions: Iterable[str]) -> list[Listed]:
        """`list_files` with each file's version (`Listed.version`), from the same listing: no extra request."""
        table = self.list_table(uri, extensions)
        return [Listed(*row) for row in zip(*(table.column(name).to_pylist() for name in LISTED_COLUMNS),
                                            strict=True)]

    def list_table(self, uri: str, extensions: Iterable[str]) -> pa.Table:
        """`list_versions` as one Arrow table (uri, relative, version), sorted by relative path: while it
        is built, Python holds one object per file for LISTING_CHUNK files at most (a million files cost
        the table's bytes, not a million tuples)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        wanted = tuple(ext.lower() for ext in extensions)
        chunks = []
        for chunk in self._walk_chunks(uri):
            kept = [(full, unicodedata.normalize("NFC", relative), version) for full, relative, version in chunk
                    if relative.lower().endswith(wanted) and not _hidden(relative)]
            chunks.append(pa.table([pa.array(column, pa.string()) for column in zip(*kept, strict=True)]
                                   if kept else [pa.array([], pa.string())] * 3, names=list(LISTED_COLUMNS)))
        table = pa.concat_tables(chunks) if chunks else _empty_listing()
        del chunks  # the concatenation shares their buffers; only a sorted copy below would not
        relative = table.column("relative")
        if len(relative) < 2 or pc.all(pc.less_equal(relative[:-1], relative[1:])).as_py():
            return table  # S3 lists folders in key order: usually sorted already, no copy of a million rows
        return table.take(pc.sort_indices(table, [("relative", "ascending")]))

    def _walk_chunks(self, uri: str) -> Iterator[list[tuple[str, str, str]]]:
        """`_walk` in lists of at most LISTING_CHUNK rows; on S3 straight from the object tables."""
        if is_local(uri):
            chunk: list[tuple[str, str, str]] = []
            for row in self._walk(uri):
                chunk.append(row)
                if len(chunk) == LISTING_CHUNK:
                    yield chunk
                    chunk = []
            if chunk:
                yield chunk
            return
        location = parse_s3(uri)
        any_object = False
        for table in self.object_tables(location):
            any_object = any_object or table.num_rows > 0
            yield list(_s3_rows(location, table))
        if not any_object:
            raise ValueError(f"input not found or empty: {redact(uri)}")

    def _walk(self, uri: str) -> Iterator[tuple[str, str, str]]:
        """(full URI, relative path, version) of every file below `uri`; ValueError when there is no folder.
        The version is "size:mtime_ns" locally and "size:ETag" on S3: it changes when the file is rewritten."""
        if is_local(uri):
            root = Path(local_path(uri))
            if not root.exists():
                raise ValueError(f"input not found: {redact(uri)}")
            if not root.is_dir():
                raise ValueError(f"input is not a folder: {redact(uri)}")
            for directory, _, files in os.walk(root):
                for name in files:
                    full = os.path.join(directory, name)
                    try:
                        info = os.stat(full)
                    except FileNotFoundError:  # removed while listing: not there
                        continue
                    yield full, os.path.relpath(full, root).replace(os.sep, "/"), f"{info.st_size}:{info.st_mtime_ns}"
            return
        for chunk in self._walk_chunks(uri):
            yield from chunk

    def read_bytes(self, uri: str, limit: int | None = None) -> bytes:
        """Whole object; with `limit`, refuse larger objects without reading their body."""
        if is_local(uri):
            path = local_path(uri)
            if limit is not None and os.path.getsize(path) > limit:
                raise ValueError(f"file too large: {os.path.getsize(path)} bytes > limit {limit}")
            with open(path, "rb") as handle:
                return handle.read()
        location = parse_s3(uri)

        def get() -> bytes:
            response = self.client().get_object(Bucket=location.bucket, Key=location.key)
            size = int(response.get("ContentLength", -1))
            if limit is not None and size > limit:
                response["Body"].close()
                raise ValueError(f"file too large: {size} bytes > limit {limit}")
            data: bytes = response["Body"].read()
            if size >= 0 and len(data) != size:
                from botocore.exceptions import IncompleteReadError

                raise IncompleteReadError(actual_bytes=len(data), expected_bytes=size)
            return data

        return self.with_retries(get, uri)

    def write_bytes(self, uri: str, data: bytes) -> None:
        """Write a whole file (manifest, plots, part files); parents are created as needed."""
        if is_local(uri):
            path = Path(local_path(uri))
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.partial")
            partial.write_bytes(data)
            os.replace(partial, path)
            return
        location = parse_s3(uri)
        self.with_retries(lambda: self.client().put_object(Bucket=location.bucket, Key=location.key, Body=data), uri)

    def exists(self, uri: str) -> bool:
        """A file, or a folder/prefix holding anything (`prefix` never matches `prefix2/...`)."""
        if is_local(uri):
            return os.path.exists(local_path(uri))
        location = parse_s3(uri)
        if location.key:
            try:
                self.with_retries(lambda: self.client().head_object(Bucket=location.bucket, Key=location.key), uri)
                return True
            except (FileNotFoundError, PermissionError):
                # a missing key answers 403 when the role may only list `prefix/`: fall through to that listing
                pass
        response = self.with_retries(lambda: self.client().list_objects_v2(Bucket=location.bucket,
                                                                           Prefix=location.prefix, MaxKeys=1), uri)
        return bool(response.get("KeyCount", len(response.get("Contents", []))))

    def is_empty_dir(self, uri: str) -> bool:
        if is_local(uri):
            path = local_path(uri)
            return os.path.isdir(path) and not os.listdir(path)
        return not self.exists(uri)

    def list_tree(self, uri: str) -> list[str]:
        """Every file below `uri`, as paths relative to it, sorted."""
        if is_local(uri) and not os.path.isdir(local_path(uri)):
            return []
        try:
            return sorted(relative for _, relative, _ in self._walk(uri))
        except ValueError:
            return []

    def remove_tree(self, uri: str, keep: tuple[str, ...] = ()) -> None:
        """Delete a folder/prefix and everything below it, except the files `keep` names (paths relative
        to `uri`; one ending in "/" keeps a whole subfolder)."""
        if keep:
            for relative in self.list_tree(uri):
                if not any(relative == kept or (kept.endswith("/") and relative.startswith(kept)) for kept in keep):
                    self.remove(join(uri, *relative.split("/")))
            if is_local(uri):
                _remove_empty_folders(local_path(uri))
            return
        if is_local(uri):
            path = local_path(uri)
            if os.path.isdir(path):
                shutil.rmtree(path)
            elif os.path.exists(path):
                os.remove(path)
            return
        location = parse_s3(uri)
        keys = [item["Key"] for item in self.list_objects(location)]
        for start in range(0, len(keys), 1000):
            batch = {"Objects": [{"Key": key} for key in keys[start:start + 1000]], "Quiet": True}
            delete = functools.partial(self.client().delete_objects, Bucket=location.bucket, Delete=batch)
            self.with_retries(delete, uri)

    def remove(self, uri: str) -> None:
        """Delete one file; a missing file is not an error."""
        if is_local(uri):
            Path(local_path(uri)).unlink(missing_ok=True)
            return
        location = parse_s3(uri)
        self.with_retries(lambda: self.client().delete_object(Bucket=location.bucket, Key=location.key), uri)

    def move(self, source: str, target: str) -> None:
        """Publish a staged file: rename locally, server-side copy + delete on S3."""
        if is_local(source) and is_local(target):
            Path(local_path(target)).parent.mkdir(parents=True, exist_ok=True)
            os.replace(local_path(source), local_path(target))
            return
        if is_local(source) or is_local(target):
            self.write_bytes(target, self.read_bytes(source))
        else:
            src, dst = parse_s3(source), parse_s3(target)
            self.with_retries(lambda: self.client().copy_object(Bucket=dst.bucket, Key=dst.key,
                                                                CopySource={"Bucket": src.bucket, "Key": src.key}),
                              target)
        self.remove(source)

    def copy_tree_from_local(self, folder: str | Path, uri: str) -> None:
        """Copy a local folder (a bundle written locally) to any location."""
        for directory, _, files in os.walk(folder):
            for name in files:
                full = os.path.join(directory, name)
                relative = os.path.relpath(full, folder).replace(os.sep, "/")
                with open(full, "rb") as handle:
                    self.write_bytes(join(uri, *relative.split("/")), handle.read())


def _remove_empty_folders(root: str) -> None:
    """Remove the empty folders below `root` (not `root` itself), deepest first."""
    for directory, _, _ in sorted(os.walk(root), key=lambda entry: -len(entry[0])):
        if directory != root and not os.listdir(directory):
            os.rmdir(directory)


LISTED_COLUMNS = ("uri", "relative", "version")
OBJECT_COLUMNS = ("key", "size", "etag")
LISTING_CHUNK = 10_000  # files per chunk of a listing while it becomes Arrow


def _empty_listing() -> pa.Table:
    import pyarrow as pa

    return pa.table([pa.array([], pa.string())] * 3, names=list(LISTED_COLUMNS))


def _object_chunks(objects: Iterable[dict[str, Any]]) -> Iterator[pa.Table]:
    """boto3's object dicts as (key, size, etag) tables of at most LISTING_CHUNK rows."""
    import pyarrow as pa

    def table(rows: list[tuple[str, int, str]]) -> pa.Table:
        keys, sizes, etags = (list(column) for column in zip(*rows, strict=True)) if rows else ([], [], [])
        return pa.table([pa.array(keys, pa.string()), pa.array(sizes, pa.int64()), pa.array(etags, pa.string())],
                        names=list(OBJECT_COLUMNS))

    rows: list[tuple[str, int, str]] = []
    for item in objects:
        rows.append((item["Key"], int(item.get("Size", -1)), str(item.get("ETag", "")).strip('"')))
        if len(rows) == LISTING_CHUNK:
            yield table(rows)
            rows = []
    if rows:
        yield table(rows)


def _s3_rows(location: S3Location, table: pa.Table) -> Iterator[tuple[str, str, str]]:
    """(full URI, relative path, "size:ETag") of a table's objects, folder markers skipped."""
    for key, size, etag in zip(*(table.column(name).to_pylist() for name in OBJECT_COLUMNS), strict=True):
        relative = key[len(location.prefix):]
        if relative and not relative.endswith("/"):
            yield f"s3://{location.bucket}/{key}", relative, f"{size}:{etag}"
