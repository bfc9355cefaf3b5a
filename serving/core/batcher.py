"""Micro-batching: concurrent requests merged into one generator run.

Requests wait in a bounded queue; one asyncio task takes the oldest, then keeps taking more until
the batch holds `max_batch` images or `max_wait_ms` has passed since it started (no wait when
requests were already queued as the previous run ended: work-conserving under load; nor when no
other request is in the server to join it, as `others_in_flight` counts: a lone client), and runs
the merged batch in the batcher's own worker thread (`RunThread`), so the event loop keeps
accepting requests while the session computes: that is what lets the next batch form. A request
larger than `max_batch` runs alone (the run function splits it). A full queue raises `QueueFull`
at once rather than letting latency grow without bound; the HTTP layer turns it into 503 with
Retry-After, which is the time the images already queued take at the measured rate (seconds per
image, a moving average of the runs), so a client backs off for as long as the backlog really
lasts.

A run that fails fails alone: when a merged batch raises, each request in it is run again by
itself, so one bad request (or one the graph cannot draw) gets its error and its batch-mates get
their images, instead of every user sharing the batch getting a 500.

Batching never changes which image a request gets: every latent is drawn from its own seeded
generator before it reaches the queue, and the generator has no cross-sample operations in eval
mode. Only float rounding inside the runtime may differ with the batch size (at most one uint8 level).
"""

from __future__ import annotations

import asyncio
import collections
import math
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

# run(z, y) -> images, or run(z, y, psi) for requests that carry psi (graphs with a psi input).
RunFn = Callable[..., np.ndarray]
BatchHook = Callable[[int, float], None]  # (images in the batch, seconds the run took)
# How many requests are in the server but not (yet) in this batcher: being read, drawing their
# latents, or encoding an answer. Only those can join a batch that waits for company.
OthersFn = Callable[[], int]
# (requests answered by the run, images, seconds the run took, seconds those requests queued):
# what Triton's per-model counters need (serving.core.metrics), once per successful run.
RunHook = Callable[[int, int, float, float], None]


MAX_RETRY_AFTER_S = 600  # a Retry-After longer than this says "overloaded" no better
# Before any run has ended no rate is measured. A Retry-After of 1 s then sent clients back four
# times before a cold server's backlog cleared (~4.4 s, issue 33); 5 s over-waits less than that
# under-waits, and a first run slower than that is seen through the time it has taken so far.
UNMEASURED_RETRY_AFTER_S = 5


class QueueFull(RuntimeError):
    """Too many requests are already waiting; retry after `retry_after_s` seconds."""

    def __init__(self, depth: int, retry_after_s: int = 1, images: int | None = None):
        held = "" if images is None else f" ({images} images with the batch being drawn)"
        super().__init__(f"{depth} requests are already waiting for the generator{held}; retry "
                         f"in {retry_after_s} s or lower the request rate")
        self.retry_after_s = retry_after_s


def retry_after_s(queued_images: int, seconds_per_image: float | None,
                  lower_bound_s: float = 0.0) -> int:
    """Whole seconds until `queued_images` are drawn at `seconds_per_image`, in
    1..MAX_RETRY_AFTER_S: the Retry-After of a 503. With no rate measured yet (None), a
    conservative guess: at least UNMEASURED_RETRY_AFTER_S and at least `lower_bound_s` (what the
    running first batch already shows of the rate)."""
    if seconds_per_image is None:
        guess = max(UNMEASURED_RETRY_AFTER_S, lower_bound_s)
        return max(1, min(MAX_RETRY_AFTER_S, math.ceil(guess)))
    return max(1, min(MAX_RETRY_AFTER_S, math.ceil(queued_images * seconds_per_image)))


class RunThread:
    """Runs calls one after another in one long-lived thread; `call` returns an asyncio future
    of the result on the running loop. In place of `asyncio.to_thread` per run, which goes
    through the default executor (a context copy, a work item, a concurrent future chained to an
    asyncio one) and alternates between its pool threads: 21 against 33 us a no-op round trip
    on one core with uvloop. The thread starts with the first call and ends at `stop`, after the
    call it is running (a call cancelled by its caller still runs to its end, unseen)."""

    def __init__(self, name: str):
        self.name = name
        self._calls: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def call(self, fn: Callable, *args) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._serve, args=(self._calls,), name=self.name,
                                            daemon=True)
            self._thread.start()
        self._calls.put((future, fn, args))
        return future

    def stop(self) -> None:
        """Let the thread end once the calls queued before this one are done. A later `call`
        starts a new thread with a queue of its own, so the old one cannot take its calls."""
        if self._thread is not None:
            self._calls.put(None)
            self._calls, self._thread = queue.SimpleQueue(), None

    @staticmethod
    def _serve(calls: queue.SimpleQueue) -> None:
        while (item := calls.get()) is not None:
            future, fn, args = item
            try:
                result, error = fn(*args), None
            except BaseException as e:  # the caller's to raise, as to_thread would
                result, error = None, e
            try:
                future.get_loop().call_soon_threadsafe(_settle, future, result, error)
            except RuntimeError:  # its loop is closed: nobody waits for this answer
                pass
            del item, future, result, error  # no reference kept while waiting for the next


def _settle(future: asyncio.Future, result, error: BaseException | None) -> None:
    if future.done():  # cancelled while the call ran
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)


@dataclass
class _Job:
    z: np.ndarray                      # float32 [n, dim_z]
    y: np.ndarray                      # int64 [n]
    psi: np.ndarray | None             # float32 [n]: each row's truncation (psi-input graphs)
    future: asyncio.Future = field(repr=False)
    queued_at: float = field(default_factory=time.perf_counter)  # when submit queued it

    def __len__(self) -> int:
        return len(self.y)


class MicroBatcher:
    """Merges `submit(z, y, psi)` calls into runs of `run(z, y, psi) -> images` of at most
    `max_batch` rows; psi (one value per row, or None) travels with its rows, so requests batched
    together keep their own truncation. With `others_in_flight`, a batch waits for company only
    while it counts some request that may still join (without it: always, up to max_wait)."""

    def __init__(self, run: RunFn, max_batch: int, max_wait_ms: float, max_queue: int,
                 on_batch: BatchHook | None = None, others_in_flight: OthersFn | None = None):
        if max_batch < 1 or max_queue < 1 or max_wait_ms < 0:
            raise ValueError(f"need max_batch >= 1, max_queue >= 1, max_wait_ms >= 0; got "
                             f"{max_batch}, {max_queue}, {max_wait_ms}")
        self._run, self.on_batch = run, on_batch  # on_batch: metrics hook
        self.others_in_flight = others_in_flight
        self.on_run: RunHook | None = None  # the Triton counters' hook (serving.app sets it)
        self.max_batch, self.max_wait_s, self.max_queue = max_batch, max_wait_ms / 1000, max_queue
        self._jobs: collections.deque[_Job] = collections.deque()
        self._arrived: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._runner = RunThread("bigan-batch-run")
        self.seconds_per_image: float | None = None  # moving average over runs; None: no run yet
        self._running_images = 0  # images of the batch being computed
        self._running_since = 0.0  # when that batch's run began (time.perf_counter)
        # Totals since start, for the v2 statistics extension: successful runs, their images and
        # seconds, and the seconds requests waited in the queue before their run began.
        self.runs, self.run_images, self.run_seconds = 0, 0, 0.0
        self.queued_requests, self.queue_seconds = 0, 0.0

    @property
    def depth(self) -> int:
        """Requests waiting for a batch (not counting the batch being computed)."""
        return len(self._jobs)

    @property
    def queued_images(self) -> int:
        """Images waiting for a batch plus those of the batch being computed."""
        return sum(len(job) for job in self._jobs) + self._running_images

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        """Start the batching task on the running event loop (again, if it ran on another)."""
        if not (self.running and self._task.get_loop() is asyncio.get_running_loop()):
            self._arrived = asyncio.Event()
            self._task = asyncio.create_task(self._loop(), name="bigan-micro-batcher")

    async def stop(self) -> None:
        """Stop batching; every request not yet answered, waiting or in the batch being run,
        fails with RuntimeError (the run itself finishes in its thread, unseen)."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        self._runner.stop()
        _fail_unanswered(self._jobs)
        self._jobs.clear()

    async def submit(self, z: np.ndarray, y: np.ndarray,
                     psi: np.ndarray | None = None) -> np.ndarray:
        """uint8 images for latents z [n, dim_z], classes y [n] (and psi [n]), in some batch."""
        # Hosts that skip the ASGI lifespan, or run each request on a fresh loop, start it here.
        await self.start()
        if len(self._jobs) >= self.max_queue:
            images = self.queued_images
            raise QueueFull(len(self._jobs), retry_after_s(images, self.seconds_per_image,
                                                           self._unmeasured_bound_s()), images)
        job = _Job(z, y, psi, asyncio.get_running_loop().create_future())
        self._jobs.append(job)
        self._arrived.set()
        return await job.future

    def _unmeasured_bound_s(self) -> float:
        """Seconds the queued images take at least, judged by the run in progress alone: it has
        run this long for its images and is not done (0 when nothing runs)."""
        if not self._running_images:
            return 0.0
        per_image = (time.perf_counter() - self._running_since) / self._running_images
        return self.queued_images * per_image

    async def _loop(self) -> None:
        while True:
            batch = await self._collect()
            if batch:
                await self._execute(batch)

    async def _collect(self) -> list[_Job]:
        """The next batch: the oldest job plus whatever fits and is waiting. Only a batch whose
        first job found the runtime idle also waits up to max_wait for more: when jobs queued up
        during the previous run, that run was their wait. Waiting on top of it left the runtime idle
        5 ms per ~85 ms batch at 16 clients on CPU, where a larger batch saves nothing per image.
        Nor does it wait while `others_in_flight` counts no request that could join: a lone
        client's request waited the whole window for company that cannot come (5 ms a request,
        the default on CUDA), since that client sends its next request only after this answer."""
        backlogged = bool(self._jobs)
        while not self._jobs:
            self._arrived.clear()
            await self._arrived.wait()
        batch = [self._jobs.popleft()]
        size = len(batch[0])
        deadline = time.monotonic() + (0.0 if backlogged else self.max_wait_s)
        while size < self.max_batch:
            if self._jobs:
                if size + len(self._jobs[0]) > self.max_batch:
                    break  # it leads the next batch
                job = self._jobs.popleft()
                batch.append(job)
                size += len(job)
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0 or (self.others_in_flight is not None
                                  and self.others_in_flight() <= 0):
                break
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                break
            except asyncio.CancelledError:  # stopped while gathering: stop() answers them
                self._jobs.extendleft(reversed(batch))
                raise
        return [job for job in batch if not job.future.done()]  # drop cancelled clients

    async def _execute(self, batch: list[_Job]) -> None:
        """Run `batch` and answer every job of it, also when the run is cancelled (by `stop`,
        or a drain that timed out): a cancelled run's jobs fail rather than wait forever."""
        try:
            await self._run_batch(batch)
        finally:
            _fail_unanswered(batch)

    async def _run_batch(self, batch: list[_Job]) -> None:
        now = time.perf_counter()
        waited = [now - job.queued_at for job in batch]
        self.queued_requests += len(batch)
        self.queue_seconds += sum(waited)
        z = np.concatenate([job.z for job in batch])
        y = np.concatenate([job.y for job in batch])
        psi = None if batch[0].psi is None else np.concatenate([job.psi for job in batch])
        self._running_images, self._running_since = len(y), time.perf_counter()
        try:
            images = await self._timed_run(z, y, psi, len(batch), sum(waited))
        except Exception as e:
            if len(batch) == 1:  # the request learns why; the loop keeps serving
                if not batch[0].future.done():
                    batch[0].future.set_exception(e)
                return
            # Some request broke the merged run: run each alone, so only the guilty ones fail.
            for job, queued in zip(batch, waited):
                if job.future.done():
                    continue
                try:
                    job.future.set_result(await self._timed_run(job.z, job.y, job.psi, 1, queued))
                except Exception as alone:
                    job.future.set_exception(alone)
            return
        finally:
            self._running_images = 0
        offset = 0
        for job in batch:
            if not job.future.done():
                job.future.set_result(images[offset:offset + len(job)])
            offset += len(job)

    async def _timed_run(self, z: np.ndarray, y: np.ndarray, psi: np.ndarray | None,
                         requests: int, queued_s: float) -> np.ndarray:
        """`run` in the worker thread for `requests` requests that queued `queued_s` seconds in
        all; a successful run updates the rate and calls on_batch and on_run."""
        start = time.perf_counter()
        args = (z, y) if psi is None else (z, y, psi)
        images = await self._runner.call(self._run, *args)
        seconds = time.perf_counter() - start
        per_image = seconds / max(len(y), 1)
        # Moving average: follows a change of load in ~10 runs, ignores one slow run.
        self.seconds_per_image = (per_image if self.seconds_per_image is None
                                  else 0.8 * self.seconds_per_image + 0.2 * per_image)
        self.runs, self.run_images, self.run_seconds = (self.runs + 1, self.run_images + len(y),
                                                        self.run_seconds + seconds)
        if self.on_batch is not None:
            self.on_batch(len(y), seconds)
        if self.on_run is not None:
            self.on_run(requests, len(y), seconds, queued_s)
        return images


def _fail_unanswered(jobs) -> None:
    """Fail each job whose future has no answer yet: the batcher is stopping."""
    for job in jobs:
        if not job.future.done():
            job.future.set_exception(RuntimeError("the server is shutting down"))
