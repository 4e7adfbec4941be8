"""A least-privilege IAM policy for one fruitpipe run: read the input prefix, write the output prefix.

Printed by `fruitpipe iam-policy`; attach it to the role or user the driver and executors run as.
We never handle credentials: this only describes what they should be allowed to do.

Statements (stable Sids, so a diff between two policies is meaningful):

- `InputList`: `s3:ListBucket` on the input bucket, only for listings below the input prefix:
  `StringLike s3:prefix ["<prefix>/", "<prefix>/*"]`. The pipeline lists with `Prefix="<prefix>/"`
  (`*` also matches the empty string, so `<prefix>/*` alone covers it; `<prefix>/` is spelled out
  for readers). Never `<prefix>*`, which would also allow listing `<prefix>2/`.
- `InputRead`: `s3:GetObject` on `arn:aws:s3:::<bucket>/<prefix>/*`.
- `OutputList`: as `InputList`, for the output prefix (the overwrite check, `_SUCCESS` file list).
- `OutputWrite`: `s3:PutObject`, `s3:GetObject` (server-side copies when parts are published,
  reading a saved model back), `s3:DeleteObject` (staged parts, `--overwrite`) and
  `s3:AbortMultipartUpload` on `arn:aws:s3:::<bucket>/<prefix>/*`.

A bucket root (`s3://bucket`) grants `arn:aws:s3:::bucket/*` and an unconditioned `s3:ListBucket`.
Input and output in the same bucket still get separate statements: IAM allows a request when any
statement allows it, so each `s3:ListBucket` statement keeps its own prefix condition and the input
prefix stays read-only. `*`, `?` and `$` in a prefix are written as the IAM policy variables `${*}`,
`${?}` and `${$}`, so they match literally instead of acting as wildcards.

Nothing here grants the bare key `<prefix>` (no slash) or a listing of `Prefix=<prefix>`, which would
reveal the keys of `<prefix>2/`. So a HeadObject on `<prefix>` answers 403, and so does a HeadObject on
a missing key below it (S3 answers 404 only with an s3:ListBucket that applies); readers of S3 must
treat that 403 as "absent" where they only probe for existence (see `storage.Store.exists`).
"""
from __future__ import annotations

import json
from typing import Any

from fruitpipe import storage

VERSION = "2012-10-17"
READ_ACTIONS = ["s3:GetObject"]
WRITE_ACTIONS = sorted(["s3:PutObject", "s3:GetObject", "s3:DeleteObject", "s3:AbortMultipartUpload"])


def policy(input_uri: str, output_uri: str, partition: str = "aws") -> dict[str, Any]:
    """The policy document for a run reading `input_uri` and writing `output_uri` (both s3://)."""
    source = _location(input_uri, "input")
    target = _location(output_uri, "output")
    return {
        "Version": VERSION,
        "Statement": [
            _list_statement("InputList", source, partition),
            _object_statement("InputRead", source, READ_ACTIONS, partition),
            _list_statement("OutputList", target, partition),
            _object_statement("OutputWrite", target, WRITE_ACTIONS, partition),
        ],
    }


def policy_json(input_uri: str, output_uri: str, partition: str = "aws") -> str:
    """`policy()` as the JSON text to paste into IAM: sorted keys, 2-space indent, deterministic."""
    return json.dumps(policy(input_uri, output_uri, partition), indent=2, sort_keys=True, ensure_ascii=False)


def _location(uri: str, role: str) -> storage.S3Location:
    if uri and not storage.is_local(uri) and uri.split("://", 1)[0] in ("s3", "s3a"):
        bucket = uri.split("://", 1)[1].partition("/")[0]
        if bucket and all(char not in bucket for char in "*?$: "):  # a wildcard in a bucket ARN would widen it
            return storage.parse_s3(uri)
    raise ValueError(f"--{role} must be an s3://bucket/prefix URI for an IAM policy, got {storage.redact(uri)!r}")


def _escape(text: str) -> str:
    """Make IAM's wildcard and variable characters literal (policy variables need Version 2012-10-17)."""
    return "".join({"*": "${*}", "?": "${?}", "$": "${$}"}.get(char, char) for char in text)


def _list_statement(sid: str, location: storage.S3Location, partition: str) -> dict[str, Any]:
    statement: dict[str, Any] = {
        "Sid": sid,
        "Effect": "Allow",
        "Action": ["s3:ListBucket"],
        "Resource": f"arn:{partition}:s3:::{location.bucket}",
    }
    if location.key:
        folder = _escape(location.prefix)  # "<prefix>/"
        statement["Condition"] = {"StringLike": {"s3:prefix": sorted([folder, folder + "*"])}}
    return statement


def _object_statement(sid: str, location: storage.S3Location, actions: list[str], partition: str) -> dict[str, Any]:
    return {
        "Sid": sid,
        "Effect": "Allow",
        "Action": list(actions),
        "Resource": f"arn:{partition}:s3:::{location.bucket}/{_escape(location.prefix)}*",
    }
