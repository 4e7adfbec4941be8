"""A real S3-protocol server for tests and the benchmark: moto in server mode, as its own process on 127.0.0.1."""
from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from fruitpipe.devtools.processes import free_port

DUMMY_KEY_ID = "FRUITPIPETESTKEYID"
DUMMY_SECRET = "fruitpipe-dummy-secret-Zq81vX0-never-print-me"


def use_dummy_credentials() -> None:
    """moto accepts any key: set a dummy chain (inherited by Spark's executors) and drop real ones and endpoints."""
    os.environ.update({"AWS_ACCESS_KEY_ID": DUMMY_KEY_ID, "AWS_SECRET_ACCESS_KEY": DUMMY_SECRET,
                       "AWS_DEFAULT_REGION": "us-east-1"})
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        os.environ.pop(name, None)


class MotoServer:
    """`with MotoServer() as endpoint:` a fresh, empty S3 on http://127.0.0.1:PORT."""

    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> str:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=1)
                return self.endpoint
            except OSError:
                if self.process.poll() is not None:
                    raise RuntimeError("moto server exited at start") from None
                time.sleep(0.2)
        raise RuntimeError("moto server did not start within 60 s")

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=30)


def client(endpoint: str) -> Any:
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")


def upload_folder(endpoint: str, folder: Path, bucket: str, prefix: str) -> int:
    """Put every file of `folder` under s3://bucket/prefix/ (creating the bucket); returns the count."""
    s3 = client(endpoint)
    existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
    if bucket not in existing:
        s3.create_bucket(Bucket=bucket)
    count = 0
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        s3.put_object(Bucket=bucket, Key=f"{prefix.strip('/')}/{path.relative_to(folder).as_posix()}",
                      Body=path.read_bytes())
        count += 1
    return count


def download_prefix(endpoint: str, bucket: str, prefix: str, target: Path) -> list[str]:
    """Copy s3://bucket/prefix/ into `target`; returns the relative keys."""
    s3 = client(endpoint)
    keys = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix.strip("/") + "/"):
        for item in page.get("Contents", []):
            relative = item["Key"][len(prefix.strip("/")) + 1:]
            destination = target / relative
            destination.parent.mkdir(parents=True, exist_ok=True)
            destination.write_bytes(s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read())
            keys.append(relative)
    return sorted(keys)
