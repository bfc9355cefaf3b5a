"""What only a CUDA machine can check: the training step in bf16 on the GPU (with the fast path's
channels_last and fused Adam), data parallelism over NCCL on the GPUs present, ZeRO-2 on CUDA,
the export's parity check on the CUDA provider and the serving engine on it. Every test here is
marked `gpu` and skipped, with the reason, where CUDA is missing; `make gpu-check`
(bench/gpu_check.py) runs them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bigan import models
from bigan.config import LossConfig, ModelConfig, OptimConfig, SpeedConfig, load_config
from bigan.train.optimizers import build_optimizers
from bigan.train.speed import FastPath
from bigan.train.step import Batch, StepRuntime, StepState, gan_iteration
from tests.helpers import tiny_overrides

pytestmark = [pytest.mark.e2e, pytest.mark.gpu]

MODEL = ModelConfig(arch="biggan", resolution=32, num_classes=4, dim_z=16, shared_dim=8, ch=8,
                    d_ch=8, attention=[16])


def _batch(device, n=8, seed=0, real=True) -> Batch:
    g = torch.Generator().manual_seed(seed)
    return Batch(z=torch.randn(n, 16, generator=g).to(device),
                 fake_y=torch.randint(0, 4, (n,), generator=g).to(device), generator=g,
                 real=(torch.rand(n, 3, 32, 32, generator=g) * 2 - 1).to(device) if real else None,
                 real_y=torch.randint(0, 4, (n,), generator=g).to(device) if real else None)


def _step(G, D, device, runtime, fast=None, loss=LossConfig(penalty="r1")):
    fast = fast or FastPath.resolve(SpeedConfig(), device)
    opt_G, opt_D = build_optimizers(G, D, OptimConfig(), fast.optimizer)
    before = [p.detach().clone() for p in G.parameters()]
    metrics = gan_iteration(G, D, opt_G, opt_D, [fast.batch(_batch(device, seed=i)) for i in range(2)],
                            _batch(device, seed=9, real=False), loss, StepState(), runtime)
    assert all(torch.isfinite(v).all() for v in metrics.values()), metrics
    assert any(not torch.equal(a, b) for a, b in zip(before, G.parameters()))
    return metrics


def test_bf16_training_step_on_cuda_with_the_fast_path():
    device = torch.device("cuda")
    fast = FastPath.resolve(SpeedConfig(), device)
    assert fast == FastPath("channels_last", "fused")
    torch.manual_seed(0)
    G, D = (m.to(device) for m in models.build(MODEL))
    fast.models(G, D)
    runtime = StepRuntime(autocast=lambda: torch.autocast("cuda", dtype=torch.bfloat16))
    _step(G, D, device, runtime, fast)


def test_the_trainer_runs_on_cuda_in_bf16(tmp_path):
    from bigan.train.trainer import train

    result = train(load_config(None, tiny_overrides(tmp_path / "run", **{"train.precision": "bf16"})))
    assert result.step == 4 and all(np.isfinite(v) for v in result.metrics.values())


def _ddp_rank(rank: int, world: int, out) -> None:
    import torch.distributed as dist

    from bigan.train import parallel

    torch.cuda.set_device(rank)
    device = torch.device("cuda", rank)
    torch.manual_seed(rank)  # different weights per rank: prepare() must broadcast rank 0's
    G, D = (m.to(device) for m in models.build(MODEL))
    fast = FastPath.resolve(SpeedConfig(), device)
    opt_G, opt_D = build_optimizers(G, D, OptimConfig(), fast.optimizer)
    p = parallel.prepare("ddp", G, D, opt_G, opt_D, 0.0, device)
    gan_iteration(p.G, p.D, p.opt_G, p.opt_D, [_batch(device, seed=10 * rank + i) for i in range(2)],
                  _batch(device, seed=99 + rank, real=False), LossConfig(), StepState(),
                  p.d_runtime, g_runtime=p.g_runtime)
    flat = torch.cat([t.detach().flatten() for t in list(G.parameters()) + list(D.parameters())])
    every = [torch.empty_like(flat) for _ in range(world)]
    dist.all_gather(every, flat)
    if rank == 0:
        out.put([float((e - every[0]).abs().max()) for e in every])


def _zero2_rank(rank: int, world: int, out) -> None:
    from bigan.train import parallel

    torch.cuda.set_device(rank)
    device = torch.device("cuda", rank)
    torch.manual_seed(0)
    G, D = (m.to(device) for m in models.build(MODEL))
    fast = FastPath.resolve(SpeedConfig(), device, "zero2")
    opt_G, opt_D = build_optimizers(G, D, OptimConfig(), fast.optimizer)
    p = parallel.prepare("zero2", G, D, opt_G, opt_D, 0.0, device, batch_per_worker=8)
    before = [t.detach().clone() for t in G.parameters()]
    metrics = gan_iteration(p.G, p.D, p.opt_G, p.opt_D, [_batch(device, seed=i) for i in range(2)],
                            _batch(device, seed=9, real=False), LossConfig(penalty="r1"),
                            StepState(), p.d_runtime, g_runtime=p.g_runtime)
    moved = any(not torch.equal(a, b) for a, b in zip(before, G.parameters()))
    if rank == 0:
        out.put((moved, all(bool(torch.isfinite(v).all()) for v in metrics.values())))


def _spawn(fn, world):
    import torch.multiprocessing as mp

    from tests.process_group import spawn

    out = mp.get_context("spawn").SimpleQueue()
    spawn(fn, (out,), world=world, backend="nccl")
    return out.get()


def test_ddp_over_nccl_on_every_gpu_keeps_the_replicas_identical():
    diffs = _spawn(_ddp_rank, torch.cuda.device_count())
    assert diffs == [0.0] * torch.cuda.device_count()


def test_zero2_on_cuda_trains():
    pytest.importorskip("deepspeed")
    assert _spawn(_zero2_rank, 1) == (True, True)


def test_export_parity_on_the_cuda_provider(tiny_checkpoint, tmp_path):
    pytest.importorskip("onnxruntime")
    from bigan.export.onnx import export_onnx

    report = export_onnx(tiny_checkpoint, tmp_path / "model.onnx", parity_batch=5)
    assert report.provider == "CUDAExecutionProvider"
    assert max(report.max_abs_error.values()) <= 1e-4


def test_the_serving_engine_on_the_cuda_provider_matches_the_cpu(tiny_onnx):
    pytest.importorskip("onnxruntime")
    from serving.core.engine import Engine, EngineConfig

    gpu, cpu = Engine(tiny_onnx, EngineConfig(provider="cuda")), Engine(tiny_onnx, EngineConfig(provider="cpu"))
    assert gpu.provider == "CUDAExecutionProvider"
    z, y = gpu.latents([0, 1, 2, 3], 1.0), np.array([0, 1, 2, 3])
    diff = np.abs(gpu.run(z, y).astype(int) - cpu.run(z, y).astype(int)).max()
    assert diff <= 1
