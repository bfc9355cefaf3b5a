"""Serving an imported TF-Hub-style BigGAN-deep: the server passes each request's psi to the
graph's psi input, requests merged into one micro-batch keep their own psi, and the v1 endpoint
returns the images of the package's own model at the requested psi."""

from __future__ import annotations

import asyncio
import io

import numpy as np
import pytest
import torch

from bigan import sampling
from bigan.imports import hf_biggan
from tests.test_hf_biggan import make_hf_model, reference

pytestmark = pytest.mark.serving
pytest.importorskip("onnxruntime")
pytest.importorskip("pytorch_pretrained_biggan")


@pytest.fixture(scope="module")
def deep_onnx(tmp_path_factory):
    from bigan.export.onnx import export_onnx

    root = tmp_path_factory.mktemp("hf-serve")
    model = make_hf_model(root / "src", resolution=64, ch=4, seed=3)
    step = hf_biggan.convert(root / "src", root / "imported")
    return model, export_onnx(step, root / "deep.onnx", parity_batch=2).path


def test_requests_batched_together_keep_their_own_psi(deep_onnx):
    from serving.engine import Engine, EngineConfig

    model, path = deep_onnx
    sizes = []
    engine = Engine(path, EngineConfig(provider="cpu", max_batch=8, max_wait_ms=500),
                    on_batch=lambda n, s: sizes.append(n))
    assert engine.metadata.psi_input
    requests = [([0, 1], 2, 0.37), ([2], 4, 0.83), ([3, 4], 1, None)]  # seeds, class, psi

    async def serve_all():
        await engine.start()
        try:
            return await asyncio.gather(*[
                engine.submit(engine.latents(seeds, psi), np.full(len(seeds), c, np.int64), psi)
                for seeds, c, psi in requests])
        finally:
            await engine.stop()

    answers = asyncio.run(serve_all())
    assert sizes == [5]  # one run for the three requests
    for (seeds, c, psi), images in zip(requests, answers):
        z = torch.from_numpy(sampling.latents(seeds, 16, psi))
        want = reference(model, z, torch.full((len(seeds),), c), 1.0 if psi is None else psi)
        want_u8 = ((want + 1) * 127.5 + 0.5).clamp(0, 255).floor().to(torch.uint8)
        assert np.abs(images.astype(int) - want_u8.permute(0, 2, 3, 1).numpy()).max() <= 1
        alone = engine.run(z.numpy(), np.full(len(seeds), c, np.int64), psi)
        np.testing.assert_array_equal(images, alone)


def test_v1_endpoint_draws_at_the_requested_psi(deep_onnx):
    from fastapi.testclient import TestClient

    from serving.app import create_app
    from serving.engine import Engine, EngineConfig

    model, path = deep_onnx
    with TestClient(create_app(Engine(path, EngineConfig(provider="cpu")))) as client:
        for psi in (0.5, 0.9):
            r = client.post("/v1/generate", json={"class": 3, "seed": 7, "n": 2,
                                                  "truncation": psi, "format": "npy"})
            assert r.status_code == 200, r.text
            images = np.load(io.BytesIO(r.content))
            z = torch.from_numpy(sampling.latents([7, 8], 16, psi))
            want = reference(model, z, torch.tensor([3, 3]), psi)
            want_u8 = ((want + 1) * 127.5 + 0.5).clamp(0, 255).floor().to(torch.uint8)
            assert np.abs(images.astype(int) - want_u8.permute(0, 2, 3, 1).numpy()).max() <= 1
