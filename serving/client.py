"""A minimal client of `POST /v1/generate` (standard library only), and the smoke run `make demo`
ends with: start `bigan serve` on a free loopback port, fetch one grid over HTTP, stop it.

    python -m serving.client --url http://127.0.0.1:8000 --class 3 --n 16 --out grid.png
    python -m serving.client --start runs/demo/model.onnx --out runs/demo/served.png

`free_port` and `started_server` are also how the tests and benches pick a port and start a real
server: they start it the way `make demo` does, and there is one copy of the wait-until-ready
and stop-it-for-sure logic (here, because `--start` is product code and the rest only reuses it).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO, Iterator, NamedTuple


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


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on `host` right now (the OS picks it; another process may take it before
    it is bound again, which on a test machine's loopback does not happen in practice)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class StartedServer(NamedTuple):
    url: str  # http://HOST:PORT
    port: int
    process: subprocess.Popen


@contextlib.contextmanager
def started_server(model: str | Path, *serve_args: str, host: str = "127.0.0.1",
                   timeout_s: float = 120, output: IO | None = None,
                   cwd: str | Path | None = None) -> Iterator[StartedServer]:
    """`bigan serve MODEL --host HOST --port <free> *serve_args` in a subprocess, ready (/readyz
    answers 200) when this yields; terminated (killed after 30 s) on exit. The server's stdout
    and stderr go to `output` (a file opened for writing; None: this process's own), and when it
    exits early or is not ready in `timeout_s` the RuntimeError/TimeoutError quotes the end of
    that file. `cwd`: where it runs (a checkout, to serve its own code with `python -m`)."""
    port = free_port(host)
    url = f"http://{host}:{port}"
    process = subprocess.Popen([sys.executable, "-m", "bigan.cli", "serve", str(model), "--host", host,
                                "--port", str(port), *serve_args],
                               stdout=output, stderr=subprocess.STDOUT if output else None, cwd=cwd)
    try:
        try:
            wait_ready(url, timeout_s, process)
        except (RuntimeError, TimeoutError) as e:
            if output is None:
                raise
            output.flush()
            raise type(e)(f"{e}; its output ends:\n{Path(output.name).read_text()[-4000:]}") from None
        yield StartedServer(url, port, process)
    finally:
        stop_process(process, grace_s=30)


def stop_process(process: subprocess.Popen, grace_s: float) -> None:
    """SIGTERM, then SIGKILL if `process` has not exited within `grace_s` seconds."""
    process.terminate()
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


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
    try:
        with contextlib.ExitStack() as stack:
            if args.start:
                url = stack.enter_context(started_server(args.start, timeout_s=args.timeout)).url
            else:
                url = args.url
                wait_ready(url, args.timeout)
            t = time.perf_counter()
            png = generate(url, cls, args.n, args.seed, args.truncation)
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_bytes(png)
            print(f"{args.n} images of class {cls!r} from {url} in {time.perf_counter() - t:.2f} s "
                  f"-> {args.out}")
    except (RuntimeError, TimeoutError) as e:
        print(f"serving.client: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
