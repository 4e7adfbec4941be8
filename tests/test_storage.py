"""Storage as a value: S3Options' one wire form, and two Stores for two endpoints in one process."""
from __future__ import annotations

import json
import pickle
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from fruitpipe.config import S3Options
from fruitpipe.storage import Store


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


# ---------------------------------------------------------------- two endpoints in one process

BUCKET, KEY = "same-bucket", "same/key.bin"
URI = f"s3://{BUCKET}/{KEY}"


@pytest.fixture(scope="module")
def two_servers(s3_endpoint: str):
    """The session's moto server and a second one, each holding different bytes under the same bucket/key."""
    from fruitpipe.devtools.s3server import MotoServer, client

    with MotoServer() as other:
        contents = {}
        for name, endpoint in (("first", s3_endpoint), ("second", other)):
            s3 = client(endpoint)
            s3.create_bucket(Bucket=BUCKET)
            contents[endpoint] = f"object on the {name} server ({endpoint})".encode()
            s3.put_object(Bucket=BUCKET, Key=KEY, Body=contents[endpoint])
        yield contents


def test_two_stores_for_two_endpoints_each_read_their_own_server(two_servers: dict[str, bytes]) -> None:
    """Stores are values: building or using one never changes what another reaches (a process-wide
    setting, where the last configuration wins, failed this)."""
    stores = {endpoint: Store(S3Options(endpoint_url=endpoint)) for endpoint in two_servers}
    assert len(set(two_servers.values())) == 2
    for _ in range(3):  # interleaved, in both orders
        for endpoint, store in [*stores.items(), *reversed(stores.items())]:
            assert store.read_bytes(URI) == two_servers[endpoint]
            assert store.list_files(f"s3://{BUCKET}/same", [".bin"]) == [(URI, "key.bin")]

    def read(endpoint: str) -> tuple[str, bytes]:
        return endpoint, stores[endpoint].read_bytes(URI)

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(read, [endpoint for _ in range(40) for endpoint in two_servers]))
    assert len(results) == 80 and all(data == two_servers[endpoint] for endpoint, data in results)

    first, second = stores.values()
    written = f"s3://{BUCKET}/only-on-one.txt"
    first.write_bytes(written, b"one")
    assert first.exists(written) and not second.exists(written)
    first.remove(written)
    # a task carries its store to an executor by pickling: the copy still reaches its own server
    for endpoint, store in stores.items():
        assert pickle.loads(pickle.dumps(store)).read_bytes(URI) == two_servers[endpoint]


def test_two_stores_differ_in_read_attempts_too() -> None:
    """read_attempts belongs to each store (it was lost on two of the old encodings)."""
    calls: list[int] = []

    def flaky() -> bytes:
        calls.append(1)
        raise ConnectionError("cut")

    for attempts in (1, 3):
        calls.clear()
        with pytest.raises(OSError):
            Store(S3Options(read_attempts=attempts)).with_retries(flaky, "s3://b/k")
        assert len(calls) == attempts


# ---------------------------------------------------------------- the featurizer's one S3 param

def test_featurizer_carries_every_s3_option_and_still_loads_one_saved_with_the_old_params(spark,
                                                                                         tmp_path: Path) -> None:
    from fruitpipe.ml.featurizer import ImageFeaturizer

    assert ImageFeaturizer().s3_options() == S3Options()
    options = S3Options(endpoint_url="http://127.0.0.1:9", region="eu-west-3", addressing_style="virtual",
                        read_attempts=7)
    ImageFeaturizer(s3Options=options.to_wire()).save(str(tmp_path / "new"))
    assert ImageFeaturizer.load(str(tmp_path / "new")).s3_options() == options

    # the metadata an earlier fruitpipe wrote: three separate params, no s3Options, no read_attempts
    old = tmp_path / "old"
    shutil.copytree(tmp_path / "new", old)
    for checksum in old.rglob("*.crc"):
        checksum.unlink()
    part = next((old / "metadata").glob("part-*"))
    metadata = json.loads(part.read_text())
    for section in ("paramMap", "defaultParamMap"):
        metadata[section].pop("s3Options", None)
        metadata[section].update(s3EndpointUrl="", s3Region="", s3AddressingStyle="")
    metadata["paramMap"].update(s3EndpointUrl="http://127.0.0.1:9", s3Region="eu-west-3")
    part.write_text(json.dumps(metadata) + "\n")
    assert ImageFeaturizer.load(str(old)).s3_options() == S3Options(endpoint_url="http://127.0.0.1:9",
                                                                    region="eu-west-3")


def test_fanned_listing_equals_the_sequential_one_and_lists_each_class_on_its_own(s3_endpoint: str) -> None:
    """Fruits 360 keys plus the odd ones (a root file, a file straight in Training/, a deeper folder, a
    folder marker, more than one page in one class): the fanned listing finds exactly the keys, versions
    and sizes the plain paginated one does, with one full listing per class folder; a listing that fits
    in one page is not fanned out."""
    import boto3

    from fruitpipe.storage import S3Location

    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    client.create_bucket(Bucket="fanned")
    keys = [f"photos/{split}/{label}/{index:04d}.jpg" for split in ("Training", "Test")
            for label in ("Apple Red", "Kiwi", "Lemon") for index in range(3)]
    keys += [f"photos/Training/Kiwi/many/{index:04d}.jpg" for index in range(1005)]  # two pages in one class
    keys += ["photos/readme.txt", "photos/Training/loose.jpg", "photos/Training/Kiwi/", "other/outside.jpg"]
    for key in keys:
        client.put_object(Bucket="fanned", Key=key, Body=key.encode())
    store = Store(S3Options(endpoint_url=s3_endpoint))
    location = S3Location("fanned", "photos")
    sequential = {(item["Key"], item["Size"], item["ETag"].strip('"')) for item in store.list_objects(location)}
    listed: list[str] = []
    original = Store.list_objects

    def recording(self: Store, where: S3Location):
        listed.append(where.prefix)
        return original(self, where)

    Store.list_objects = recording  # type: ignore[method-assign]
    try:
        fanned = [row for table in store.object_tables(location)
                  for row in zip(*(table.column(name).to_pylist() for name in ("key", "size", "etag")), strict=True)]
        small = [key for table in store.object_tables(S3Location("fanned", "photos/Test"))
                 for key in table.column("key").to_pylist()]
    finally:
        Store.list_objects = original  # type: ignore[method-assign]
    assert len(fanned) == len(set(fanned)) and set(fanned) == sequential
    assert len(sequential) == len(keys) - 1  # all but other/outside.jpg
    assert sorted(small) == sorted(key for key in keys if key.startswith("photos/Test/"))  # one page: not fanned
    assert sorted(listed) == sorted(f"photos/{split}/{label}/" for split in ("Training", "Test")
                                    for label in ("Apple Red", "Kiwi", "Lemon"))
    walked = sorted(relative for _, relative, _ in store._walk("s3://fanned/photos"))
    assert walked == sorted(key[len("photos/"):] for key in keys if key.startswith("photos/") and not key.endswith("/"))
    one_ahead = {row for table in store.object_tables(location, threads=1)  # one folder listed ahead at most
                 for row in zip(*(table.column(name).to_pylist() for name in ("key", "size", "etag")), strict=True)}
    assert one_ahead == sequential
    # Training/loose.jpg is met before the class folders (not in key order): the table is sorted all the same;
    # one class folder alone comes in key order
    for prefix in ("photos", "photos/Training/Kiwi"):
        relatives = store.list_table(f"s3://fanned/{prefix}", (".jpg",)).column("relative").to_pylist()
        assert relatives == sorted(key[len(prefix) + 1:] for key in keys
                                   if key.startswith(prefix + "/") and key.endswith(".jpg"))
