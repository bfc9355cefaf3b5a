"""The floor of serving one-image requests over HTTP from Python on this machine.

A server with nothing but what a `/v1/generate` npy request needs: an asyncio protocol (on
uvloop, as uvicorn runs bigan serve) that reads a keep-alive HTTP/1.1 POST with a Content-Length,
`json.loads` of the body, and bigan serve's own `Engine` without its batcher: the latent from the
seed at the model's default psi (`Engine.latents`), the session run (`Engine.run`), and the image
answered as `.npy` (`serving.transports.images.npy_bytes`). No routing, validation, batching,
metrics, limits or error answers: it is not a server to use, only the measure of what any Python
server could reach at one client (`bench/serving.py --floor` drives it beside `bigan serve`, each
against in-process onnxruntime). `--inline` runs the session on the event loop; without it, in one
worker thread fed by a queue, as `bigan serve`'s batcher does (`serving.core.batcher.RunThread`).

    python bench/raw_server.py MODEL.onnx --port P [--inline]     # prints "ready" once listening
"""

from __future__ import annotations

import argparse
import asyncio
import json
import queue
import sys
import threading
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from serving.core.engine import Engine  # noqa: E402
from serving.transports.images import npy_bytes  # noqa: E402


def serve(model: Path, port: int, inline: bool) -> None:
    try:  # the loop uvicorn's `--loop auto` picks for bigan serve
        from uvloop import run as run_loop
    except ImportError:
        run_loop = asyncio.run
    engine = Engine(model)  # its session, run and latents; its batcher is never started
    default_psi = engine.metadata.default_truncation

    calls: queue.SimpleQueue = queue.SimpleQueue()

    def worker() -> None:  # the batcher's RunThread, without the batcher
        while True:
            loop, answer, *inputs = calls.get()
            images = engine.run(*inputs)
            loop.call_soon_threadsafe(answer, images)

    threading.Thread(target=worker, daemon=True).start()

    class Protocol(asyncio.Protocol):
        def connection_made(self, transport) -> None:
            self.transport, self.buffer = transport, b""

        def data_received(self, data: bytes) -> None:
            self.buffer += data
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].lower()
            at = head.index(b"\r\ncontent-length:") + 17
            line_end = head.find(b"\r\n", at)
            length = int(head[at:line_end if line_end > 0 else len(head)])
            if len(self.buffer) < end + 4 + length:
                return
            body, self.buffer = self.buffer[end + 4:end + 4 + length], self.buffer[end + 4 + length:]
            request = json.loads(body)
            y = np.array([request["class"]], dtype=np.int64)
            psi = request["truncation"] if "truncation" in request else default_psi(request["class"])
            z = engine.latents([request["seed"]], psi)
            if inline:
                self.answer(engine.run(z, y, psi))
            else:
                calls.put((asyncio.get_running_loop(), self.answer, z, y, psi))

        def answer(self, images: np.ndarray) -> None:
            body = npy_bytes(images)
            self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\n"
                                 b"content-length: %d\r\n\r\n" % len(body) + body)

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(Protocol, "127.0.0.1", port)
        print("ready", flush=True)
        await server.serve_forever()

    run_loop(main())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--inline", action="store_true", help="run the session on the event loop")
    args = parser.parse_args()
    serve(args.model, args.port, args.inline)
