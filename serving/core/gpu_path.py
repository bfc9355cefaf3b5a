"""The GPU fast path of the engine: provider options, IO binding, padded batch buckets, CUDA graphs.

`serving.core.engine` calls `provider_options` when it opens a session and `device_runner` after:
with the CUDA provider (chosen automatically when a GPU is usable) every run goes through a
`BoundRunner` instead of `session.run`.

- **IO binding.** Inputs are copied to the device once, into OrtValues bound to the session, and
  only the `uint8` output the server sends is bound and copied back (a quarter of the bytes of
  the float32 `images_float`, which stays on the device). `session.run` would copy both ways
  through fresh host buffers on every call.
- **cuDNN.** `cudnn_conv_algo_search=EXHAUSTIVE` times every convolution algorithm once per shape
  and `cudnn_conv_use_max_workspace=1` lets cuDNN use as much scratch memory as the fastest one
  needs (onnxruntime's default caps it at 32 MB, which rules out the fastest algorithms of large
  convolutions).
- **CUDA graphs** (`--cuda-graphs`). A CUDA graph replays a recorded launch sequence with fixed
  shapes and fixed device addresses, saving the per-kernel launch cost that dominates small
  batches. So every batch is padded up to the next of a few fixed sizes (`batch_buckets`: powers
  of two up to max_batch), each bucket has its own preallocated, bound input and output buffers
  and its own graph (`gpu_graph_id`), and the result is sliced back to the real rows. Padding is
  harmless because the generator has no cross-sample operation in eval mode (batch norm uses its
  running statistics), which the CPU tests check image for image.
- **TensorRT** (`--trt`), when this onnxruntime has the provider: tried before CUDA, with its
  engines cached on disk (`trt_cache_dir`) so only the first start pays the build, and an
  optimisation profile covering batch 1..max_batch.
- **fp16 models.** A model whose inputs are float16 (a foreign or hand-converted file) gets its
  latents cast on the host before the copy; bigan's own fp16 exports keep float32 inputs and
  uint8 outputs and need no cast.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np

from bigan.ort_session import batch_buckets  # one rule for the engine and export's Triton config

log = logging.getLogger(__name__)

_NUMPY_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16,
                "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(uint8)": np.uint8}


def bucket_for(n: int, buckets: tuple[int, ...]) -> int:
    """The smallest bucket holding n rows. Raises ValueError for n outside 1..max(buckets)."""
    for b in buckets:
        if n <= b and n >= 1:
            return b
    raise ValueError(f"a batch of {n} rows fits no bucket of {list(buckets)}")


def pad_rows(a: np.ndarray, size: int) -> np.ndarray:
    """`a` with zero rows appended up to `size` rows (a itself when it has `size` already). Zero
    latents and class 0 are valid inputs of every model, so a padded row never fails a run."""
    if len(a) > size:
        raise ValueError(f"{len(a)} rows do not fit in {size}")
    if len(a) == size:
        return a
    return np.concatenate([a, np.zeros((size - len(a), *a.shape[1:]), a.dtype)])


def cuda_provider_options(cuda_graphs: bool = False) -> dict[str, str]:
    """onnxruntime CUDA execution provider options of the server (see the module docstring)."""
    options = {"arena_extend_strategy": "kSameAsRequested",  # bounded arena (serving.core.engine)
               "cudnn_conv_algo_search": "EXHAUSTIVE",
               "cudnn_conv_use_max_workspace": "1",
               "do_copy_in_default_stream": "1"}
    if cuda_graphs:
        options["enable_cuda_graph"] = "1"
    return options


def trt_provider_options(cache_dir: str | Path, dim_z: int, max_batch: int, fp16: bool,
                         cuda_graphs: bool = False) -> dict[str, str]:
    """TensorRT execution provider options: engine and timing caches in `cache_dir`, one
    optimisation profile for batches 1..max_batch (optimised at max_batch), fp16 kernels for an
    fp16 model, and TensorRT's own CUDA graphs with --cuda-graphs (the CUDA provider's capture
    needs every node on CUDA)."""
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    return {"trt_cuda_graph_enable": "True" if cuda_graphs else "False",
            "trt_engine_cache_enable": "True", "trt_engine_cache_path": str(cache_dir),
            "trt_timing_cache_enable": "True", "trt_timing_cache_path": str(cache_dir),
            "trt_fp16_enable": "True" if fp16 else "False",
            "trt_profile_min_shapes": f"z:1x{dim_z},y:1",
            "trt_profile_opt_shapes": f"z:{max_batch}x{dim_z},y:{max_batch}",
            "trt_profile_max_shapes": f"z:{max_batch}x{dim_z},y:{max_batch}"}


def input_types(session: Any) -> dict[str, type]:
    """NumPy dtype of each graph input (float16 inputs of an fp16 model get cast latents)."""
    out = {}
    for arg in session.get_inputs():
        if arg.type not in _NUMPY_TYPES:
            raise ValueError(f"graph input {arg.name!r} has type {arg.type}, which the server "
                             "cannot feed")
        out[arg.name] = _NUMPY_TYPES[arg.type]
    return out


class BoundRunner:
    """`run(feed) -> uint8 images` through IO binding on `device` ("cuda", or "cpu" in tests).

    buckets: None runs each batch at its own size; a tuple pads it to the next bucket and runs
    a binding made once per bucket, with preallocated inputs and output whose addresses never
    change (what CUDA graphs need; `graphs` then names each bucket's graph by `gpu_graph_id`).
    image_shape: (H, W, C) of the `images` output, needed to preallocate it."""

    def __init__(self, session: Any, device: str = "cuda", buckets: tuple[int, ...] | None = None,
                 image_shape: tuple[int, int, int] | None = None, graphs: bool = False):
        import onnxruntime as ort

        self.ort, self.session, self.device = ort, session, device
        self.types = input_types(session)
        self.buckets, self.graphs = buckets, graphs
        if graphs and buckets is None:
            raise ValueError("CUDA graphs need fixed shapes: give buckets")
        self._bound: dict[int, tuple[Any, dict[str, Any], Any, Any]] = {}
        self._lock = threading.Lock()
        if buckets is not None:
            if image_shape is None:
                raise ValueError("padded buckets need the image shape to preallocate outputs")
            # Graph ids from 1: id 0 is the default of a plain `session.run`, which start-up's
            # metadata check makes with its own buffers; replaying that graph would read them.
            for k, b in enumerate(buckets, start=1):
                self._bound[b] = self._bind_bucket(b, k, image_shape)

    def _bind_bucket(self, size: int, graph_id: int, image_shape: tuple[int, int, int]):
        ort, binding = self.ort, self.session.io_binding()
        inputs = {}
        for arg in self.session.get_inputs():
            shape = [size] + [d for d in arg.shape[1:]]
            value = ort.OrtValue.ortvalue_from_shape_and_type(shape, self.types[arg.name],
                                                              self.device, 0)
            binding.bind_ortvalue_input(arg.name, value)
            inputs[arg.name] = value
        out = ort.OrtValue.ortvalue_from_shape_and_type([size, *image_shape], np.uint8,
                                                        self.device, 0)
        binding.bind_ortvalue_output("images", out)
        options = ort.RunOptions()
        if self.graphs:
            options.add_run_config_entry("gpu_graph_id", str(graph_id))
        return binding, inputs, out, options

    def run(self, feed: dict[str, np.ndarray], run_options: Any = None) -> np.ndarray:
        """uint8 images for one feed (z, y and, for graphs with a psi input, psi: the same
        dict `session.run` takes), each input cast to the graph's own type."""
        feeds = {name: np.ascontiguousarray(a, self.types[name]) for name, a in feed.items()}
        n = len(feeds["y"])
        if self.buckets is None:
            binding = self.session.io_binding()
            for name, array in feeds.items():
                binding.bind_ortvalue_input(
                    name, self.ort.OrtValue.ortvalue_from_numpy(array, self.device, 0))
            binding.bind_output("images", self.device)
            self.session.run_with_iobinding(binding, run_options)
            return binding.copy_outputs_to_cpu()[0]
        size = bucket_for(n, self.buckets)
        binding, inputs, out, options = self._bound[size]
        with self._lock:  # one run per bucket at a time: its buffers are shared
            for name, array in feeds.items():
                inputs[name].update_inplace(pad_rows(array, size))
            # The bucket's own options (its graph id); arena shrinking would free captured memory.
            self.session.run_with_iobinding(binding, options)
            return out.numpy()[:n].copy()

    def warm_up(self) -> None:
        """Run every bucket twice with padding rows only: onnxruntime allocates on a graph id's
        first run and captures on the next, which would otherwise fall on the first requests."""
        for size in self.buckets or ():
            # Zeros are valid rows of every input: latents, class 0, psi 0 (the first stats set).
            feed = {arg.name: np.zeros([size, *arg.shape[1:]], self.types[arg.name])
                    for arg in self.session.get_inputs()}
            for _ in range(2):
                self.run(feed)


def device_runner(session: Any, provider: str, config: Any,
                  image_shape: tuple[int, int, int]) -> BoundRunner | None:
    """The runner `serving.core.engine` uses instead of `session.run`: IO binding with the CUDA
    provider (padded buckets with --cuda-graphs), None (plain `session.run`) on CPU, where there
    is no device copy to save and --cuda-graphs means nothing."""
    if provider not in ("CUDAExecutionProvider", "TensorrtExecutionProvider"):
        if getattr(config, "cuda_graphs", False):
            log.warning("--cuda-graphs needs the CUDA provider; running on %s without", provider)
        return None
    if config.cuda_graphs:
        buckets = batch_buckets(config.max_batch)
        log.info("CUDA graphs over padded batch buckets %s", list(buckets))
        runner = BoundRunner(session, "cuda", buckets, image_shape, graphs=True)
        try:
            runner.warm_up()
        except Exception as e:  # onnxruntime's own types: a node that cannot be captured
            raise RuntimeError(f"capturing CUDA graphs failed ({type(e).__name__}: "
                               f"{str(e).strip()[:300]}); serve without --cuda-graphs") from e
        return runner
    return BoundRunner(session, "cuda")
