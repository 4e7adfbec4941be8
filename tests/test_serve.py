"""`fruitpipe serve` as a real uvicorn process on 127.0.0.1, called over HTTP with httpx.

Predictions must equal the bundle's own in-process predictions for the same bytes; every kind of
bad request must get the right 4xx with a JSON {"error": ...} body and leave the server serving.
"""
from __future__ import annotations

import http.client
import json
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import ClassVar

import httpx
import numpy as np
import pytest
import uvicorn
from PIL import Image

from badimages import corrupt_idat_png, encode, header_bomb_png, jpeg_bytes
from fruitpipe.devtools.serveprocess import running_server
from fruitpipe.recognise.bundle import Answer, Bundle, Prediction
from fruitpipe.recognise.serve import bind_socket, create_app
from helpers import fruitpipe_cli

pytestmark = pytest.mark.slow
UPLOAD_LIMIT_MB = 2  # the server under test runs with --max-upload-mb 2: small enough to test cheaply
UPLOAD_LIMIT = UPLOAD_LIMIT_MB * 2**20
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def server(trained_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_server(trained_bundle, tmp_path_factory.mktemp("serve"), "--max-upload-mb", str(UPLOAD_LIMIT_MB),
                        "--concurrency", "2") as server_process:
        yield server_process.base_url


@pytest.fixture(scope="module")
def bundle(trained_bundle: Path) -> Bundle:
    return Bundle.load(trained_bundle)


@pytest.fixture(scope="module")
def good_images(sample_dir: Path) -> dict[str, tuple[bytes, str]]:
    """Name -> (bytes, content type): sample JPEGs of several classes, a PNG, a grayscale JPEG, an RGBA PNG."""
    photos = [sorted((sample_dir / "Test" / name).glob("*.jpg"))[0] for name in ("Banana", "Cherry", "Kiwi", "Lemon")]
    images = {f"{p.parent.name}.jpg": (p.read_bytes(), "image/jpeg") for p in photos}
    banana = Image.open(photos[0])
    images["banana.png"] = (encode(banana, "PNG"), "image/png")
    images["banana_gray.jpg"] = (encode(banana.convert("L"), "JPEG", quality=92), "image/jpeg")
    images["banana_rgba.png"] = (encode(banana.convert("RGBA"), "PNG"), "image/png")
    images["synthetic.jpg"] = (jpeg_bytes(160, 120, seed=4), "image/jpeg")
    return images


def predict(base_url: str, name: str, data: bytes, content_type: str = "image/jpeg", **params) -> httpx.Response:
    return httpx.post(f"{base_url}/predict", params=params, files={"file": (name, data, content_type)}, timeout=120)


def assert_same_predictions(served: list[dict], expected: list) -> None:
    assert [p["label"] for p in served] == [p.label for p in expected]
    assert np.allclose([p["probability"] for p in served], [p.probability for p in expected], rtol=0, atol=TOLERANCE)


def assert_still_serving(base_url: str, bundle: Bundle, good: bytes) -> None:
    assert httpx.get(f"{base_url}/health", timeout=30).status_code == 200
    response = predict(base_url, "again.jpg", good)
    assert response.status_code == 200, response.text
    assert_same_predictions(response.json()["predictions"], bundle.predict_bytes(good))


@pytest.mark.parametrize("name", ["Banana.jpg", "Cherry.jpg", "Kiwi.jpg", "Lemon.jpg", "banana.png",
                                  "banana_gray.jpg", "banana_rgba.png", "synthetic.jpg"])
def test_prediction_equals_in_process_bundle(server: str, bundle: Bundle, good_images, name: str) -> None:
    data, content_type = good_images[name]
    response = predict(server, name, data, content_type)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["filename"] == name and body["bytes"] == len(data)
    assert len(body["predictions"]) == 5
    assert_same_predictions(body["predictions"], bundle.predict_bytes(data, top_k=5))
    assert body["unknown"] is bundle.answer_bytes(data).unknown  # the bundle's own threshold (no --threshold)
    assert body["unknown"] is (body["predictions"][0]["probability"] < bundle.threshold)


def test_sample_photos_are_recognised(server: str, good_images) -> None:
    """The bundle was trained on the sample's Training split; its Test photos of these classes are easy."""
    for name in ("Banana.jpg", "Cherry.jpg", "Kiwi.jpg", "Lemon.jpg"):
        response = predict(server, name, good_images[name][0])
        assert response.json()["predictions"][0]["label"] == name.removesuffix(".jpg")


def test_top_k_full_distribution_and_cap(server: str, bundle: Bundle, good_images) -> None:
    data = good_images["Cherry.jpg"][0]
    answer = predict(server, "c.jpg", data, top_k=len(bundle.classes)).json()
    everything = answer["predictions"]
    assert sorted(p["label"] for p in everything) == sorted(bundle.classes)
    probabilities = [p["probability"] for p in everything]
    assert probabilities == sorted(probabilities, reverse=True)
    # the fruit and "not a fruit" (the bundled outlier photos' class) share the probability
    assert sum(probabilities) + answer["not_fruit"] == pytest.approx(1.0, abs=1e-6)
    assert answer["not_fruit"] == pytest.approx(float(bundle.scores_of_pixels([bundle.pixels(data)]).outlier[0]),
                                                abs=TOLERANCE)
    expected = bundle.probabilities([data])[0]  # the full row, independent of the top-k path
    by_label = dict(zip(bundle.classes, expected, strict=True))
    assert all(abs(p["probability"] - by_label[p["label"]]) <= TOLERANCE for p in everything)
    capped = predict(server, "c.jpg", data, top_k=1000).json()["predictions"]
    assert [p["label"] for p in capped] == [p["label"] for p in everything]
    assert len(predict(server, "c.jpg", data, top_k=1).json()["predictions"]) == 1


def test_concurrent_requests_all_succeed_and_match(server: str, bundle: Bundle, good_images) -> None:
    names = sorted(good_images) * 2  # 16 requests, 16 threads
    expected = {name: bundle.predict_bytes(good_images[name][0]) for name in good_images}

    def one(name: str) -> tuple[str, httpx.Response]:
        data, content_type = good_images[name]
        return name, predict(server, name, data, content_type)

    with ThreadPoolExecutor(max_workers=len(names)) as pool:
        results = list(pool.map(one, names))
    assert len(results) == 16
    for name, response in results:
        assert response.status_code == 200, (name, response.text)
        assert_same_predictions(response.json()["predictions"], expected[name])


def multipart(field: str, filename: str | None, data: bytes, boundary: str = "fruitpipe-test-boundary") -> bytes:
    disposition = f'form-data; name="{field}"' + (f'; filename="{filename}"' if filename is not None else "")
    return (f"--{boundary}\r\nContent-Disposition: {disposition}\r\nContent-Type: application/octet-stream\r\n\r\n"
            .encode() + data + f"\r\n--{boundary}--\r\n".encode())


MULTIPART = "multipart/form-data; boundary=fruitpipe-test-boundary"


def chunked(body: bytes, size: int = 64 * 1024) -> Iterator[bytes]:
    """A generator body: httpx sends it with Transfer-Encoding: chunked, no Content-Length."""
    for start in range(0, len(body), size):
        yield body[start:start + size]


def oversized_jpeg(limits: int = 1) -> bytes:
    """A valid JPEG padded past `limits` x the upload limit: decoders ignore trailing bytes, only the size is wrong."""
    return jpeg_bytes() + b"\0" * (UPLOAD_LIMIT * limits)


BAD_REQUESTS = {
    # name: (how to send it, expected status, a word of the error)
    # just over: the body fits the multipart allowance, the photo itself is measured after parsing
    "too large by a few bytes": (lambda url: httpx.post(url, files={"file": ("big.jpg", oversized_jpeg(),
                                                                             "image/jpeg")}, timeout=120),
                                 413, "too large"),
    # refused from Content-Length, before the body is read
    "too large (Content-Length)": (lambda url: httpx.post(url, files={"file": ("big.jpg", oversized_jpeg(3),
                                                                               "image/jpeg")}, timeout=120),
                                   413, "too large"),
    # no length given: refused by the byte count while the body streams in
    "too large (chunked, no length)": (lambda url: httpx.post(url, content=chunked(multipart("file", "big.jpg",
                                                              oversized_jpeg(3))), headers={"content-type": MULTIPART},
                                                              timeout=120), 413, "too large"),
    "not an image": (lambda url: httpx.post(url, files={"file": ("notes.jpg", b"this is text, not a photo\n",
                                                                 "image/jpeg")}, timeout=60), 422, "not an image"),
    "truncated": (lambda url: httpx.post(url, files={"file": ("half.jpg", jpeg_bytes()[:1200], "image/jpeg")},
                                         timeout=60), 422, "truncated"),
    "corrupt pixels": (lambda url: httpx.post(url, files={"file": ("bad.png", corrupt_idat_png(), "image/png")},
                                              timeout=60), 422, "corrupt"),
    "decompression bomb": (lambda url: httpx.post(url, files={"file": ("bomb.png", header_bomb_png(), "image/png")},
                                                  timeout=60), 422, "decompression bomb"),
    "empty file": (lambda url: httpx.post(url, files={"file": ("empty.jpg", b"", "image/jpeg")}, timeout=60),
                   422, "empty"),
    "missing field": (lambda url: httpx.post(url, files={"photo": ("a.jpg", jpeg_bytes(), "image/jpeg")}, timeout=60),
                      422, "missing"),
    "field is text, not a file": (lambda url: httpx.post(url, content=multipart("file", None, b"hello"),
                                                         headers={"content-type": MULTIPART}, timeout=60),
                                  422, "file upload"),
    "text/plain body": (lambda url: httpx.post(url, content=b"hello", headers={"content-type": "text/plain"},
                                               timeout=60), 415, "multipart/form-data"),
    "application/json body": (lambda url: httpx.post(url, json={"file": "banana.jpg"}, timeout=60),
                              415, "multipart/form-data"),
    "raw image body": (lambda url: httpx.post(url, content=jpeg_bytes(), headers={"content-type": "image/jpeg"},
                                              timeout=60), 415, "multipart/form-data"),
    "no body at all": (lambda url: httpx.post(url, timeout=60), 415, "multipart/form-data"),
    "multipart without boundary": (lambda url: httpx.post(url, content=b"--x\r\n",
                                                          headers={"content-type": "multipart/form-data"},
                                                          timeout=60), 400, "boundary"),
    "garbled multipart": (lambda url: httpx.post(url, content=b"no boundary anywhere in here",
                                                 headers={"content-type": MULTIPART}, timeout=60), 400, "multipart"),
    "top_k zero": (lambda url: httpx.post(url, params={"top_k": 0}, files={"file": ("a.jpg", jpeg_bytes(),
                                                                                    "image/jpeg")}, timeout=60),
                   422, "top_k"),
    "top_k not a number": (lambda url: httpx.post(url, params={"top_k": "lots"},
                                                  files={"file": ("a.jpg", jpeg_bytes(), "image/jpeg")}, timeout=60),
                           422, "top_k"),
    "GET instead of POST": (lambda url: httpx.get(url, timeout=60), 405, "not allowed"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_request_gets_4xx_json_and_server_keeps_serving(server: str, bundle: Bundle, good_images,
                                                            case: str) -> None:
    send, status, words = BAD_REQUESTS[case]
    response = send(f"{server}/predict")
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert isinstance(error, str) and words.lower() in error.lower(), error
    assert_still_serving(server, bundle, good_images["Banana.jpg"][0])


def test_declared_oversize_is_refused_before_the_body_is_sent(server: str, bundle: Bundle, good_images) -> None:
    """Content-Length says 1 TB and no body follows: the answer must come from the headers alone."""
    host, port = server.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        connection.putrequest("POST", "/predict")
        connection.putheader("Content-Type", MULTIPART)
        connection.putheader("Content-Length", str(10**12))
        connection.endheaders()  # headers only: not one byte of the body
        response = connection.getresponse()
        status, body = response.status, json.loads(response.read())
    finally:
        connection.close()
    assert status == 413 and "too large" in body["error"], body
    assert_still_serving(server, bundle, good_images["Banana.jpg"][0])


def test_file_just_under_the_limit_is_accepted(server: str, bundle: Bundle) -> None:
    """The limit applies to the photo, not to the multipart envelope around it."""
    noise = np.random.default_rng(0).integers(0, 256, (830, 830, 3), dtype=np.uint8)
    data = encode(Image.fromarray(noise), "PNG")
    assert UPLOAD_LIMIT - 64 * 1024 < len(data) <= UPLOAD_LIMIT, len(data)
    response = predict(server, "noise.png", data, "image/png")
    assert response.status_code == 200, response.text
    assert_same_predictions(response.json()["predictions"], bundle.predict_bytes(data))


def test_unknown_path_is_json_404(server: str) -> None:
    response = httpx.get(f"{server}/nope", timeout=30)
    assert response.status_code == 404 and "error" in response.json()


def test_health_describes_the_bundle(server: str, bundle: Bundle) -> None:
    health = httpx.get(f"{server}/health", timeout=30).json()
    described = bundle.describe()
    assert health["status"] == "ok"
    assert health["classes"] == bundle.classes
    for key in ("model", "weights_sha256", "onnx_sha256", "k", "feature_dim"):
        assert health[key] == described[key]
    assert health["max_upload_bytes"] == UPLOAD_LIMIT
    assert (health["threshold"], health["temperature"]) == (bundle.threshold, bundle.temperature)
    assert health["tta"] == bundle.tta == 1


def test_openapi_documents_predict_and_docs_page_is_off(server: str) -> None:
    document = httpx.get(f"{server}/openapi.json", timeout=30).json()
    predict_operation = document["paths"]["/predict"]["post"]
    schema = predict_operation["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert schema["required"] == ["file"] and schema["properties"]["file"]["format"] == "binary"
    assert {"413", "415", "422"} <= set(predict_operation["responses"])
    assert "/health" in document["paths"]
    assert httpx.get(f"{server}/docs", timeout=30).status_code == 404  # it would load Swagger UI from a CDN


class BlockingBundle:
    """Stands in for a bundle whose inference holds a worker thread until released."""

    classes: ClassVar[list[str]] = ["Apple", "Banana"]

    def __init__(self) -> None:
        self.inside, self.release = threading.Event(), threading.Event()

    def answer_bytes(self, data: bytes, top_k: int = 5) -> Answer:
        self.inside.set()
        self.release.wait(timeout=120)
        return Answer((Prediction("Banana", 1.0), Prediction("Apple", 0.0))[:top_k])

    def describe(self) -> dict:
        return {"model": "blocking stand-in", "classes": self.classes}


def test_health_answers_while_an_inference_is_running() -> None:
    """Inference runs in a worker thread: the event loop (here /health) is free while it works."""
    fake = BlockingBundle()
    server = uvicorn.Server(uvicorn.Config(create_app(fake), log_level="warning"))
    sock = bind_socket("127.0.0.1", 0)
    base_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(predict, base_url, "a.jpg", jpeg_bytes())
            assert fake.inside.wait(timeout=120), "the prediction never started"
            health = httpx.get(f"{base_url}/health", timeout=120)
            assert health.status_code == 200 and health.json()["model"] == "blocking stand-in"
            assert not pending.done()  # /health was answered while the inference was still held
            fake.release.set()
            assert pending.result().json()["predictions"][0] == {"label": "Banana", "probability": 1.0}
    finally:
        fake.release.set()
        server.should_exit = True
        thread.join(timeout=60)


fruitpipe = fruitpipe_cli


def test_serve_missing_model_dir_is_one_line(tmp_path: Path) -> None:
    result = fruitpipe("serve", "--model", str(tmp_path / "no-such-model"))
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        f"fruitpipe serve: error: model folder not found: {tmp_path / 'no-such-model'}"]


def test_serve_folder_without_bundle_is_one_line(tmp_path: Path) -> None:
    result = fruitpipe("serve", "--model", str(tmp_path))
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fruitpipe serve: error: no fruitpipe bundle in"), result.stderr


def test_serve_busy_port_is_one_line(trained_bundle: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        result = fruitpipe("serve", "--model", str(trained_bundle), "--port", str(port))
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert "Traceback" not in result.stderr, result.stderr
    assert len(errors) == 1 and errors[0].startswith("fruitpipe serve: error:"), result.stderr


@pytest.mark.parametrize("flag", [["--port", "70000"], ["--max-upload-mb", "0"], ["--concurrency", "0"]])
def test_serve_bad_flag_is_one_line(tmp_path: Path, flag: list[str]) -> None:
    result = fruitpipe("serve", "--model", str(tmp_path), *flag)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
