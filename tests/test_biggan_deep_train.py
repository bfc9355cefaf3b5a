"""BigGAN-deep trained by the real trainer: 2 processes (`accelerate launch`, gloo on 127.0.0.1)
under DDP and under DeepSpeed ZeRO-2 against 1 process, then exported (ZeRO-3 passes too but
took 7 minutes here, against 47 s for DDP).

Same reasoning and tolerance as tests/test_multiprocess_train.py (cross-replica batch norm, Adam
eps 1e-3): 2 processes on halves of the global batch must give 1 process's weights within 1e-4.
"""

from __future__ import annotations

import pytest
import torch

from bigan.config import load_config
from bigan.train.trainer import train
from tests.test_multiprocess_train import _launch, _manifest, _weights

pytestmark = pytest.mark.dist

DEEP = {"model.arch": "biggan-deep", "train.steps": 2, "train.ckpt_every_kimg": 0.032}  # 2 steps


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    from tests.test_multiprocess_train import _overrides

    out = tmp_path_factory.mktemp("deep1") / "run"
    return train(load_config(None, _overrides(out, **DEEP))).last_checkpoint


@pytest.mark.parametrize("strategy", ["ddp", "zero2"])
def test_two_processes_train_biggan_deep_like_one(one_process, strategy, tmp_path):
    run = tmp_path / "run"
    _launch(run, **{**DEEP, "train.strategy": strategy})
    ckpt = run / "checkpoints" / "step-00000002"
    assert (_manifest(ckpt)["world_size"], _manifest(ckpt)["strategy"]) == (2, strategy)
    ref, got = _weights(one_process), _weights(ckpt)
    for model in ("G", "G_ema", "D"):
        assert sorted(got[model]) == sorted(ref[model])
        for k in ref[model]:
            torch.testing.assert_close(got[model][k], ref[model][k], rtol=0, atol=1e-4,
                                       msg=f"{strategy} {model}.{k}")


def test_trained_biggan_deep_exports_within_1e_4(one_process, tmp_path):
    pytest.importorskip("onnxruntime")
    from bigan.export.onnx import export_onnx

    report = export_onnx(one_process, tmp_path / "deep.onnx", parity_batch=3)
    assert report.metadata.family == "biggan-deep"
    assert max(report.max_abs_error.values()) <= 1e-4
