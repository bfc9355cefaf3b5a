"""The inference engine: one onnxruntime session of an exported generator, behind a micro-batcher.

`Engine(path, EngineConfig())` opens the file (a directory of models is `serving.core.repository`'s
to scan), refuses to start
when its metadata or graph break the contract (`bigan.ort_session`), picks the CUDA execution
provider when a GPU is usable and the CPU provider otherwise (and logs which), and bounds
onnxruntime's memory arenas: the CUDA arena grows by what is requested, not by powers of two, and
every `shrink_arena_every_s` seconds a run ends by giving the arenas' unused memory back
(`memory.enable_memory_arena_shrinkage`), so a burst of large batches does not pin its peak memory
for the life of the process. Not after every run: on CPU that (like disabling the arena) re-faults
every activation buffer and measured 1.8x slower per batch (BigGAN-128, width 8, batch 1 and 16).

Warm-up (Triton's `model_warmup`): `warm_up()` runs every batch bucket the engine will use
(`bigan.ort_session.batch_buckets(max_batch)`) once with zero latents and class 0, and an engine
is `ready` only after it did: onnxruntime allocates its arena, and cuDNN times its convolution
algorithms, on the first run at each shape, which would otherwise fall on the first requests of
each size. The model repository warms every engine it opens or reloads before it serves it.
Warm-up runs bypass the batcher, so they count in no statistic or metric.

Latents come from `bigan.sampling.latents`: one seeded NumPy generator per image, drawn before
batching, so an image depends on its (class, seed, psi) only, exactly as in `bigan sample`.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from bigan import ort_session, sampling
from bigan.onnx_metadata import ModelMetadata
from bigan.ort_session import ModelFileError
from serving.core import gpu_path
from serving.core.batcher import BatchHook, MicroBatcher
from serving.core.config import TRT_CACHE_DIR, EngineConfig

__all__ = ["DEFAULT_WAIT_MS", "PROVIDERS", "TRT_CACHE_DIR", "Engine", "EngineConfig",
           "RequestStats", "open_session", "ort_run_options"]

log = logging.getLogger(__name__)

PROVIDERS = ort_session.PROVIDERS


# How long a batch that found the runtime idle waits for company, by provider. On CPU a larger
# batch costs as much per image (9-16 ms/img at batch 1 to 32, BigGAN-128 width 8), so waiting
# only adds latency: 5 ms cost one client 0.62-0.66x of in-process throughput against 0.84-0.90x
# without (before a lone request stopped waiting: MicroBatcher's others_in_flight), and 16 clients
# gained nothing from it (bench/serving.py). On a GPU, where a batch of 16
# typically costs little more than one image, a few ms of waiting pays (not measured here).
DEFAULT_WAIT_MS = {"CPUExecutionProvider": 0.0, "CUDAExecutionProvider": 5.0,
                   "TensorrtExecutionProvider": 5.0}


@dataclass
class RequestStats:
    """Requests through `Engine.submit`: how many succeeded and failed and the seconds they took
    (queue plus run), and when the last one ended (ms since the epoch; 0: none yet)."""
    success: int = 0
    success_seconds: float = 0.0
    fail: int = 0
    fail_seconds: float = 0.0
    last_ms: int = 0

    def note(self, ok: bool, seconds: float) -> None:
        if ok:
            self.success, self.success_seconds = self.success + 1, self.success_seconds + seconds
        else:
            self.fail, self.fail_seconds = self.fail + 1, self.fail_seconds + seconds
        self.last_ms = int(time.time() * 1000)


class Engine:
    """An exported generator ready to serve: `metadata`, `provider`, `run` (blocking) and `submit`
    (batched, async; needs `start()` on the serving event loop)."""

    def __init__(self, path: str | Path, config: EngineConfig | None = None,
                 name: str | None = None, on_batch: BatchHook | None = None, version: str = "1"):
        self.config = config or EngineConfig()
        self.path = Path(path)
        if not self.path.is_file():  # a repository directory is ModelRepository.open's to scan
            raise ModelFileError(f"model file {str(path)!r} does not exist or is not a file; "
                                 "export one with `bigan export CKPT --out model.onnx`, or serve "
                                 "a directory of models with ModelRepository.open")
        self.name, self.version = name or self.path.stem, version
        self.users = 0  # requests holding this engine (serving.core.repository drains on reload)
        with open(self.path, "rb") as f:  # keys the response cache: a new file, new images
            self.sha256 = hashlib.file_digest(f, "sha256").hexdigest()
        self.session, self.provider = open_session(self.path, self.config, self.sha256)
        self.metadata: ModelMetadata = ort_session.read_metadata(self.session, self.path)
        meta = self.metadata  # the GPU path: IO binding, CUDA graphs (None on CPU)
        self.device_runner = gpu_path.device_runner(
            self.session, self.provider, self.config,
            (meta.resolution, meta.resolution, meta.channels))
        self._plain_run = ort_run_options(self.provider, shrink=False)
        self._shrink_run = ort_run_options(self.provider, shrink=True)
        self._last_shrink = time.monotonic()
        self.max_wait_ms = (DEFAULT_WAIT_MS.get(self.provider, 0.0)
                            if self.config.max_wait_ms is None else self.config.max_wait_ms)
        self._submitted = 0  # requests inside submit: queued, gathering company or running
        self.batcher = MicroBatcher(self.run, self.config.max_batch, self.max_wait_ms,
                                    self.config.max_queue, on_batch, self._others_in_flight)
        self.stats = RequestStats()
        self.on_request: Callable[[bool, float], None] | None = None  # (ok, seconds): metrics
        self.warmed = False  # warm_up() ran: `ready` waits for it
        log.info("serving %s (%s, %d classes, %dx%d) on %s, batches of up to %d waiting up to "
                 "%g ms", self.path, self.metadata.family, self.metadata.num_classes,
                 self.metadata.resolution, self.metadata.resolution, self.provider,
                 self.config.max_batch, self.max_wait_ms)

    def latents(self, seeds: Sequence[int], psi: float | None) -> np.ndarray:
        """float32 [len(seeds), dim_z]: row i from its own generator seeded with seeds[i], drawn
        by the model's `z_sampling` (bigan's resample, or TF-Hub's scaled truncnorm)."""
        return sampling.latents(seeds, self.metadata.dim_z, psi, self.metadata.z_sampling)

    def latents_are_cheap(self, n: int, psi: float | None) -> bool:
        """Whether `latents(n seeds, psi)` costs no more than handing it to a worker thread and
        back, so the event loop may draw it itself: one "resample" row at psi None or >= 1
        (43 and 87 us, 120-d, one core; the hop costs ~30 us of CPU and two thread wake-ups).
        Smaller psi resamples longer (0.5: 180 us, 0.1: 750 us), and "tfhub-scaled" runs an
        inverse CDF per value in Python (~400 us a row)."""
        return (n == 1 and self.metadata.z_sampling == "resample"
                and (psi is None or psi >= 1.0))

    def run(self, z: np.ndarray, y: np.ndarray,
            psi: np.ndarray | float | None = None) -> np.ndarray:
        """uint8 NHWC images for z float32 [N, dim_z], y int64 [N] (psi: the truncation each row
        was drawn with, used by graphs with a psi input); runs in chunks of max_batch.
        Blocking: call it from a worker thread (the batcher does)."""
        step, chunks = self.config.max_batch, []
        psi = ort_session.psi_column(psi, len(y)) if self.metadata.psi_input else None
        for i in range(0, len(y), step):
            last = i + step >= len(y)
            rows = slice(i, i + step)
            feed = ort_session.run_inputs(self.metadata, z[rows], y[rows],
                                          None if psi is None else psi[rows])
            if self.device_runner is not None:
                chunks.append(self.device_runner.run(feed, self._run_options(last)))
            else:
                chunks.append(self.session.run(["images"], feed, self._run_options(last))[0])
        return chunks[0] if len(chunks) == 1 else np.concatenate(chunks)

    def _run_options(self, last_chunk: bool):
        every = self.config.shrink_arena_every_s
        now = time.monotonic()
        if last_chunk and every >= 0 and now - self._last_shrink >= every:
            self._last_shrink = now
            return self._shrink_run
        return self._plain_run

    def _others_in_flight(self) -> int:
        """Requests holding this engine (`ModelRepository.use`, as every transport does) that are
        not in its batcher: only they can join a batch waiting for company."""
        return self.users - self._submitted

    async def submit(self, z: np.ndarray, y: np.ndarray,
                     psi: np.ndarray | float | None = None) -> np.ndarray:
        """`run` through the micro-batcher (merged with concurrent requests); psi: the request's
        truncation (None: none; or float32 [N], one per row), kept with its rows when the graph
        takes a psi input."""
        start = time.perf_counter()
        column = ort_session.psi_column(psi, len(y)) if self.metadata.psi_input else None
        ok = False
        self._submitted += 1
        try:
            images = await self.batcher.submit(z, y, column)
            ok = True
        finally:  # a cancelled client's request counts as failed too (Triton counts it)
            self._submitted -= 1
            seconds = time.perf_counter() - start
            self.stats.note(ok, seconds)
            if self.on_request is not None:
                self.on_request(ok, seconds)
        return images

    def warm_up(self) -> list[int]:
        """Run every batch bucket once (blocking), then mark the engine warmed; returns the
        bucket sizes run. Zero latents and class 0 are valid rows of every model. Raises
        ModelFileError naming the model and the batch size when a run fails."""
        sizes = list(ort_session.batch_buckets(self.config.max_batch))
        start = time.perf_counter()
        for n in sizes:
            try:
                self.run(np.zeros((n, self.metadata.dim_z), np.float32), np.zeros(n, np.int64))
            except Exception as e:  # onnxruntime's own types; the model could not serve this size
                raise ModelFileError(f"model {self.name!r} version {self.version} failed its "
                                     f"warm-up run at batch {n} ({type(e).__name__}: "
                                     f"{str(e).strip()[:300]}); lower --max-batch") from e
        self.warmed = True
        log.info("warmed %s version %s up at batch sizes %s in %.2f s", self.name, self.version,
                 sizes, time.perf_counter() - start)
        return sizes

    async def start(self) -> None:
        await self.batcher.start()

    async def stop(self) -> None:
        await self.batcher.stop()

    @property
    def ready(self) -> bool:
        """Warmed up and batching: what the readiness routes and the repository index report."""
        return self.warmed and self.batcher.running


def open_session(path: Path, config: EngineConfig, sha256: str = ""):
    """(onnxruntime.InferenceSession, name of the provider it runs on), through the shared
    `bigan.ort_session` with the server's CUDA options (`serving.core.gpu_path`). With `config.trt`
    on CUDA the file is opened a second time with TensorRT first: its optimisation profile and
    fp16 flag come from the metadata, which only an open session reads without the `onnx`
    package.
    Raises ModelFileError naming the file."""
    cuda = gpu_path.cuda_provider_options(config.cuda_graphs)
    session, used = ort_session.open_session(path, config.provider, config.threads, cuda)
    if not config.trt or used != ort_session.CUDA:
        return session, used
    meta = ModelMetadata.from_props(dict(session.get_modelmeta().custom_metadata_map))
    del session
    cache = Path(config.trt_cache_dir).expanduser() / (sha256[:16] or path.stem)
    trt = gpu_path.trt_provider_options(cache, meta.dim_z, config.max_batch,
                                        meta.precision == "fp16", config.cuda_graphs)
    return ort_session.open_session(path, config.provider, config.threads, cuda, trt)


def ort_run_options(provider: str, shrink: bool):
    """onnxruntime RunOptions; with shrink, the run ends by returning unused arena memory."""
    import onnxruntime as ort

    options = ort.RunOptions()
    if shrink:
        arenas = "cpu:0" if provider == "CPUExecutionProvider" else "cpu:0;gpu:0"
        options.add_run_config_entry("memory.enable_memory_arena_shrinkage", arenas)
    return options
