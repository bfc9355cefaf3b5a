"""Fine-tuning's frozen blocks (`finetune.freeze_*`, bigan/train/finetune.py) under DeepSpeed ZeRO,
in 2 real processes (`accelerate launch`, gloo on 127.0.0.1).

ZeRO leaves a parameter without `requires_grad` out of its optimizer (no fp32 master copy, no
Adam state), as torch's Adam keeps no state for a parameter it never stepped; the checkpoint code
(`bigan/train/parallel_state.py`) skips such parameters when it reads and writes ZeRO optimizer
states. Without that, the first checkpoint of such a run failed (`safe_get_full_optimizer_state`
returns None for them: AttributeError), which this test shows. `train.strategy=zero3` runs G at
stage 3 (frozen parameters partitioned too) and D at stage 2, so both paths are covered."""

from __future__ import annotations

import pytest
import torch

from bigan import models
from bigan.checkpoint.loading import load_checkpoint
from bigan.config import load_config
from bigan.train.trainer import train
from tests.test_multiprocess_train import _launch, _manifest, _overrides, _weights

pytestmark = pytest.mark.dist

FREEZE = {"finetune.freeze_g_blocks": 1, "finetune.freeze_d_blocks": 2}


def _params(net: torch.nn.Module, *prefixes: str) -> list[str]:
    return [n for n, _ in net.named_parameters() if n.startswith(prefixes)]


def test_frozen_blocks_stay_put_under_zero3_and_its_checkpoints_resume(tmp_path):
    run, ckpts = tmp_path / "run", tmp_path / "run" / "checkpoints"
    _launch(run, **FREEZE, **{"train.strategy": "zero3"})  # 4 steps, checkpoints at 2 and 4
    assert (_manifest(ckpts / "step-00000004")["world_size"],
            _manifest(ckpts / "step-00000004")["strategy"]) == (2, "zero3")
    G, D = models.build(load_config(None, _overrides(run)).model)
    frozen = {"G": _params(G, "blocks.0."), "D": _params(D, "blocks.0.", "blocks.1.")}
    moving = {"G": _params(G, "blocks.1."), "D": _params(D, "blocks.2.")}
    assert all(frozen.values()) and all(moving.values())

    def check(at: dict, before: dict, what: str) -> None:
        for model in ("G", "D"):
            for key in frozen[model]:  # bit for bit: nothing stepped them
                torch.testing.assert_close(at[model][key], before[model][key], rtol=0, atol=0,
                                           msg=lambda m: f"{what}: {model}.{key}: {m}")
            assert any(not torch.equal(at[model][k], before[model][k]) for k in moving[model]), what

    at2 = _weights(ckpts / "step-00000002")
    check(_weights(ckpts / "step-00000004"), at2, "zero3, steps 2 -> 4")
    # frozen parameters have no optimizer state in the checkpoint, the others all have theirs
    opt_G = load_checkpoint(ckpts / "step-00000004").objects["opt_G"]["state"]
    names = [n for n, _ in G.named_parameters()]
    assert {names[i] for i in opt_G} == set(names) - set(frozen["G"])

    # the ZeRO state with frozen blocks loads into ZeRO (2 processes) and into 1 process (ddp)
    _launch(run, "--resume", "auto", **FREEZE, **{"train.strategy": "zero3", "train.steps": 6})
    check(_weights(ckpts / "step-00000006"), at2, "zero3 resumed, steps 2 -> 6")
    result = train(load_config(None, _overrides(run, **FREEZE, **{"train.steps": 8})), resume="auto")
    assert result.step == 8 and _manifest(result.last_checkpoint)["world_size"] == 1
    check(_weights(result.last_checkpoint), at2, "zero3 -> 1 process, steps 2 -> 8")
