"""Data-parallel strategies (`bigan/train/parallel.py`): 2 processes == 1 process on the whole batch.

Real gloo groups on 127.0.0.1, spawned once per test and reused for every case (process start-up
and the DeepSpeed import dominate the cost). The reference is one process on the concatenated
batch in the pytest process itself, with plain modules and no process group.
"""

from __future__ import annotations

import faulthandler
import os
import traceback
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
import torch
import torch.multiprocessing as mp

from bigan import models
from bigan.config import LossConfig, ModelConfig, OptimConfig
from bigan.train.optimizers import build_optimizers
from bigan.train.step import Batch, StepRuntime, StepState, gan_iteration
from tests.helpers import ROOT
from tests.process_group import spawn

pytestmark = pytest.mark.dist

GLOBAL_BATCH = 8
ITERATIONS = 3
D_STEPS = 2
GRAD_CLIP = 0.5
# Two penalties that draw differently: WGAN-GP draws one eps per sample (sliced by Batch.rows);
# R1 draws nothing but runs with label noise, which draws a flip per sample and per logit.
LOSSES = {
    "wgan-gp": LossConfig(kind="hinge", penalty="wgan-gp", penalty_weight=10.0),
    "r1+noise": LossConfig(kind="nonsaturating", penalty="r1", penalty_weight=1.0, label_noise=0.2),
}


def _model_cfg() -> ModelConfig:
    return ModelConfig(arch="biggan", resolution=32, num_classes=4, ch=4, d_ch=4, dim_z=16,
                       shared_dim=8, attention=[16])


def _build(seed: int = 0, adam: bool = False):
    """Tiny BigGAN G, D and optimizers. Parity uses SGD with momentum (partitioned optimizer
    state under ZeRO, linear in the gradients); see the tolerance note at PARITY_TOL."""
    torch.manual_seed(seed)
    G, D = models.build(_model_cfg())
    if adam:
        return (G, D, *build_optimizers(G, D, OptimConfig(g_lr=1e-3, d_lr=2e-3, betas=[0.0, 0.999],
                                                          eps=1e-6)))
    return (G, D, torch.optim.SGD(G.parameters(), lr=0.02, momentum=0.9),
            torch.optim.SGD(D.parameters(), lr=0.05, momentum=0.9))


def _batches(it: int, rank: int, world: int) -> tuple[list[Batch], Batch]:
    """The global batches of iteration `it`, keyed by (it, sub-step), and this rank's rows."""
    per = GLOBAL_BATCH // world
    rows = slice(rank * per, (rank + 1) * per)
    place = (rank * per, GLOBAL_BATCH) if world > 1 else None

    def one(sub: int, with_real: bool) -> Batch:
        gen = torch.Generator().manual_seed(1000 * it + sub)
        z = torch.randn(GLOBAL_BATCH, 16, generator=gen)
        y = torch.randint(0, 4, (GLOBAL_BATCH,), generator=gen)
        real = torch.rand(GLOBAL_BATCH, 3, 32, 32, generator=gen) * 2 - 1 if with_real else None
        real_y = torch.randint(0, 4, (GLOBAL_BATCH,), generator=gen) if with_real else None
        return Batch(z=z[rows], fake_y=y[rows], generator=gen, rows=place,
                     real=None if real is None else real[rows],
                     real_y=None if real_y is None else real_y[rows])

    return [one(k, True) for k in range(D_STEPS)], one(D_STEPS, False)


def _train(G, D, opt_G, opt_D, loss: LossConfig, rank: int, world: int, start: int = 0,
           iterations: int = ITERATIONS, runtime=None, g_runtime=None, state=None) -> StepState:
    state = state or StepState()
    for it in range(start, start + iterations):
        d_batches, g_batch = _batches(it, rank, world)
        gan_iteration(G, D, opt_G, opt_D, d_batches, g_batch, loss, state, runtime, g_runtime)
    return state


def _reference(loss: LossConfig) -> dict[str, dict[str, torch.Tensor]]:
    G, D, opt_G, opt_D = _build()
    runtime = StepRuntime(grad_clip=GRAD_CLIP)
    _train(G, D, opt_G, opt_D, loss, 0, 1, runtime=runtime)
    return {"G": G.state_dict(), "D": D.state_dict()}


# --- worker processes ---------------------------------------------------------------------------------

def _job(rank: int, world: int, job: str, out: str) -> None:
    """One rank of JOBS[job] (tests.process_group.spawn has joined it to the gloo group)."""
    fault = open(Path(out) / f"fault-{rank}.txt", "w")  # Python stacks if the rank dies natively
    faulthandler.enable(file=fault, all_threads=True)
    try:
        JOBS[job](rank, world, Path(out))
    except BaseException:
        (Path(out) / f"error-{rank}.txt").write_text(traceback.format_exc())
        raise
    finally:
        fault.close()


def _spawn(job: str, out: Path, world: int = 2) -> None:
    """Run JOBS[job] on `world` ranks; a rank that fails a check, raises or dies natively fails
    the test with its traceback or its faulthandler stacks. No retry: the native abort once seen
    here ("terminate called without an active exception") came from interpreter finalization
    racing gloo's threads, which tests.process_group.spawn now skips (see there); 30 consecutive
    runs of the parity job were clean after that change."""
    out.mkdir(parents=True, exist_ok=True)
    try:
        spawn(_job, (job, str(out)), world)
    except Exception as e:
        errors = "\n".join(p.read_text() for p in sorted(out.glob("error-*.txt")))
        if isinstance(e, mp.ProcessExitedException) and not errors:
            stacks = (out / f"fault-{e.error_index}.txt").read_text()[-3000:]
            errors = f"rank {e.error_index} died of {e.signal_name}; its stacks:\n{stacks}"
        raise AssertionError(f"worker failed:\n{errors or e}") from None


def _parity_job(rank: int, world: int, out: Path) -> None:
    from bigan.train import parallel

    for strategy in parallel.STRATEGIES:
        for name, loss in LOSSES.items():
            G, D, opt_G, opt_D = _build()
            p = parallel.prepare(strategy, G, D, opt_G, opt_D, GRAD_CLIP, torch.device("cpu"),
                                 batch_per_worker=GLOBAL_BATCH // world,
                                 deepspeed_overrides=_SMALL_MODEL_ZERO3)
            for engine in p.engines.values():
                assert engine.gradient_clipping() == GRAD_CLIP
            _train(p.G, p.D, p.opt_G, p.opt_D, loss, rank, world,
                   runtime=p.d_runtime, g_runtime=p.g_runtime)
            with p.gathered("G"), p.gathered("D"):
                state = {"G": {k: v.clone() for k, v in p.G.state_dict().items()},
                         "D": {k: v.clone() for k, v in p.D.state_dict().items()}}
            torch.save(state, out / f"{strategy}-{name}-{rank}.pt")


# Tiny models sit below ZeRO-3's default persistence threshold (1e5 elements), which would keep
# every parameter whole and test nothing: partition them all.
_SMALL_MODEL_ZERO3 = {"zero_optimization": {"stage3_param_persistence_threshold": 0,
                                            "stage3_model_persistence_threshold": 0}}


# --- checkpoints: every job trains with Adam (real optimizer state) and checks what it loads ------

def _prepared(strategy: str, world: int, seed: int = 0):
    from bigan.train import parallel

    G, D, opt_G, opt_D = _build(seed, adam=True)
    return parallel.prepare(strategy, G, D, opt_G, opt_D, GRAD_CLIP, torch.device("cpu"),
                            batch_per_worker=GLOBAL_BATCH // world,
                            deepspeed_overrides=_SMALL_MODEL_ZERO3)


def _trained(strategy: str, rank: int, world: int):
    p = _prepared(strategy, world)
    _train(p.G, p.D, p.opt_G, p.opt_D, LOSSES["wgan-gp"], rank, world, iterations=1,
           runtime=p.d_runtime, g_runtime=p.g_runtime)
    return p


def _assert_same_state(got: dict | None, want: dict, what: str) -> None:
    if got is None:  # not rank 0
        return
    for part in ("G", "D", "opt_G", "opt_D"):
        torch.testing.assert_close(got[part], want[part], rtol=0, atol=0, msg=f"{what}: {part}")


def _save(p, out: Path, tag: str, rank: int, world: int) -> None:
    """The full state in out/tag.full.pt and each rank's part in out/tag.part-R.pt."""
    from bigan.train import parallel_state

    torch.save(parallel_state.state_dicts(p, (rank, world)), out / f"{tag}.part-{rank}.pt")
    full = parallel_state.full_state_dicts(p)
    if rank == 0:
        torch.save(full, out / f"{tag}.full.pt")
    if world > 1:
        torch.distributed.barrier()


def _load_and_check(out: Path, tag: str, strategy: str, world: int) -> None:
    """Load out/tag's parts, merged as `load_checkpoint` merges them, into a fresh `strategy`
    pair; the loaded state must equal the saved full state exactly."""
    from bigan.checkpoint.loading import _merge_into
    from bigan.train import parallel_state

    p = _prepared(strategy, world, seed=1)  # other initial weights: the load must replace them
    want = torch.load(out / f"{tag}.full.pt")
    merged: dict = {}
    for part in sorted(out.glob(f"{tag}.part-*.pt")):
        _merge_into(merged, "state", torch.load(part), part)
    parallel_state.load_full_state(p, merged["state"])
    _assert_same_state(parallel_state.full_state_dicts(p), want, f"{tag} -> {strategy} on {world}")


def _one_process_writes(rank: int, world: int, out: Path) -> None:
    _save(_trained("zero2", rank, world), out, "w1-zero2", rank, world)


def _sharded_save_protocol(rank: int, world: int, out: Path) -> None:
    """Both ranks write their part of step 1; at step 2 rank 1 fails, so every rank must raise
    and step 1 must stay the newest, intact checkpoint."""
    from bigan.checkpoint import sharded as sharded_save
    from bigan.checkpoint import store as checkpoint
    from bigan.checkpoint.loading import load_checkpoint
    from bigan.checkpoint.resume import find_resume

    root = out / "protocol"
    assert sharded_save.shares_directory(root)
    assert not sharded_save.shares_directory(out / f"node-local-{rank}")  # as on separate machines
    common = dict(whole_models={"whole": {"w": torch.ones(2)}}, whole_objects={"rng": {"r": 1}},
                  config_text="a: 1\n", extra={"world_size": world}, keep=0)
    part = {"G": {f"k{rank}": torch.full((3,), float(rank))}}
    path = sharded_save.save_sharded(root, 1, part, {"opt": {"state": {rank: rank}}}, **common)
    assert path == root / "step-00000001"
    bad = part if rank == 0 else {"bad/name": {}}
    with pytest.raises(checkpoint.CheckpointError, match="rank 1: CheckpointError"):
        sharded_save.save_sharded(root, 2, bad, {}, **common)
    torch.distributed.barrier()
    c = load_checkpoint(find_resume(root, "auto"))
    assert c.manifest["step"] == 1 and c.manifest["shards"] == world
    assert sorted(c.models["G"]) == [f"k{r}" for r in range(world)]
    assert c.objects["opt"] == {"state": {r: r for r in range(world)}} and c.objects["rng"] == {"r": 1}
    assert sorted(q.name for q in root.iterdir()) == ["latest", "step-00000001"]


def _two_processes(rank: int, world: int, out: Path) -> None:
    _parity_job(rank, world, out)
    _sharded_save_protocol(rank, world, out)
    _load_and_check(out, "w1-zero2", "zero2", world)  # 1 -> 2
    for strategy in ("ddp", "zero1", "zero2", "zero3"):  # 2 -> 2, parts written by both ranks
        _save(_trained(strategy, rank, world), out, f"w2-{strategy}", rank, world)
        _load_and_check(out, f"w2-{strategy}", strategy, world)
    _load_and_check(out, "w2-ddp", "zero2", world)  # DDP -> ZeRO-2
    (out / f"done-{rank}").write_text("ok")


def _one_process_reads(rank: int, world: int, out: Path) -> None:
    for tag in ("w2-zero2", "w2-zero3"):  # 2 -> 1
        _load_and_check(out, tag, "zero2", world)
    _load_and_check(out, "w2-zero2", "ddp", world)  # ZeRO-2 -> DDP (single process)
    (out / "done-1proc").write_text("ok")


JOBS = {"parity": _parity_job, "one_writes": _one_process_writes, "two": _two_processes,
        "one_reads": _one_process_reads}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """All multi-process work of this file, in three process groups (1, 2, then 1 process)."""
    out = tmp_path_factory.mktemp("parallel")
    _spawn("one_writes", out, world=1)
    _spawn("two", out, world=2)
    _spawn("one_reads", out, world=1)
    return out


# fp32 reduction order: the two-process run sums the batch in two halves, averages gradients
# across ranks and merges BN statistics from per-rank moments, so each gradient differs from the
# reference by a few ulps (~1e-7 relative); SGD keeps that at ~1e-7 in the weights (measured:
# at most 8e-7 absolute over all tensors, on values of order 1). A wrong slice of the noise, per-
# rank BN statistics or a missing average moves weights by ~1e-3..1e-1. Adam is not used here: its
# per-element normalisation turns the rounding noise of gradients that cancel to ~0 (behind G's
# batch norms) into O(lr) weight differences (measured 8e-4 at lr 1e-3), hiding real errors.
PARITY_TOL = dict(rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("loss", LOSSES)
def test_two_processes_match_one_process_on_the_whole_batch(runs, loss):
    from bigan.train import parallel

    ref = _reference(LOSSES[loss])
    for strategy in parallel.STRATEGIES:
        for rank in range(2):
            got = torch.load(runs / f"{strategy}-{loss}-{rank}.pt")
            for model in ("G", "D"):
                torch.testing.assert_close(got[model], ref[model], **PARITY_TOL,
                                           msg=lambda m: f"{strategy} {loss} rank {rank}: {m}")


def test_per_rank_parts_load_onto_other_world_sizes_and_strategies(runs):
    assert (runs / "done-0").exists() and (runs / "done-1").exists() and (runs / "done-1proc").exists()
    # Each rank's part holds about half of the bytes and no entry of the other's.
    for strategy in ("ddp", "zero1", "zero2", "zero3"):
        parts = [torch.load(runs / f"w2-{strategy}.part-{r}.pt") for r in (0, 1)]
        for model in ("G", "D"):
            keys = [set(part[model]) for part in parts]
            assert keys[0] and keys[1] and not keys[0] & keys[1]
            size = [sum(v.numel() for v in part[model].values()) for part in parts]
            assert min(size) > 0.3 * sum(size), (strategy, model, size)
            opt = [set(part[f"opt_{model}"]["state"]) for part in parts]
            assert opt[0] and opt[1] and not opt[0] & opt[1]


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_launch_deepspeed_files_match_the_generated_config(stage):
    import json

    from bigan.train.parallel import deepspeed_config

    path = ROOT / "launch" / "deepspeed" / f"zero{stage}.json"
    assert json.loads(path.read_text()) == deepspeed_config(stage, 0.0, batch_per_worker=32)
