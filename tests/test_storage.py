"""Storage as a value: S3Options' one wire form, and two Stores for two endpoints in one process."""
from __future__ import annotations

import json

import pytest

from fruitpipe.config import S3Options


@pytest.mark.parametrize("options", [
    S3Options(),
    S3Options(endpoint_url="http://127.0.0.1:9000", region="eu-west-3", addressing_style="virtual", read_attempts=9),
    S3Options(endpoint_url="https://minio.example:443/", addressing_style="auto", read_attempts=1),
])
def test_s3_options_round_trip_through_the_wire_form_with_every_field(options: S3Options) -> None:
    wire = options.to_wire()
    assert S3Options.from_wire(wire) == options
    assert json.loads(wire)["read_attempts"] == options.read_attempts  # lost by two of the old encodings


def test_wire_form_left_out_fields_keep_defaults_and_bad_ones_are_refused() -> None:
    assert S3Options.from_wire("{}") == S3Options()
    assert S3Options.from_wire('{"read_attempts":2}') == S3Options(read_attempts=2)
    for bad in ("", "null", "[]", '{"endpoint":"http://x"}', '{"read_attempts":"4"}', '{"read_attempts":true}',
                '{"region":3}', '{"read_attempts":0}', '{"addressing_style":"sideways"}'):
        with pytest.raises(ValueError):
            S3Options.from_wire(bad)
