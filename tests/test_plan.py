"""`bigan plan` (bigan/train/plan.py, plan_measure.py) and the run log's kimg/h, ETA and
device-hours (bigan/train/run_log.py).

The memory model is fitted on the meta device at per-worker batches 1 and 2 and checked at batch
4 against a real CPU iteration whose tensor bytes are counted (15%: the meta run stands in for
torch's Adam with its two moments only, so the for-loop Adam's per-parameter temporaries are
missing from the model); on a CUDA GPU (`make gpu-check`) against torch.cuda.max_memory_allocated
of a real iteration. The FLOP count is checked against the matmul count of an MLP written
out by hand, so a path that skipped an update or a backward would fail it.
"""

from __future__ import annotations

import json
import time

import pytest
import torch

from bigan.cli import main
from bigan.config import load_config
from bigan.train.plan import memory, stages
from bigan.train.plan_measure import LiveBytes, measure_steps
from bigan.train.run_log import RunLog
from tests.helpers import CONFIGS

pytestmark = pytest.mark.unit

TINY_BIGGAN = ["model.resolution=32", "model.num_classes=10", "model.ch=8", "model.d_ch=8",
               "model.attention=[]", "model.dim_z=20", "model.shared_dim=16",
               "data.source=synthetic"]


def test_live_bytes_counts_allocations_once_and_frees():
    live = LiveBytes()
    with live:
        a = torch.empty(1000)  # 4000 bytes
        view = a[:10]  # same storage: not counted again
        b = torch.empty(500, dtype=torch.float64)  # 4000 bytes
        assert live.live == 8000
        del a, view
        c = torch.empty(250)  # 1000 bytes, after 4000 were freed
    assert live.live == 5000 and live.peak == 8000
    live.mark_grad(c)
    assert live.live_grads == 1000
    del b, c
    assert live.live == 0 and live.live_grads == 0


def test_memory_model_matches_counted_cpu_bytes_at_another_batch():
    cfg = load_config(CONFIGS / "biggan_128.yaml", TINY_BIGGAN)
    fitted = tuple(measure_steps(cfg, (1, 2), device="meta"))
    predicted = memory(fitted, 4, "ddp", 1)
    (real,) = measure_steps(cfg, (4,), device="cpu")
    counted = real.peak_bytes + sum(real.static_bytes.values())
    assert predicted["total"] == pytest.approx(counted, rel=0.15)
    # the part that grows with the batch, on its own (the static part is exact either way)
    transient = predicted["grads"] + predicted["activations"]
    assert transient == pytest.approx(real.peak_bytes, rel=0.15)
    assert real.activation_bytes > fitted[0].activation_bytes  # batch 4 holds more than batch 1


@pytest.mark.gpu
def test_memory_model_matches_max_memory_allocated_on_cuda(record_property):
    """The plan's memory for one GPU against torch.cuda.max_memory_allocated over one real
    iteration (after a warm-up that creates Adam's moments and the gradients, as in a run's
    steady state) at BigGAN-128's paper width, per-GPU batch 32, fp32: the trainer's CUDA path
    (channels_last, fused Adam). `make gpu-check` runs it (bench/gpu_check.py). The model leaves
    out cuBLAS/cuDNN workspaces and the allocator's 512-byte rounding, tens of MiB next to the
    ~GiBs counted here; 20% bounds them (not yet measured on a GPU when written)."""
    import copy

    from bigan import models
    from bigan.train.optimizers import build_optimizers
    from bigan.train.plan_measure import _random_batch
    from bigan.train.speed import FastPath
    from bigan.train.step import StepRuntime, StepState, gan_iteration

    batch = 32
    cfg = load_config(CONFIGS / "biggan_128.yaml", [f"train.batch_size={batch}",
                                                     "train.precision=fp32", "data.source=synthetic"])
    predicted = memory(tuple(measure_steps(cfg, (1, 2), device="meta")), batch, "ddp", 1)
    device = torch.device("cuda")
    torch.manual_seed(0)
    G, D = models.build(cfg.model)
    fast = FastPath.resolve(cfg.speed, device, "ddp")
    fast.models(G, D)
    G_ema = copy.deepcopy(G).eval().requires_grad_(False).to(device)
    G, D = G.to(device), D.to(device)
    opt_G, opt_D = build_optimizers(G, D, cfg.optim, fast.optimizer)
    gen = torch.Generator().manual_seed(0)

    def one() -> None:
        res = cfg.model.resolution
        d_batches = [fast.batch(_random_batch(cfg, batch, res, gen, "cuda"))
                     for _ in range(cfg.optim.d_steps)]
        gan_iteration(G, D, opt_G, opt_D, d_batches, _random_batch(cfg, batch, res, gen, "cuda"),
                      cfg.loss, StepState(), StepRuntime(), aug=cfg.augment, d_call=fast.d_call)

    one()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    one()
    torch.cuda.synchronize()
    measured = torch.cuda.max_memory_allocated()
    assert G_ema is not None  # held on the GPU throughout, as in the trainer
    record_property("plan_bytes", predicted)  # into gpu_check.json (bench/gpu_check.py)
    record_property("max_memory_allocated_bytes", measured)
    assert predicted["total"] == pytest.approx(measured, rel=0.2)


def _mlp_flops(z: int, d: int, h: int, layers: int, k: int, n: int) -> int:
    """Matmul FLOPs (2 per multiply-add) of one iteration of the mlp pair without classes:
    G = z -> h (x layers) -> d, D = d -> h (x layers) -> 1. Backward: a weight gradient for each
    layer of the model updated, an input gradient for each layer whose input needs one."""
    g = [(z, h)] + [(h, h)] * (layers - 1) + [(h, d)]
    dd = [(d, h)] + [(h, h)] * (layers - 1) + [(h, 1)]
    fwd = lambda net: sum(2 * i * o for i, o in net)  # noqa: E731
    # D update: G(z) without grad, D on reals and fakes, each backward to D's weights and to the
    # inputs of all but D's first layer (images need no gradient)
    d_update = fwd(g) + 2 * fwd(dd) + 2 * (fwd(dd) + fwd(dd) - 2 * d * h)
    # G update: G and D forward; D's backward to its inputs only (frozen), G's to its weights and
    # to the inputs of all but its first layer (z needs no gradient)
    g_update = fwd(g) + fwd(dd) + fwd(dd) + (fwd(g) + fwd(g) - 2 * z * h)
    return n * (k * d_update + g_update)


def test_flops_match_an_analytic_count():
    overrides = ["model.mlp_hidden=16", "model.mlp_layers=2", "optim.d_steps=2", "loss.kind=hinge"]
    cfg = load_config(CONFIGS / "toy_2d.yaml", overrides)
    (step,) = measure_steps(cfg, (3,), device="meta")
    assert step.flops == _mlp_flops(z=2, d=2, h=16, layers=2, k=2, n=3)


def test_stages_cover_the_configured_length():
    cfg = load_config(CONFIGS / "progan_1024.yaml", [])
    st = stages(cfg)
    assert [s.resolution for s in st][:3] == [4, 8, 8] and st[-1].resolution == 1024
    assert sum(s.nimg // (s.batch * cfg.optim.d_steps) for s in st) == cfg.train.steps
    b = load_config(CONFIGS / "biggan_128.yaml", [])
    assert stages(b)[0].nimg == b.train.steps * b.train.batch_size * b.optim.d_steps


def test_cli_prints_a_table_and_writes_json(tmp_path, capsys):
    out = tmp_path / "plan.json"
    args = ["plan", str(CONFIGS / "biggan_128.yaml"), *TINY_BIGGAN, "--gpus", "2",
            "--gpu-kind", "a100", "--strategy", "zero2", "--json", str(out)]
    assert main(args) == 0
    table = capsys.readouterr().out
    assert "memory per GPU" in table and "zero2" in table and "GPU-hours" in table
    plan = json.loads(out.read_text())
    assert plan["gpus"] == 2 and plan["strategy"] == "zero2"
    assert plan["gpu_hours"] == pytest.approx(2 * plan["hours"])
    m = plan["memory_per_gpu"]
    assert m["zero1"]["adam"] == pytest.approx(m["ddp"]["adam"] / 2, abs=1)  # Adam split in 2
    assert m["zero3"]["weights"] < m["zero2"]["weights"] == m["ddp"]["weights"]
    # time to the length: kimg x s/kimg, at 40% of the A100's bf16/fp32 peak
    assert plan["hours"] * 3600 == pytest.approx(plan["total_kimg"] * plan["sec_per_kimg"])
    assert plan["gpu"]["peak_tflops"] == 312.0 if plan["config"]["precision"] == "bf16" else 19.5


@pytest.mark.parametrize("options, names", [
    (["--gpus", "0"], "--gpus=0"),
    (["--gpus", "3"], "train.batch_size=256 must be divisible by --gpus=3"),
    (["--utilisation", "1.5"], "--utilisation=1.5"),
    (["--gpu-kind", "tpuv3-core", "train.precision=fp32"], "publishes no fp32 peak"),
])
def test_bad_options_get_one_line(options, names, capsys):
    assert main(["plan", str(CONFIGS / "biggan_128.yaml"), *options]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and names in err and err.startswith("bigan plan: error:")


def test_unknown_gpu_kind_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["plan", str(CONFIGS / "biggan_128.yaml"), "--gpu-kind", "tpu9"])
    assert exc.value.code == 2 and "invalid choice: 'tpu9'" in capsys.readouterr().err


def test_run_log_reports_kimg_per_hour_eta_and_device_hours(tmp_path):
    log = RunLog(tmp_path, steps=10, step=0, main=True, log_with=())
    for _ in range(4):
        log.count(500)
    time.sleep(0.05)  # a measurable interval, not a synchronisation
    m = log.write(4, {}, cur_nimg=2000)
    log.close()
    assert m["speed/kimg_per_hour"] == pytest.approx(m["speed/img_per_sec"] * 3.6, rel=0.05)
    sec = 2000 / m["speed/img_per_sec"]
    assert m["progress/eta_hours"] == pytest.approx(6 * sec / 4 / 3600, rel=0.05)
    assert m["progress/device_hours"] == pytest.approx(sec / 3600, rel=0.05)
    # a resume keeps counting device-hours from what metrics.jsonl holds
    again = RunLog(tmp_path, steps=10, step=4, main=True, log_with=())
    again.count(500)
    m2 = again.write(5, {}, cur_nimg=2500)
    again.close()
    assert m2["progress/device_hours"] > m["progress/device_hours"]
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [4, 5] and "progress/eta_hours" in lines[-1]


def test_flops_include_the_gradient_penalty():
    """WGAN-GP's double backward is counted (and runs: torch's FlopCounterMode made its
    autograd.grad fail)."""
    base = ["model.mlp_hidden=16", "model.mlp_layers=2", "loss.kind=wasserstein"]
    cfg = load_config(CONFIGS / "toy_2d.yaml", base)
    gp = load_config(CONFIGS / "toy_2d.yaml", [*base, "loss.penalty=wgan-gp"])
    (plain,), (penalised,) = measure_steps(cfg, (3,)), measure_steps(gp, (3,))
    assert plain.flops == _mlp_flops(z=2, d=2, h=16, layers=2, k=1, n=3)
    assert penalised.flops > plain.flops
