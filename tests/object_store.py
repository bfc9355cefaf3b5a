"""Real storage endpoints on loopback for the streaming tests: an S3-compatible server (moto's
server mode, a real HTTP endpoint speaking the S3 API, reached by s3fs/botocore and pyarrow
through AWS_ENDPOINT_URL like any bucket) and a plain HTTP file server that honours Range
requests and can misbehave on purpose: break the connection half way through the body of
every Nth request (a flaky endpoint) or answer 500 for ever for chosen files (a shard that keeps failing).

Both are configured the way a user configures a real store, through the standard environment
(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION, AWS_ENDPOINT_URL), which child
processes (training ranks, DataLoader workers) inherit.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


@contextlib.contextmanager
def s3_server(bucket: str = "bigan-test") -> Iterator[str]:
    """moto's S3 server on 127.0.0.1 with `bucket` created; yields its endpoint URL. The AWS
    variables point at it (and only at it: no real credentials are read) until exit."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one access-log line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint,
           "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    # fsspec caches one S3FileSystem per set of arguments, built with the endpoint of its day:
    # without clearing, a later test module's `fsspec.filesystem("s3")` calls a stopped server.
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    try:
        import fsspec

        fsspec.filesystem("s3", skip_instance_cache=True).mkdir(bucket)
        yield endpoint
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        s3fs.S3FileSystem.clear_instance_cache()
        server.stop()


class FlakyFiles:
    """What the HTTP server serves and how it fails; counters readable by the test."""

    def __init__(self, root: Path, drop_every: int = 0, broken: tuple[str, ...] = ()):
        self.root, self.drop_every, self.broken = root, drop_every, set(broken)
        self.requests = self.refused = 0
        self.dropped: list[str] = []  # names of the files whose transfer was broken
        self.lock = threading.Lock()


def _handler(files: FlakyFiles) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # quiet test output
            pass

        def _serve(self, body: bool) -> None:
            name = self.path.split("?", 1)[0].lstrip("/")
            with files.lock:
                files.requests += 1
                drop = files.drop_every and files.requests % files.drop_every == 0
                if drop:
                    files.dropped.append(name)
                files.refused += name in files.broken
            if name in files.broken:
                self._reply(500, b"broken on purpose\n", body)
                return
            path = files.root / name
            if not path.is_file() or ".." in name:
                self._reply(404, b"not found\n", body)
                return
            data = path.read_bytes()
            match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
            if match:
                start = int(match.group(1))
                end = min(int(match.group(2) or len(data) - 1), len(data) - 1)
                self._reply(206, data[start:end + 1], body,
                            {"Content-Range": f"bytes {start}-{end}/{len(data)}"}, drop)
            else:
                self._reply(200, data, body, None, drop)

        def _reply(self, status: int, data: bytes, body: bool, headers: dict | None = None,
                   drop: bool = False) -> None:
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Accept-Ranges", "bytes")
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            if body and drop:  # the connection breaks half way through the body
                self.wfile.write(data[:len(data) // 2])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
            elif body:
                self.wfile.write(data)

        def do_GET(self) -> None:
            self._serve(True)

        def do_HEAD(self) -> None:
            self._serve(False)

    return Handler


@contextlib.contextmanager
def http_server(files: FlakyFiles) -> Iterator[str]:
    """Serve `files.root` on 127.0.0.1 (threads); yields the base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(files))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
