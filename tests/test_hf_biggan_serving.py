"""An imported TF-Hub-style BigGAN-deep (tests/test_hf_biggan.py) exported and served: the ONNX
psi input gives the package's images at several psi and with mixed psi in one batch (<= 1e-4),
the server passes each request's psi to it, requests merged into one micro-batch keep their own,
/v1/generate returns the package model's images at the requested psi for the package's z of the
same seed (`truncated_noise_sample`: the import's tfhub-scaled z sampling), and /v1/interpolate's
ends are /v1/generate's images at that psi (on and between grid points). One export for all."""

from __future__ import annotations

import asyncio
import io

import numpy as np
import pytest
import torch

from bigan import sampling
from bigan.imports import hf_biggan
from tests.test_hf_biggan import PSIS, inputs, make_hf_model, reference

pytestmark = pytest.mark.serving
pytest.importorskip("onnxruntime")
pytest.importorskip("pytorch_pretrained_biggan")


@pytest.fixture(scope="module")
def deep_onnx(tmp_path_factory):
    from bigan.export.onnx import export_onnx

    root = tmp_path_factory.mktemp("hf-serve")
    model = make_hf_model(root / "src", seed=3)
    step = hf_biggan.convert(root / "src", root / "imported").checkpoint
    return model, export_onnx(step, root / "deep.onnx", parity_batch=5)


def test_onnx_psi_input_matches_the_package_at_several_psi(deep_onnx):
    from bigan.export.onnx import make_session

    model, report = deep_onnx
    assert report.metadata.psi_input and max(report.max_abs_error.values()) <= 1e-4
    session = make_session(report.path)
    assert [(i.name, i.type) for i in session.get_inputs()][2] == ("psi", "tensor(float)")
    z, y = inputs()
    errors = {}
    for psi in [*PSIS, "mixed"]:
        column = np.array([0.37, 1.0, 0.61, 0.83] if psi == "mixed" else [psi] * 4, np.float32)
        (got,) = session.run(["images_float"], {"z": z.numpy(), "y": y.numpy(), "psi": column})
        want = torch.cat([reference(model, z[i:i + 1], y[i:i + 1], float(column[i]))
                          for i in range(4)])
        errors[psi] = float(np.abs(got - want.numpy()).max())
        torch.testing.assert_close(torch.from_numpy(got), want, rtol=0, atol=1e-4)
    print("onnxruntime vs pytorch-pretrained-BigGAN, max abs error by psi:", errors)


def test_requests_batched_together_keep_their_own_psi(deep_onnx):
    from serving.core.engine import Engine, EngineConfig

    model, report = deep_onnx
    path = report.path
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
        z = torch.from_numpy(sampling.latents(seeds, 16, psi, "tfhub-scaled"))
        want = reference(model, z, torch.full((len(seeds),), c), 1.0 if psi is None else psi)
        want_u8 = ((want + 1) * 127.5 + 0.5).clamp(0, 255).floor().to(torch.uint8)
        assert np.abs(images.astype(int) - want_u8.permute(0, 2, 3, 1).numpy()).max() <= 1
        alone = engine.run(z.numpy(), np.full(len(seeds), c, np.int64), psi)
        np.testing.assert_array_equal(images, alone)


def test_v1_endpoint_draws_the_packages_image_of_a_seed_and_psi(deep_onnx):
    """The package's own z (`truncated_noise_sample(1, dim_z, psi, seed)`, TF-Hub's formula) and
    forward at psi: /v1/generate of that seed and psi gives it (the import's z sampling is
    tfhub-scaled; with bigan's resample the z differ entirely and this fails)."""
    from fastapi.testclient import TestClient
    from pytorch_pretrained_biggan import truncated_noise_sample

    from serving.app import create_app
    from serving.core.engine import Engine, EngineConfig

    model, report = deep_onnx
    path = report.path
    assert report.metadata.z_sampling == "tfhub-scaled"
    with TestClient(create_app(Engine(path, EngineConfig(provider="cpu")))) as client:
        for psi in (0.5, 0.9):
            r = client.post("/v1/generate", json={"class": 3, "seed": 7, "n": 2,
                                                  "truncation": psi, "format": "npy"})
            assert r.status_code == 200, r.text
            images = np.load(io.BytesIO(r.content))
            z = torch.from_numpy(np.concatenate([truncated_noise_sample(1, 16, psi, seed)
                                                 for seed in (7, 8)]))
            want = reference(model, z, torch.tensor([3, 3]), psi)
            want_u8 = ((want + 1) * 127.5 + 0.5).clamp(0, 255).floor().to(torch.uint8)
            assert np.abs(images.astype(int) - want_u8.permute(0, 2, 3, 1).numpy()).max() <= 1


def test_samplers_of_the_checkpoint_and_the_export_pass_psi(deep_onnx):
    from bigan.generation import OnnxSampler, open_sampler

    model, report = deep_onnx
    checkpoint = report.path.parent / "imported"
    z = torch.from_numpy(sampling.latents([5, 6], 16, 0.61, "tfhub-scaled"))
    want = reference(model, z, torch.tensor([1, 2]), 0.61).numpy()
    for sampler in (open_sampler(checkpoint), OnnxSampler(report.path)):
        assert sampler.z_sampling == "tfhub-scaled", sampler.kind
        got = sampler.images([1, 2], [5, 6], psi=0.61)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-4, err_msg=sampler.kind)


@pytest.mark.parametrize("psi", [0.3, 0.37])  # on a grid point, between two
def test_v1_interpolate_ends_are_v1_generate_images_at_the_requested_psi(deep_onnx, psi):
    from fastapi.testclient import TestClient

    from serving.app import create_app
    from serving.core.engine import Engine, EngineConfig

    _, report = deep_onnx
    with TestClient(create_app(Engine(report.path, EngineConfig(provider="cpu")))) as client:
        r = client.post("/v1/interpolate", json={"class": 2, "seed_a": 7, "seed_b": 9, "steps": 3,
                                                 "truncation": psi, "format": "npy"})
        assert r.status_code == 200, r.text
        path = np.load(io.BytesIO(r.content))
        for seed, end in ((7, path[0]), (9, path[-1])):
            r = client.post("/v1/generate", json={"class": 2, "seed": seed, "truncation": psi,
                                                  "format": "npy"})
            assert r.status_code == 200, r.text
            np.testing.assert_array_equal(end, np.load(io.BytesIO(r.content))[0])
