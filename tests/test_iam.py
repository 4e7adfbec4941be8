"""`fruitpipe iam-policy`: exact documents, the `prefix*` trap, bucket roots, same bucket, refusals."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from fnmatch import fnmatchcase
from typing import Any

import pytest

from fruitpipe.ops import iam

EXPECTED = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Sid": "InputList",
            "Effect": "Allow",
            "Action": ["s3:ListBucket"],
            "Resource": "arn:aws:s3:::fruit-in",
            "Condition": {"StringLike": {"s3:prefix": ["datasets/fruits 360/", "datasets/fruits 360/*"]}},
        },
        {
            "Sid": "InputRead",
            "Effect": "Allow",
            "Action": ["s3:GetObject"],
            "Resource": "arn:aws:s3:::fruit-in/datasets/fruits 360/*",
        },
        {
            "Sid": "OutputList",
            "Effect": "Allow",
            "Action": ["s3:ListBucket"],
            "Resource": "arn:aws:s3:::fruit-out",
            "Condition": {"StringLike": {"s3:prefix": ["runs/r1/", "runs/r1/*"]}},
        },
        {
            "Sid": "OutputWrite",
            "Effect": "Allow",
            "Action": ["s3:AbortMultipartUpload", "s3:DeleteObject", "s3:GetObject", "s3:PutObject"],
            "Resource": "arn:aws:s3:::fruit-out/runs/r1/*",
        },
    ],
}


def allowed(document: dict[str, Any], action: str, resource: str, prefix: str | None = None) -> bool:
    """A tiny policy simulator: Allow statements only; IAM wildcards via fnmatch; StringLike on s3:prefix
    (an absent s3:prefix never satisfies the condition)."""
    for statement in document["Statement"]:
        if statement["Effect"] != "Allow" or action not in statement["Action"]:
            continue
        if not fnmatchcase(resource, statement["Resource"]):
            continue
        patterns = statement.get("Condition", {}).get("StringLike", {}).get("s3:prefix")
        if patterns is not None and (prefix is None or not any(fnmatchcase(prefix, p) for p in patterns)):
            continue
        return True
    return False


def obj(bucket: str, key: str) -> str:
    return f"arn:aws:s3:::{bucket}/{key}"


def patterns(document: dict[str, Any]) -> list[str]:
    found = []
    for statement in document["Statement"]:
        found.append(statement["Resource"])
        found += statement.get("Condition", {}).get("StringLike", {}).get("s3:prefix", [])
    return found


def test_exact_document() -> None:
    assert iam.policy("s3://fruit-in/datasets/fruits 360", "s3://fruit-out/runs/r1") == EXPECTED
    assert iam.policy("s3://fruit-in/datasets/fruits 360/", "s3://fruit-out/runs/r1/") == EXPECTED


def test_json_is_deterministic_and_sorted() -> None:
    text = iam.policy_json("s3://fruit-in/datasets/fruits 360", "s3://fruit-out/runs/r1")
    assert text == iam.policy_json("s3://fruit-in/datasets/fruits 360", "s3://fruit-out/runs/r1")
    assert json.loads(text) == EXPECTED
    assert text == json.dumps(EXPECTED, indent=2, sort_keys=True)
    sids = [s["Sid"] for s in EXPECTED["Statement"]]
    assert len(set(sids)) == len(sids) and all(re.fullmatch(r"[A-Za-z0-9]+", sid) for sid in sids)


def test_prefix_star_trap() -> None:
    document = iam.policy("s3://data/prefix", "s3://data/out")
    for pattern in patterns(document):
        assert not re.search(r"[^/]\*", pattern), pattern  # every * comes right after a /
    assert allowed(document, "s3:GetObject", obj("data", "prefix/x.jpg"))
    assert not allowed(document, "s3:GetObject", obj("data", "prefix2/x"))
    assert not allowed(document, "s3:GetObject", obj("data", "prefix"))
    assert allowed(document, "s3:ListBucket", "arn:aws:s3:::data", prefix="prefix/")
    assert allowed(document, "s3:ListBucket", "arn:aws:s3:::data", prefix="prefix/Training/")
    assert not allowed(document, "s3:ListBucket", "arn:aws:s3:::data", prefix="prefix2/")
    assert not allowed(document, "s3:ListBucket", "arn:aws:s3:::data", prefix="")
    assert not allowed(document, "s3:ListBucket", "arn:aws:s3:::data")
    assert allowed(document, "s3:PutObject", obj("data", "out/features/part-00000.parquet"))
    assert not allowed(document, "s3:PutObject", obj("data", "out2/x"))
    assert not allowed(document, "s3:ListBucket", "arn:aws:s3:::data", prefix="out2/")


def test_simulator_catches_a_glued_star() -> None:
    """The checks above can fail: a `prefix*` policy is flagged by both of them."""
    wrong = {"Statement": [{"Effect": "Allow", "Action": ["s3:GetObject"], "Resource": "arn:aws:s3:::data/prefix*"}]}
    assert allowed(wrong, "s3:GetObject", obj("data", "prefix2/x"))
    assert any(re.search(r"[^/]\*", pattern) for pattern in patterns(wrong))


def test_same_bucket_keeps_input_read_only() -> None:
    document = iam.policy("s3://shared/in", "s3://shared/out")
    lists = [s for s in document["Statement"] if s["Action"] == ["s3:ListBucket"]]
    assert [(s["Sid"], s["Resource"], s["Condition"]["StringLike"]["s3:prefix"]) for s in lists] == [
        ("InputList", "arn:aws:s3:::shared", ["in/", "in/*"]),
        ("OutputList", "arn:aws:s3:::shared", ["out/", "out/*"]),
    ]
    assert allowed(document, "s3:GetObject", obj("shared", "in/a.jpg"))
    assert allowed(document, "s3:GetObject", obj("shared", "out/manifest.json"))
    for action in ("s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"):
        assert not allowed(document, action, obj("shared", "in/a.jpg"))
        assert allowed(document, action, obj("shared", "out/a"))
    assert not allowed(document, "s3:GetObject", obj("shared", "elsewhere/a.jpg"))


def test_bucket_roots() -> None:
    document = iam.policy("s3://in-bucket", "s3://out-bucket/")
    assert document["Statement"] == [
        {"Sid": "InputList", "Effect": "Allow", "Action": ["s3:ListBucket"], "Resource": "arn:aws:s3:::in-bucket"},
        {"Sid": "InputRead", "Effect": "Allow", "Action": ["s3:GetObject"], "Resource": "arn:aws:s3:::in-bucket/*"},
        {"Sid": "OutputList", "Effect": "Allow", "Action": ["s3:ListBucket"], "Resource": "arn:aws:s3:::out-bucket"},
        {"Sid": "OutputWrite", "Effect": "Allow",
         "Action": ["s3:AbortMultipartUpload", "s3:DeleteObject", "s3:GetObject", "s3:PutObject"],
         "Resource": "arn:aws:s3:::out-bucket/*"},
    ]
    assert allowed(document, "s3:GetObject", obj("in-bucket", "Training/Apple/1.jpg"))
    assert not allowed(document, "s3:GetObject", obj("in-bucket2", "x"))
    assert not allowed(document, "s3:PutObject", obj("in-bucket", "x"))


def test_wildcard_characters_in_a_prefix_are_literal() -> None:
    document = iam.policy("s3://b/odd*name?$x", "s3://b/out")
    assert document["Statement"][1]["Resource"] == "arn:aws:s3:::b/odd${*}name${?}${$}x/*"
    assert document["Statement"][0]["Condition"]["StringLike"]["s3:prefix"] == [
        "odd${*}name${?}${$}x/", "odd${*}name${?}${$}x/*"]


@pytest.mark.parametrize("uri", ["/data/fruits", "fruits", "file:///data/fruits", "gs://bucket/p",
                                 "https://bucket.s3.amazonaws.com/p", "s3://", ""])
def test_non_s3_refused(uri: str) -> None:
    with pytest.raises(ValueError, match=r"s3://bucket"):
        iam.policy(uri, "s3://out/p")
    with pytest.raises(ValueError, match=r"--output"):
        iam.policy("s3://in/p", uri)


def test_cli_prints_the_policy_and_refuses_local_paths() -> None:
    command = [sys.executable, "-m", "fruitpipe.cli", "iam-policy"]
    ok = subprocess.run([*command, "--input", "s3://fruit-in/datasets/fruits 360",
                         "--output", "s3://fruit-out/runs/r1"], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout) == EXPECTED
    bad = subprocess.run([*command, "--input", "/data/fruits", "--output", "s3://out/p"], capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode != 0 and bad.stdout == ""
    assert bad.stderr.strip().splitlines() == [
        "fruitpipe iam-policy: error: --input must be an s3://bucket/prefix URI for an IAM policy, got '/data/fruits'"]
