"""An S3 fault-injecting reverse proxy for tests and benchmarks.

Stdlib only; run it as `python -m fruitpipe.devtools.faultproxy`.

    proxy = FaultProxy(upstream, slowdown_share=0.2, cut_share=0.1, fail_keys={"Banana/3_100.jpg"})
    with proxy as endpoint:          # http://127.0.0.1:PORT, give it to S3Options(endpoint_url=...)
        ...
    proxy.counts["slowdown"]         # how many faults were injected, by kind

Every request is forwarded to `upstream` (a moto server) with its method, path and query, headers
(Host as the client sent it: the client signs SigV4 for the proxy's host:port and moto does not
verify signatures) and body; responses are streamed back. Faults:

- `latency_s`: added to every request before it is forwarded.
- `slowdown_share`: share of faultable requests answered 503 SlowDown (S3 XML error body).
- `cut_share`: share of faultable GET responses sent with the full Content-Length, then the
  connection is closed after half the body.
- `fail_keys`: key substrings that always get 500 InternalError (one key failing for good).
- `deny_listing`: "bucket/prefix" strings; a listing of a prefix starting with one gets 403 AccessDenied.
- `cache_objects`: serve repeated GET object requests from memory (benchmarks: takes the upstream
  server's own cost out, leaving the client, the added latency and the proxy).

Faults apply to `fault_kinds` (default: GET object only; not listings, HEAD, PUT, DELETE).
Decisions are a pure function of (seed, method, path, attempt number of that path), so a run
draws the same faults whatever the thread scheduling.
"""
from __future__ import annotations

import contextlib
import hashlib
import http.client
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
              "transfer-encoding", "upgrade", "expect", "proxy-connection"}
CHUNK = 64 * 1024
GET_OBJECT, HEAD_OBJECT, PUT_OBJECT = "get_object", "head_object", "put_object"
DELETE, LIST, OTHER = "delete", "list", "other"


def request_kind(method: str, path: str, query: dict[str, list[str]]) -> str:
    """What an S3 path-style request does: get_object, head_object, put_object, delete, list or other."""
    bucket, _, key = unquote(path).lstrip("/").partition("/")
    if method == "GET" and bucket and not key:
        return LIST if not ({"location", "versioning", "policy", "acl", "tagging", "uploads"} & query.keys()) else OTHER
    if not key:
        return OTHER
    if "uploads" in query or "uploadId" in query or "tagging" in query or "acl" in query:
        return OTHER
    return {"GET": GET_OBJECT, "HEAD": HEAD_OBJECT, "PUT": PUT_OBJECT, "DELETE": DELETE}.get(method, OTHER)


def error_xml(code: str, message: str, resource: str, request_id: str) -> bytes:
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
            f"<Resource>{resource}</Resource><RequestId>{request_id}</RequestId></Error>").encode()


class FaultProxy:
    """A reverse proxy to an S3 endpoint that injects reproducible faults; see the module docstring."""

    def __init__(self, upstream: str, *, latency_s: float = 0.0, slowdown_share: float = 0.0,
                 cut_share: float = 0.0, fail_keys: Iterable[str] = (), deny_listing: Iterable[str] = (),
                 fault_kinds: Iterable[str] = (GET_OBJECT,), seed: int = 0, cache_objects: bool = False) -> None:
        parts = urlsplit(upstream)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"upstream must be http://host:port, got {upstream!r}")
        if slowdown_share < 0 or cut_share < 0 or slowdown_share + cut_share > 1:
            raise ValueError("slowdown_share and cut_share must be >= 0 and add up to at most 1")
        self.upstream_host, self.upstream_port = parts.hostname, parts.port or 80
        self.latency_s = latency_s
        self.slowdown_share = slowdown_share
        self.cut_share = cut_share
        self.fail_keys = frozenset(fail_keys)
        self.deny_listing = tuple(deny_listing)
        self.fault_kinds = frozenset(fault_kinds)
        self.seed = seed
        self.cache_objects = cache_objects
        self._cache: dict[str, tuple[int, str, list[tuple[str, str]], bytes]] = {}
        self.counts: Counter[str] = Counter()  # requests by kind, and faults: slowdown, cut, fail_key, denied
        self.attempts: Counter[str] = Counter()  # requests per "METHOD path"
        self.log: list[tuple[str, str, str]] = []  # (method, decoded path, outcome) of every request
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.endpoint = ""

    # ------------------------------------------------------------ lifecycle

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> str:
        proxy = self

        class Handler(_ProxyHandler):
            owner = proxy

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        server.block_on_close = False
        server.request_queue_size = 128
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="faultproxy", daemon=True)
        self._thread.start()
        self.endpoint = f"http://127.0.0.1:{server.server_address[1]}"
        return self.endpoint

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    # ------------------------------------------------------------ decisions

    def faults(self) -> dict[str, int]:
        """Faults injected so far, by kind."""
        with self._lock:
            return {name: self.counts[name] for name in ("slowdown", "cut", "fail_key", "denied")}

    def decide(self, method: str, path: str, query: dict[str, list[str]]) -> tuple[str, str]:
        """(kind, action) for one request; action is forward, slowdown, cut, fail_key or denied."""
        decoded = unquote(path)
        kind = request_kind(method, path, query)
        with self._lock:
            self.counts[kind] += 1
            self.counts["requests"] += 1
            attempt = self.attempts[f"{method} {decoded}"] = self.attempts[f"{method} {decoded}"] + 1
        action = "forward"
        if kind == LIST and self.deny_listing:
            listed = decoded.lstrip("/").rstrip("/") + "/" + query.get("prefix", [""])[0]
            if any(listed.startswith(denied) for denied in self.deny_listing):
                action = "denied"
        if action == "forward" and kind in self.fault_kinds:
            key = decoded.lstrip("/").partition("/")[2]
            if any(part in key for part in self.fail_keys):
                action = "fail_key"
            else:
                draw = self._draw(method, decoded, attempt)
                if draw < self.slowdown_share:
                    action = "slowdown"
                elif draw < self.slowdown_share + self.cut_share and method == "GET":
                    action = "cut"
        with self._lock:
            if action != "forward":
                self.counts[action] += 1
            self.log.append((method, decoded, action))
        return kind, action

    def _draw(self, method: str, path: str, attempt: int) -> float:
        digest = hashlib.sha256(f"{self.seed}|{method}|{path}|{attempt}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2 ** 64


class _ProxyHandler(BaseHTTPRequestHandler):
    owner: FaultProxy
    protocol_version = "HTTP/1.1"  # keep-alive, as S3 clients expect
    disable_nagle_algorithm = True  # headers and body are separate writes: no 40 ms delayed-ACK stalls
    timeout = 120  # idle keep-alive connections end eventually

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._handle()

    do_HEAD = do_PUT = do_POST = do_DELETE = do_GET  # noqa: N815

    def _handle(self) -> None:
        owner = self.owner
        split = urlsplit(self.path)
        query = parse_qs(split.query, keep_blank_values=True)
        body = self._request_body()
        kind, action = owner.decide(self.command, split.path, query)
        if owner.latency_s:
            time.sleep(owner.latency_s)
        request_id = f"faultproxy-{owner.counts['requests']}"
        if action == "slowdown":
            self._error(503, "SlowDown", "Please reduce your request rate.", split.path, request_id)
        elif action == "fail_key":
            self._error(500, "InternalError", "We encountered an internal error. Please try again.", split.path,
                        request_id)
        elif action == "denied":
            self._error(403, "AccessDenied", "Access Denied", split.path, request_id)
        elif owner.cache_objects and kind == GET_OBJECT and "Range" not in self.headers:
            self._cached(split.path, body, cut=action == "cut")
        else:
            if owner.cache_objects and kind in (PUT_OBJECT, DELETE):
                owner._cache.pop(split.path, None)
            self._forward(body, cut=action == "cut")

    def _request_body(self) -> bytes | None:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            pieces = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                pieces.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(pieces)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else None

    def _error(self, status: int, code: str, message: str, resource: str, request_id: str) -> None:
        payload = error_xml(code, message, resource, request_id)
        self.send_response(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("x-amz-request-id", request_id)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _cached(self, key: str, body: bytes | None, cut: bool) -> None:
        cache = self.owner._cache
        entry = cache.get(key)
        if entry is None:
            upstream, response = self._upstream(body)
            try:
                entry = (response.status, response.reason, response.getheaders(), response.read())
            finally:
                upstream.close()
            if entry[0] != 200:
                self._send_head(entry[0], entry[1], entry[2], len(entry[3]), cut)
                self._send_body(entry[3], len(entry[3]))
                return
            cache[key] = entry
        status, reason, headers, payload = entry
        self._send_head(status, reason, headers, len(payload), cut)
        self._send_body(payload, len(payload) // 2 if cut else len(payload))
        if cut:
            self.wfile.flush()
            self.close_connection = True

    def _upstream(self, body: bytes | None) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        owner = self.owner
        upstream = http.client.HTTPConnection(owner.upstream_host, owner.upstream_port, timeout=120)
        try:
            upstream.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            for name, value in self.headers.items():
                if name.lower() not in HOP_BY_HOP and name.lower() != "content-length":
                    upstream.putheader(name, value)
            if body is not None or self.command in ("PUT", "POST"):
                upstream.putheader("Content-Length", str(len(body or b"")))
            upstream.endheaders(body)
            return upstream, upstream.getresponse()
        except BaseException:
            upstream.close()
            raise

    def _send_head(self, status: int, reason: str, headers: list[tuple[str, str]], length: int, cut: bool) -> None:
        self.send_response(status, reason)
        for name, value in headers:
            if name.lower() not in HOP_BY_HOP and name.lower() not in ("content-length", "date", "server"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(length))
        if cut:
            self.send_header("Connection", "close")
        self.end_headers()

    def _send_body(self, payload: bytes, limit: int) -> None:
        if self.command != "HEAD":
            self.wfile.write(payload[:limit])

    def _forward(self, body: bytes | None, cut: bool) -> None:
        upstream, response = self._upstream(body)
        try:
            length_header = response.getheader("Content-Length")
            payload = None if length_header is not None or self.command == "HEAD" else response.read()
            length = len(payload) if payload is not None else int(length_header or 0)
            self._send_head(response.status, response.reason, response.getheaders(), length, cut)
            if self.command == "HEAD":
                return
            limit = length // 2 if cut else length
            if payload is not None:
                self._send_body(payload, limit)
            else:
                sent = 0
                while sent < limit:
                    chunk = response.read(min(CHUNK, limit - sent))
                    if not chunk:
                        break
                    self.wfile.write(chunk)
                    sent += len(chunk)
            if cut:
                self.wfile.flush()
                self.close_connection = True
        finally:
            upstream.close()


@contextlib.contextmanager
def proxy_process(upstream: str, latency_ms: float, cache: bool = False) -> Iterator[str]:
    """The proxy as its own process (no GIL shared with the client under test); yields its endpoint."""
    command = [sys.executable, "-m", "fruitpipe.devtools.faultproxy", "--upstream", upstream,
               "--latency-ms", str(latency_ms), *(["--cache-objects"] if cache else [])]
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        endpoint = process.stdout.readline().strip() if process.stdout else ""
        if not endpoint.startswith("http://"):
            raise RuntimeError(f"proxy did not start: {endpoint!r}")
        yield endpoint
    finally:
        if process.stdin:
            process.stdin.close()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def main(argv: list[str] | None = None) -> int:
    """Run a proxy as its own process (benchmarks: no GIL shared with the client under test).

    Prints the endpoint on the first stdout line, serves until stdin closes, then prints the counts as JSON."""
    import argparse
    import json

    parser = argparse.ArgumentParser(description="S3 fault-injecting reverse proxy")
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--slowdown-share", type=float, default=0.0)
    parser.add_argument("--cut-share", type=float, default=0.0)
    parser.add_argument("--fail-key", action="append", default=[])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-objects", action="store_true")
    args = parser.parse_args(argv)
    proxy = FaultProxy(args.upstream, latency_s=args.latency_ms / 1000, slowdown_share=args.slowdown_share,
                       cut_share=args.cut_share, fail_keys=args.fail_key, seed=args.seed,
                       cache_objects=args.cache_objects)
    with proxy as endpoint:
        print(endpoint, flush=True)
        sys.stdin.read()
    print(json.dumps(dict(proxy.counts)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
