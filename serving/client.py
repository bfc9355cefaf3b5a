"""A minimal client of `POST /v1/generate` (standard library only), and the smoke run `make demo`
ends with: start `bigan serve` on a free loopback port, fetch one grid over HTTP, stop it.

    python -m serving.client --url http://127.0.0.1:8000 --class 3 --n 16 --out grid.png
    python -m serving.client --start runs/demo/model.onnx --out runs/demo/served.png
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path


def wait_ready(url: str, timeout_s: float, server: subprocess.Popen | None = None) -> None:
    """Poll /readyz until it answers 200 (or the server process exits, or time runs out)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if server is not None and server.poll() is not None:
            raise RuntimeError(f"the server exited with code {server.returncode} before it was ready")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url}/readyz did not answer 200 within {timeout_s:.0f} s")
        time.sleep(0.2)


def generate(url: str, cls: int | str, n: int, seed: int, truncation: float | None = None) -> bytes:
    """A PNG grid of n images of class `cls` (id or name); image i uses seed + i."""
    body = {"class": cls, "n": n, "seed": seed, "format": "png"}
    if truncation is not None:
        body["truncation"] = truncation
    req = urllib.request.Request(f"{url}/v1/generate", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.read()
    except urllib.error.HTTPError as e:
        raise RuntimeError(f"{e.code}: {e.read().decode(errors='replace')}") from e


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="a running server, e.g. http://127.0.0.1:8000")
    where.add_argument("--start", metavar="MODEL", help="start `bigan serve MODEL` briefly on 127.0.0.1")
    p.add_argument("--class", dest="cls", default="0", help="class id or name (default 0)")
    p.add_argument("--n", type=int, default=16, help="images (default 16)")
    p.add_argument("--seed", type=int, default=0, help="seed of image 0 (default 0)")
    p.add_argument("--truncation", type=float, default=None, help="psi (default: the model's)")
    p.add_argument("--out", default="grid.png", help="where to save the PNG grid")
    p.add_argument("--timeout", type=float, default=120, help="seconds to wait for the server")
    args = p.parse_args(argv)
    cls = int(args.cls) if args.cls.isdigit() else args.cls
    server, url = None, args.url
    if args.start:
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        server = subprocess.Popen([sys.executable, "-m", "bigan.cli", "serve", args.start,
                                   "--host", "127.0.0.1", "--port", str(port)])
    try:
        wait_ready(url, args.timeout, server)
        t = time.perf_counter()
        png = generate(url, cls, args.n, args.seed, args.truncation)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_bytes(png)
        print(f"{args.n} images of class {cls!r} from {url} in {time.perf_counter() - t:.2f} s -> {args.out}")
    except (RuntimeError, TimeoutError) as e:
        print(f"serving.client: error: {e}", file=sys.stderr)
        return 1
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
