"""Serving benchmark: onnxruntime vs PyTorch eager, and `bigan serve` under concurrent clients.

For the BigGAN 128x128 generator of configs/biggan_128.yaml (random weights; `--quick` shrinks the
width to 8 so the run takes seconds), exported with `bigan export`'s own code:
  1. latency of one generator call at batch 1 and 32: PyTorch eager (the EMA generator as
     `bigan sample` runs it) against onnxruntime (the session `bigan serve` opens), same inputs;
  2. in-process onnxruntime throughput at batch 1 and at the server's max batch (16);
  3. `bigan serve --cache-mb 0` in a subprocess on 127.0.0.1 with 1 and 16 concurrent clients,
     each sending one-image `POST /v1/generate` requests back to back: images/s, p50/p99 latency,
     and the peak RSS of the server process (VmHWM). The server at c clients is compared with
     in-process onnxruntime at batch min(c, 16): c clients that each wait for their answer let
     the server form batches of at most c, so one client gives it only batch-1 calls, and the
     ceiling for those is batch 1 in process, not the batch-16 rate (which on a CPU can be higher
     or lower per image than batch 1: cache locality against per-call overhead). Both fractions
     are printed and written;
  4. the response cache: two servers side by side, `--cache-mb 0` and the default cache, under
     the same repeating workload (one-image PNG requests whose (class, seed) follow a Zipf law
     over --cache-keys pairs, the same sequence for both): hit rate, images/s, p50/p99 latency;
  5. with --floor, one client against `bigan serve` and against `bench/raw_server.py`, the least
     a Python HTTP server can do for such a request (parse, latent, session, .npy), with its
     session in a worker thread and inline on the event loop: what any server reaches here.
Each comparison alternates over --rounds rounds and is taken per round: eager against
onnxruntime, each server measurement against the in-process ones just before and after it, and
the cached server against the uncached one (their order swapped every round); then the median or
the total over rounds. A shared machine drifts by 10-20% within a minute, and
eager's page-fault-bound time by up to 2x.
The CUDA provider (and torch on CUDA) is used when a GPU is present. Prints a table, writes JSON.

The load client is hand-written (`LeanConnection`: a keep-alive socket with TCP_NODELAY, request
bytes encoded before timing, answers read with recv_into into one reused buffer, the header parsed
only for status and Content-Length) because at one client the server and its client share the
CPU, and every request is sequential: a Python `http.client` loop costs 0.44-0.52 ms of CPU per
one-image request (its header parsing and a fresh 196 KB read; this loop 0.11 ms), more than the
~0.42 ms that 0.95x leaves beside a 7.9 ms image on one core, so it measured itself rather than
the server (docs/benchmarks.md, Serving).
A C load generator (wrk, h2load, hey, ab) would cost less still; none is installed on the
machines this was measured on, and the bench needs only Python. `--client http.client` runs the
old client, to compare; a test checks both read the same bytes and status from `bigan serve`.

    python bench/serving.py [--quick] [--fp16] [--out bench/results] [--seconds S] [--rounds R]
                            [--client lean|http.client] [--floor]
                            [--checkpoint CKPT [--model CKPT.onnx]]   # your own model instead
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import http.client
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bigan import models, sampling  # noqa: E402
from bigan.config import dump_config, load_config  # noqa: E402
from bigan.generation import load_ema_generator  # noqa: E402
from bigan.export.onnx import export_onnx  # noqa: E402
from bigan.checkpoint.store import save_checkpoint  # noqa: E402
from serving.core.engine import EngineConfig, open_session  # noqa: E402
from bigan.ort_session import read_metadata  # noqa: E402
from serving.client import free_port, started_server, stop_process  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
WARM_UP = 0.25  # `drive` warms a server up for this fraction of its window before counting


def random_checkpoint(out_dir: Path, quick: bool) -> Path:
    """A checkpoint of a random-init BigGAN-128 generator (configs/biggan_128.yaml)."""
    overrides = ["model.ch=8", "model.d_ch=8"] if quick else []
    cfg = load_config(ROOT / "configs" / "biggan_128.yaml", overrides)
    torch.manual_seed(0)
    G, _ = models.build(cfg.model)
    return save_checkpoint(out_dir / "checkpoints", 0, models={"G_ema": G.state_dict()},
                           objects={}, config_text=dump_config(cfg),
                           extra={"config": cfg.to_dict()})


def time_calls(fn, seconds: float, min_calls: int = 3) -> list[float]:
    """Wall times of repeated fn() calls after one warm-up: at least min_calls, about `seconds`."""
    fn()
    times, end = [], time.perf_counter() + seconds
    while len(times) < min_calls or time.perf_counter() < end:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


def latency_rows(onnx_path: Path, G, batches: list[int], seconds: float,
                 rounds: int) -> tuple[list[dict], list[dict]]:
    """Per-call latency of PyTorch eager and onnxruntime, alternating over `rounds` blocks of
    seconds/rounds each: (a row per runtime and batch over all calls, the onnxruntime/eager ratio
    per batch from each round's medians). Paired rounds, because eager's time on a shared VM
    drifts by 2x over minutes with the host's page-fault cost, onnxruntime's (arena) far less."""
    session, provider = open_session(onnx_path, EngineConfig())
    rows, ratios = [], []
    for n in batches:
        z = sampling.latents(range(n), G.dim_z, 1.0)
        y = (np.arange(n) % G.num_classes).astype(np.int64)
        zt, yt = torch.from_numpy(z).to(DEVICE), torch.from_numpy(y).to(DEVICE)

        def eager():
            with torch.no_grad():
                G(zt, yt)
            if DEVICE.type == "cuda":
                torch.cuda.synchronize()

        def ort():
            session.run(["images"], {"z": z, "y": y})

        runs = {"pytorch-eager": eager, "onnxruntime": ort}
        times: dict[str, list[list[float]]] = {name: [] for name in runs}
        for _ in range(rounds):
            for name, fn in runs.items():
                times[name].append(time_calls(fn, seconds / rounds))
        for name, per_round in times.items():
            t = np.concatenate(per_round)
            rows.append({"runtime": name, "device": provider if name == "onnxruntime"
                         else str(DEVICE), "batch": n, "calls": len(t),
                         "p50_ms": 1000 * float(np.median(t)), "mean_ms": 1000 * float(np.mean(t)),
                         "img_per_sec": n / float(np.median(t))})
            print(f"  {name:14s} batch {n:3d}: {rows[-1]['p50_ms']:9.1f} ms p50 "
                  f"({rows[-1]['img_per_sec']:.1f} img/s)", flush=True)
        per_round = [float(np.median(o) / np.median(e))
                     for e, o in zip(times["pytorch-eager"], times["onnxruntime"])]
        ratios.append({"batch": n, "ort_over_eager": float(np.median(per_round)),
                       "ort_over_eager_per_round": per_round})
    return rows, ratios


def _peak_rss_mib(pid: int) -> float:
    """VmHWM: the process's peak resident set size so far (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@contextlib.contextmanager
def running_server(onnx_path: Path, max_batch: int, *options: str):
    """`bigan serve` in a subprocess on a free loopback port, ready: yields (port, pid). Its log
    goes to a temporary file, quoted if the server does not come up."""
    with tempfile.NamedTemporaryFile("wb", prefix="bigan-serve-", suffix=".log") as log, \
            started_server(onnx_path, "--max-batch", str(max_batch), "--max-queue", "256",
                           *options, output=log, cwd=ROOT) as server:
        yield server.port, server.process.pid


def server_vs_in_process(onnx_path: Path, in_process_rate, max_batch: int,
                         clients_list: list[int], seconds: float, rounds: int,
                         num_classes: int, client: str = "lean") -> tuple[dict, dict]:
    """Rounds of in-process onnxruntime, then the server at each client count, each followed by
    in-process again, `seconds` each. This machine's speed drifts by 10-20% within a minute, so
    each server rate is compared with the mean of the in-process rates measured just before and
    just after it. Each in-process measurement times every batch in `baseline_batches` for an
    equal share of `seconds`. A row's `fraction_of_in_process` is against batch
    min(clients, max_batch), the largest batch those clients let the server form (one sequential
    client: only batch-1 calls); `vs_in_process_batch` has the fraction against each batch.
    Returns (in_process, server)."""
    batches = sorted({min(c, max_batch) for c in clients_list} | {max_batch})
    base = {n: [] for n in batches}
    per_round = {c: [] for c in clients_list}

    def measure_in_process() -> None:
        for n in batches:
            base[n].append(in_process_rate(seconds / len(batches), n))

    # Without the response cache: every round sends the same (class, seed) sequence, which a
    # cache would answer from the second round on. This measures the generator's path.
    with running_server(onnx_path, max_batch, "--cache-mb", "0") as (port, pid):
        rss_idle = _peak_rss_mib(pid)
        for r in range(rounds):
            measure_in_process()
            print(f"  round {r + 1}/{rounds}: in-process onnxruntime "
                  + ", ".join(f"batch {n}: {base[n][-1]:.1f}" for n in batches) + " img/s",
                  flush=True)
            for c in clients_list:
                run = drive(port, c, seconds, num_classes, client=client)
                measure_in_process()
                run["in_process"] = {n: (base[n][-2] + base[n][-1]) / 2 for n in batches}
                per_round[c].append(run)
                print("    then in-process again: "
                      + ", ".join(f"batch {n}: {base[n][-1]:.1f}" for n in batches) + " img/s",
                      flush=True)
        rss_peak = _peak_rss_mib(pid)
    rows = []
    for c, runs in per_round.items():
        rates = [run["img_per_sec"] for run in runs]
        lat = np.concatenate([run.pop("latencies") for run in runs])
        # total server images/s over the total of its bracketing in-process rates, per batch
        vs = {}
        for n in batches:
            brackets = [run["in_process"][n] for run in runs]
            vs[str(n)] = {"fraction": float(np.sum(rates) / np.sum(brackets)),
                          "per_round": [rate / b for rate, b in zip(rates, brackets)]}
        for run in runs:
            run.pop("in_process")
        fair = str(min(c, max_batch))
        rows.append({"clients": c, "requests": int(lat.size), "img_per_sec": float(np.mean(rates)),
                     "img_per_sec_per_round": rates,
                     "p50_ms": 1000 * float(np.percentile(lat, 50)),
                     "p99_ms": 1000 * float(np.percentile(lat, 99)),
                     "baseline_batch": int(fair),
                     "fraction_of_in_process": vs[fair]["fraction"],
                     "fraction_per_round": vs[fair]["per_round"],
                     "vs_in_process_batch": vs})
    in_process = {"batch": max_batch, "img_per_sec": float(np.mean(base[max_batch])),
                  "img_per_sec_per_measurement": base[max_batch],
                  "seconds_per_batch": seconds / len(batches),
                  "by_batch": {str(n): {"img_per_sec": float(np.mean(v)),
                                        "img_per_sec_per_measurement": v}
                               for n, v in base.items()}}
    return in_process, {"rows": rows, "rounds": rounds, "seconds_per_measurement": seconds,
                        "client": client,
                        "server_peak_rss_mib": rss_peak, "server_idle_peak_rss_mib": rss_idle}


def unique_requests(num_classes: int):
    """Request i of client k: a (class, seed) no other request asks for; npy, as a program would."""
    def request(k: int, i: int) -> dict:
        return {"class": (k + i) % num_classes, "n": 1, "seed": 1000 * k + i, "format": "npy"}
    return request


def zipf_requests(num_classes: int, keys: int, s: float = 1.1, seed: int = 0):
    """Request i of client k: pair j of `keys` (class, seed) pairs with probability ~ 1/(j+1)^s,
    drawn from a generator keyed by (seed, k), so every server gets the same sequence; PNG, as
    the web page asks. A few pairs are asked for often, most rarely: what a cache faces."""
    weights = 1.0 / np.arange(1, keys + 1) ** s
    cdf = np.cumsum(weights / weights.sum())
    draws: dict[int, np.ndarray] = {}

    def request(k: int, i: int) -> dict:
        if k not in draws or i >= len(draws[k]):
            rng = np.random.default_rng([seed, k])
            draws[k] = np.searchsorted(cdf, rng.random(max(4 * i, 4096)))
        j = int(draws[k][i])
        return {"class": j % num_classes, "n": 1, "seed": j, "truncation": 1.0, "format": "png"}
    return request


class LeanConnection:
    """One keep-alive HTTP/1.1 connection that POSTs JSON and reads the answer, with as little
    Python per request as wrk or h2load spend in C: the request's bytes are encoded before it is
    timed (`encode`), the answer is read with `recv_into` into one buffer reused for every request,
    and its header is parsed only for the status and Content-Length (the server sends both on every
    answer, errors included; a chunked or length-less answer raises). Nothing is pipelined: one
    request, its whole answer, then the next, as a sequential client does."""

    def __init__(self, host: str, port: int, path: str = "/v1/generate", timeout: float = 120,
                 buffer_bytes: int = 1 << 18):  # a 128 px RGB .npy answer is ~196 KB: no regrowth
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.head = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                     "Content-Type: application/json\r\nContent-Length: ").encode()
        self.buf = bytearray(buffer_bytes)
        self.view = memoryview(self.buf)

    def encode(self, request: dict) -> bytes:
        body = json.dumps(request).encode()
        return self.head + b"%d\r\n\r\n" % len(body) + body

    def _grow(self, size: int) -> None:
        # A new buffer, not extend(): a caller may still hold a view of the last body.
        buf = bytearray(size)
        buf[:len(self.buf)] = self.buf
        self.buf, self.view = buf, memoryview(buf)

    def exchange(self, request: bytes) -> tuple[int, memoryview]:
        """Send one encoded request; (status, a view of its body, valid until the next call)."""
        self.sock.sendall(request)
        received, header_end = 0, -1
        while header_end < 0:
            if received == len(self.buf):
                self._grow(2 * len(self.buf))
            got = self.sock.recv_into(self.view[received:])
            if not got:
                raise ConnectionError("the server closed the connection before answering")
            # A header line cannot end before the data just received: search from there.
            header_end = self.buf.find(b"\r\n\r\n", max(0, received - 3), received + got)
            received += got
        header = bytes(self.buf[:header_end]).lower()
        at = header.find(b"\r\ncontent-length:")
        if not header.startswith(b"http/1.1 ") or at < 0:
            raise RuntimeError(f"unexpected answer header (no Content-Length): {header[:200]!r}")
        status = int(header[9:12])
        body_start = header_end + 4
        line_end = header.find(b"\r\n", at + 2)
        total = body_start + int(header[at + 17:line_end if line_end > 0 else len(header)])
        if total > len(self.buf):
            self._grow(total)
        while received < total:
            got = self.sock.recv_into(self.view[received:total])
            if not got:
                raise ConnectionError("the server closed the connection in the middle of an answer")
            received += got
        return status, self.view[body_start:total]

    def close(self) -> None:
        self.sock.close()


def _timed_requests(prepare, send, start: float, end: float) -> tuple[list[float], int]:
    """The counting rules of `drive` for one client: request i is built by `prepare(i)` outside
    the timed span, then `send` (which raises on an answer other than 200) is timed; returns the
    latencies of the requests sent from `start` on and the count completed in [start, end]."""
    latencies, completed, i = [], 0, 0
    while time.perf_counter() < end:
        request = prepare(i)
        t = time.perf_counter()
        send(request)
        done = time.perf_counter()
        if t >= start:
            latencies.append(done - t)
        completed += start <= done <= end
        i += 1
    return latencies, completed


def _lean_client(port: int, requests, k: int, start: float, end: float) -> tuple[list[float], int]:
    """Client k's loop over a LeanConnection."""
    conn = LeanConnection("127.0.0.1", port)
    # Encoded before the warm-up ends: more requests than a window sends at one client.
    encoded = [conn.encode(requests(k, i)) for i in range(4096)]

    def prepare(i: int) -> bytes:
        if i == len(encoded):  # a fast model: encode the next block (outside any timed span)
            encoded.extend(conn.encode(requests(k, j)) for j in range(i, 2 * i))
        return encoded[i]

    def send(request: bytes) -> None:
        status, body = conn.exchange(request)
        if status != 200:
            text = bytes(body[:500]).decode(errors="replace")
            raise RuntimeError(f"server answered {status}: {text}")

    try:
        return _timed_requests(prepare, send, start, end)
    finally:
        conn.close()


def _http_client(port: int, requests, k: int, start: float, end: float) -> tuple[list[float], int]:
    """Client k's loop over `http.client` (the bench's client before the lean one: ~0.4 ms of
    CPU a request more)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)

    def send(body: str) -> None:
        conn.request("POST", "/v1/generate", body, {"Content-Type": "application/json"})
        response = conn.getresponse()
        response.read()
        if response.status != 200:
            raise RuntimeError(f"server answered {response.status}")

    try:
        return _timed_requests(lambda i: json.dumps(requests(k, i)), send, start, end)
    finally:
        conn.close()


CLIENTS = {"lean": _lean_client, "http.client": _http_client}


def drive(port: int, clients: int, seconds: float, num_classes: int, requests=None,
          client: str = "lean") -> dict:
    """`clients` threads, each on its own keep-alive connection, sending one-image requests
    (`requests(k, i)`, default `unique_requests`): a warm-up of WARM_UP * seconds (arena growth,
    batches settling), then a window of `seconds`. Returns images/s, counted as the requests completed
    within the window (steady state: the drain after it, about one latency, would bias a
    sent-in-window count down), and the latencies (s) of the requests sent within it.
    `client`: "lean" (`LeanConnection`) or "http.client" (see the module's docstring)."""
    start = time.perf_counter() + WARM_UP * seconds
    end = start + seconds
    requests = requests or unique_requests(num_classes)
    loop = CLIENTS[client]
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        per_client = list(pool.map(lambda k: loop(port, requests, k, start, end), range(clients)))
    lat = np.concatenate([np.asarray(x) for x, _ in per_client])
    row = {"clients": clients, "img_per_sec": sum(n for _, n in per_client) / seconds,
           "latencies": lat}
    print(f"  server {clients:2d} clients: {row['img_per_sec']:8.1f} img/s  p50 "
          f"{1000 * np.percentile(lat, 50):8.1f} ms  p99 {1000 * np.percentile(lat, 99):8.1f} ms",
          flush=True)
    return row


def cache_counts(port: int) -> tuple[float, float]:
    """(hits, misses) of the server's response cache, from /metrics."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()

    def total(name: str) -> float:
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith(name + "{"))
    return total("bigan_cache_hits_total"), total("bigan_cache_misses_total")


def cache_comparison(onnx_path: Path, max_batch: int, clients_list: list[int], seconds: float,
                     rounds: int, num_classes: int, keys: int, client: str = "lean") -> dict:
    """The same Zipf workload against a server without and one with the response cache, both
    running throughout; per round and client count, each is driven once, in swapped order every
    round. The cached server keeps its cache across rounds, as a server in service would."""
    runs = {(c, cache): [] for c in clients_list for cache in ("off", "on")}
    hit_rates = {c: [] for c in clients_list}
    with running_server(onnx_path, max_batch, "--cache-mb", "0") as (off_port, _), \
            running_server(onnx_path, max_batch) as (on_port, _):
        for r in range(rounds):
            for c in clients_list:
                order = [("off", off_port), ("on", on_port)][::1 if r % 2 == 0 else -1]
                for cache, port in order:
                    before = cache_counts(port)
                    print(f"  round {r + 1}/{rounds}, cache {cache}:", end="", flush=True)
                    run = drive(port, c, seconds, num_classes, zipf_requests(num_classes, keys), client)
                    hits, misses = (a - b for a, b in zip(cache_counts(port), before))
                    run["hit_rate"] = hits / (hits + misses) if hits + misses else 0.0
                    runs[(c, cache)].append(run)
                hit_rates[c].append(runs[(c, "on")][-1]["hit_rate"])
    rows = []
    for (c, cache), per_round in runs.items():
        lat = np.concatenate([run.pop("latencies") for run in per_round])
        rates = [run["img_per_sec"] for run in per_round]
        rows.append({"clients": c, "cache": cache, "requests": int(lat.size),
                     "img_per_sec": float(np.mean(rates)), "img_per_sec_per_round": rates,
                     "p50_ms": 1000 * float(np.percentile(lat, 50)),
                     "p99_ms": 1000 * float(np.percentile(lat, 99)),
                     "hit_rate_per_round": [run["hit_rate"] for run in per_round]})
    speedups = {c: [on["img_per_sec"] / off["img_per_sec"]
                    for off, on in zip(runs[(c, "off")], runs[(c, "on")])] for c in clients_list}
    return {"keys": keys, "zipf_s": 1.1, "format": "png", "rows": rows,
            "hit_rate_per_round": {str(c): v for c, v in hit_rates.items()},
            "speedup_per_round": {str(c): v for c, v in speedups.items()},
            "speedup_median": {str(c): float(np.median(v)) for c, v in speedups.items()}}


@contextlib.contextmanager
def raw_server(onnx_path: Path, inline: bool):
    """`bench/raw_server.py` (the floor: nothing but parse, latent, session, .npy) in a
    subprocess on a free loopback port: yields (port, pid)."""
    port = free_port()
    command = [sys.executable, str(ROOT / "bench" / "raw_server.py"), str(onnx_path),
               "--port", str(port)] + (["--inline"] if inline else [])
    process = subprocess.Popen(command, stdout=subprocess.PIPE)
    try:
        if process.stdout.readline().strip() != b"ready":
            raise RuntimeError(f"{' '.join(command)} did not start (exit code {process.poll()})")
        yield port, process.pid
    finally:
        stop_process(process, grace_s=10)


def _main_thread_cpu_s(pid: int) -> float:
    """CPU seconds of a process's main thread (its event loop), from schedstat (ns)."""
    return int(Path(f"/proc/{pid}/task/{pid}/schedstat").read_text().split()[0]) / 1e9


def floor_comparison(onnx_path: Path, in_process_rate, max_batch: int, seconds: float,
                     rounds: int, num_classes: int, client: str = "lean") -> dict:
    """One client against `bigan serve` and against the floor (`bench/raw_server.py`, the session
    in a worker thread as the batcher runs it, and inline on the event loop), in rotating order
    within each round, each measurement bracketed by in-process onnxruntime at batch 1 as in
    `server_vs_in_process`; plus each server's event-loop CPU per request."""
    names = ["bigan serve", "raw server, worker thread", "raw server, inline"]
    fractions = {name: [] for name in names}
    loop_ms = {name: [] for name in names}
    with running_server(onnx_path, max_batch, "--cache-mb", "0") as served, \
            raw_server(onnx_path, inline=False) as threaded, \
            raw_server(onnx_path, inline=True) as inline:
        servers = dict(zip(names, (served, threaded, inline)))
        before = in_process_rate(seconds / 2, 1)
        for r in range(rounds):
            for name in names[r % 3:] + names[:r % 3]:
                port, pid = servers[name]
                cpu = _main_thread_cpu_s(pid)
                print(f"  round {r + 1}/{rounds}, {name}:", end="", flush=True)
                run = drive(port, 1, seconds, num_classes, client=client)
                requests = len(run["latencies"])  # sent in the window; warm-up's not counted
                cpu = _main_thread_cpu_s(pid) - cpu
                after = in_process_rate(seconds / 2, 1)
                fractions[name].append(run["img_per_sec"] / ((before + after) / 2))
                # the CPU covers the warm-up too: its requests are taken at the window's rate
                loop_ms[name].append(1000 * cpu / max((1 + WARM_UP) * requests, 1))
                before = after
    return {"rounds": rounds, "client": client,
            "rows": [{"server": name, "fraction_of_in_process_batch_1": float(np.median(f)),
                      "fraction_per_round": f, "loop_cpu_ms_per_request": float(np.median(
                          loop_ms[name])), "loop_cpu_ms_per_round": loop_ms[name]}
                     for name, f in fractions.items()]}


def print_table(report: dict) -> None:
    """The bench's table on stdout, from the report `main` writes as serving.json."""
    print(f"\n{'measurement':62s} {'img/s':>9s} {'p50 ms':>9s} {'p99 ms':>9s}")
    for r in report["latency"]:
        print(f"{r['runtime'] + ' batch ' + str(r['batch']) + ' (' + r['device'] + ')':62s} "
              f"{r['img_per_sec']:9.1f} {r['p50_ms']:9.1f} {'':>9s}")
    for r in report["ort_over_eager"]:
        print(f"onnxruntime / eager time, batch {r['batch']}: {r['ort_over_eager']:.2f}x (rounds "
              + "/".join(f"{v:.2f}" for v in r["ort_over_eager_per_round"]) + ")")
    for n, b in report["in_process"]["by_batch"].items():
        label = f"onnxruntime in process, batch {n} (mean)"
        print(f"{label:62s} {b['img_per_sec']:9.1f}   (range "
              f"{min(b['img_per_sec_per_measurement']):.1f}-"
              f"{max(b['img_per_sec_per_measurement']):.1f})")
    for r in report["server"]["rows"]:
        label = f"bigan serve, {r['clients']} client(s) ({report['server']['client']} client)"
        print(f"{label:62s} {r['img_per_sec']:9.1f} {r['p50_ms']:9.1f} {r['p99_ms']:9.1f}")
        for n, v in r["vs_in_process_batch"].items():
            print(f"  {v['fraction']:.0%} of in-process at batch {n}"
                  + (" (its baseline)" if int(n) == r["baseline_batch"] else "")
                  + "; rounds " + "/".join(f"{f:.0%}" for f in v["per_round"]))
    for r in (report["floor"] or {}).get("rows", []):
        label = f"1 client, {r['server']}: of in-process at batch 1"
        print(f"{label:62s} {r['fraction_of_in_process_batch_1']:9.0%}   (rounds "
              + "/".join(f"{f:.0%}" for f in r["fraction_per_round"])
              + f"; event loop {r['loop_cpu_ms_per_request']:.2f} ms CPU a request)")
    for r in report["cache"]["rows"]:
        label = (f"bigan serve, {r['clients']} client(s), Zipf PNGs, cache {r['cache']}"
                 + (" (hits " + "/".join(f"{h:.0%}" for h in r["hit_rate_per_round"]) + ")"
                    if r["cache"] == "on" else ""))
        print(f"{label:62s} {r['img_per_sec']:9.1f} {r['p50_ms']:9.1f} {r['p99_ms']:9.1f}")
    for c, v in report["cache"]["speedup_per_round"].items():
        print(f"cache on / off images/s, {c} client(s): {report['cache']['speedup_median'][c]:.2f}x (rounds "
              + "/".join(f"{x:.2f}" for x in v) + ")")
    server = report["server"]
    print(f"server peak RSS {server['server_peak_rss_mib']:.0f} MiB "
          f"(idle {server['server_idle_peak_rss_mib']:.0f} MiB), "
          f"model file {report['model']['onnx_mib']:.1f} MiB"
          + (f", export {report['export_sec']:.0f} s" if report['export_sec'] else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="width 8 instead of 96, short timings (the default without a GPU)")
    parser.add_argument("--full", action="store_true",
                        help="the paper's width 96 even without a GPU (hours on a few CPU cores)")
    parser.add_argument("--fp16", action="store_true", help="export and serve fp16 weights")
    parser.add_argument("--out", default="bench/results", help="directory for serving.json")
    parser.add_argument("--checkpoint", help="benchmark this checkpoint's EMA generator instead "
                                             "of a random-init BigGAN-128")
    parser.add_argument("--model", help="an existing `bigan export` of --checkpoint (skips exporting)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved rounds: eager vs onnxruntime, in-process vs server")
    parser.add_argument("--cache-keys", type=int, default=1000,
                        help="distinct (class, seed) pairs of the cache workload (default 1000)")
    parser.add_argument("--client", choices=sorted(CLIENTS), default="lean",
                        help="the load client: lean (a raw-socket loop, the default) or "
                             "http.client (~0.4 ms more CPU a request; to compare)")
    parser.add_argument("--floor", action="store_true",
                        help="also drive bench/raw_server.py (the floor of a Python HTTP server) "
                             "at 1 client beside bigan serve, each against in-process")
    parser.add_argument("--seconds", type=float, default=None,
                        help="time per measurement (default 4 with --quick, 10 otherwise)")
    args = parser.parse_args()
    if not (args.quick or args.full or DEVICE.type == "cuda"):
        print("no GPU: running --quick (width 8); pass --full for the paper's width", flush=True)
        args.quick = True
    if args.model and not args.checkpoint:
        parser.error("--model needs the --checkpoint it was exported from (for the PyTorch baseline)")
    if args.rounds < 1:
        parser.error(f"--rounds {args.rounds} must be >= 1")
    seconds = args.seconds or (4.0 if args.quick else 10.0)
    threads = int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1))
    torch.set_num_threads(threads)
    max_batch = 16
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(args.checkpoint) if args.checkpoint else random_checkpoint(Path(tmp), args.quick)
        G = load_ema_generator(ckpt)[0].to(DEVICE)
        export_sec = None
        if args.model:
            onnx_path = Path(args.model)
        else:
            print(f"exporting {ckpt} ...", flush=True)
            t = time.perf_counter()
            onnx_path = export_onnx(ckpt, Path(tmp) / "model.onnx", fp16=args.fp16).path
            export_sec = time.perf_counter() - t
        print("single-call latency (in process)", flush=True)
        latency, ratios = latency_rows(onnx_path, G, [1, 32], seconds, args.rounds)
        session, provider = open_session(onnx_path, EngineConfig())

        def in_process_rate(seconds: float, batch: int) -> float:
            # Total images over total time, as the server's rate is measured (a median per call
            # would drop the slow calls the server pays for).
            z = sampling.latents(range(batch), G.dim_z, 1.0)
            y = (np.arange(batch) % G.num_classes).astype(np.int64)
            t = time_calls(lambda: session.run(["images"], {"z": z, "y": y}), seconds)
            return batch * len(t) / float(np.sum(t))

        print(f"bigan serve under load (one-image requests, {args.client} client), "
              f"{args.rounds} rounds", flush=True)
        in_process, server = server_vs_in_process(onnx_path, in_process_rate, max_batch, [1, 16],
                                                  seconds, args.rounds, G.num_classes, args.client)
        floor = None
        if args.floor:
            print(f"1 client: bigan serve against the floor (bench/raw_server.py), {args.rounds} "
                  "rounds", flush=True)
            floor = floor_comparison(onnx_path, in_process_rate, max_batch, seconds, args.rounds,
                                     G.num_classes, args.client)
        print(f"response cache: Zipf(1.1) over {args.cache_keys} (class, seed) pairs, "
              f"{args.rounds} rounds", flush=True)
        cache = cache_comparison(onnx_path, max_batch, [1, 16], seconds, args.rounds,
                                 G.num_classes, args.cache_keys, args.client)
        onnx_mib = onnx_path.stat().st_size / 2**20

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"machine": {"platform": platform.platform(), "threads": threads,
                          "torch": torch.__version__, "device": str(DEVICE), "provider": provider},
              "model": {"checkpoint": args.checkpoint or "random-init configs/biggan_128.yaml",
                        "quick": args.quick, "resolution": G.resolution,
                        "precision": read_metadata(session, onnx_path).precision,
                        "params_G": sum(p.numel() for p in G.parameters()), "onnx_mib": onnx_mib},
              "latency": latency, "ort_over_eager": ratios, "in_process": in_process, "server": server,
              "cache": cache, "floor": floor, "export_sec": export_sec}
    print_table(report)
    (out / "serving.json").write_text(json.dumps(report, indent=2))
    print(f"\nwrote {out / 'serving.json'}")


if __name__ == "__main__":
    main()
