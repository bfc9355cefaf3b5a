"""The FID Inception network through onnxruntime: the same features, about 3x faster on CPU.

Inception-v3 in TorchScript runs at 0.3-0.8 images/s on one of this machine's cores, so FID at a
few thousand samples takes an hour; onnxruntime's fused convolutions run the same graph about 3x
faster (bench/inception.py). The ONNX copy is exported once from the TorchScript file with
torch's TorchScript-based exporter (the dynamo exporter cannot read a ScriptModule) and cached
under `$XDG_CACHE_HOME/bigan/inception-onnx/<sha256 of the .pt>.onnx`, written under a temporary
name and renamed, so a crash mid-export never leaves a half file that a later run would trust.
Before a cached or fresh copy is used it must reproduce the TorchScript features on a fixed probe
batch (relative error below PROBE_RTOL); otherwise the caller keeps the TorchScript path.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from bigan.eval.real_data import cache_root

log = logging.getLogger(__name__)

# Max |onnx - torch| / max |torch| on the probe batch. Measured 1.3e-6 (fp32, CPU provider);
# 1e-4 leaves room for other CPUs' kernels while any real mismatch (a wrong graph) is O(1).
PROBE_RTOL = 1e-4


def cache_dir() -> Path:
    """The ONNX copies of the Inception network: real_data.cache_root()/inception-onnx."""
    return cache_root() / "inception-onnx"


def onnx_copy(net: torch.jit.ScriptModule, sha256: str) -> Path:
    """The cached ONNX export of `net` (the TorchScript file with this sha256), exported now if
    it is not cached yet. Input x float32 [N, 3, 299, 299] in [-1, 1), dynamic N."""
    path = cache_dir() / f"{sha256}.onnx"
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    log.info("exporting the Inception network to ONNX once: %s", path)
    try:
        with warnings.catch_warnings():  # the TorchScript exporter is deprecated, and says so
            warnings.simplefilter("ignore")
            torch.onnx.export(net, (torch.zeros(2, 3, 299, 299),), str(tmp), dynamo=False,
                              input_names=["x"], dynamic_axes={"x": {0: "n"}}, opset_version=17)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


class OnnxInception:
    """`net` (TorchScript) as an onnxruntime session; call it like the TorchScript module on a
    float tensor. Raises RuntimeError when the copy does not reproduce `net` on the probe."""

    def __init__(self, net: torch.jit.ScriptModule, sha256: str):
        cached = (cache_dir() / f"{sha256}.onnx").is_file()
        try:
            self._open(net, onnx_copy(net, sha256))
        except Exception as e:
            if not cached:
                raise
            # A cached copy that does not load or reproduce the net (damaged, or written by an
            # exporter with a bug since fixed): export it again, once.
            log.warning("re-exporting the cached Inception ONNX copy (%s)", e)
            (cache_dir() / f"{sha256}.onnx").unlink(missing_ok=True)
            self._open(net, onnx_copy(net, sha256))

    def _open(self, net: torch.jit.ScriptModule, path: Path) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()  # as many as torch would use
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), sess_options=options,
                                            providers=["CPUExecutionProvider"])
        self.path = path
        probe = torch.from_numpy(np.random.default_rng(0).uniform(-1, 1, (2, 3, 299, 299))
                                 .astype(np.float32))
        with torch.no_grad():
            want = net(probe)
        want = (want[0] if isinstance(want, (tuple, list)) else want).numpy()
        got = self(probe)[0]
        err = float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-12))
        if not err < PROBE_RTOL:
            raise RuntimeError(f"the ONNX copy {path} differs from the TorchScript network by "
                               f"{err:.3g} (relative) on the probe batch")

    def __call__(self, x: torch.Tensor) -> list[np.ndarray]:
        """The network's outputs (features, and logits when it has them) for x [N, 3, 299, 299]."""
        return self.session.run(None, {"x": x.numpy()})
