"""`bigan serve` as a real server on 127.0.0.1: the official Triton/KServe client, concurrent clients
merged into batches, the web page in headless Chromium, and schema-driven fuzzing of the OpenAPI
spec (no request may get a 5xx)."""

from __future__ import annotations

import concurrent.futures
import json
import re
import shutil
import subprocess
import urllib.request

import numpy as np
import pytest

from serving.client import started_server
from tests.helpers import ROOT

pytestmark = pytest.mark.serving

pytest.importorskip("onnxruntime")
pytest.importorskip("fastapi")


def _get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@pytest.fixture(scope="module")
def server(tiny_onnx, tmp_path_factory):
    """`bigan serve` in a subprocess on a free port of 127.0.0.1; yields its base URL."""
    log = tmp_path_factory.mktemp("serve") / "server.log"
    with open(log, "wb") as out:
        try:
            with started_server(tiny_onnx.parent, "--max-batch", "16", "--max-wait-ms", "50",
                                "--max-images", "16", timeout_s=60, output=out, cwd=ROOT) as s:
                yield s.url
        except (RuntimeError, TimeoutError) as e:
            pytest.fail(f"bigan serve did not come up: {e}")
    assert "on CPUExecutionProvider" in log.read_text()  # the provider choice is logged


def test_the_official_tritonclient_works_unchanged(server):
    import tritonclient.http as httpclient

    from bigan import sampling

    client = httpclient.InferenceServerClient(url=server.removeprefix("http://"))
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("model")
        meta = client.get_model_metadata("model")
        assert meta["inputs"][0] == {"name": "z", "datatype": "FP32", "shape": [-1, 16]}
        z = sampling.latents([1, 2, 3], 16, 0.9)
        y = np.array([0, 2, 3], np.int64)
        results = {}
        for binary in (True, False):  # the client's default (binary tensors) and plain JSON
            zin = httpclient.InferInput("z", list(z.shape), "FP32")
            zin.set_data_from_numpy(z, binary_data=binary)
            yin = httpclient.InferInput("y", list(y.shape), "INT64")
            yin.set_data_from_numpy(y, binary_data=binary)
            out = httpclient.InferRequestedOutput("images", binary_data=binary)
            results[binary] = client.infer("model", [zin, yin], outputs=[out]).as_numpy("images")
        default = client.infer("model", [zin, yin]).as_numpy("images")  # no outputs named
        assert results[True].shape == (3, 32, 32, 3) and results[True].dtype == np.uint8
        assert np.array_equal(results[True], results[False])
        assert np.array_equal(results[True], default)
        bad = httpclient.InferInput("y", [3], "INT64")
        bad.set_data_from_numpy(np.array([0, 1, 9], np.int64))
        from tritonclient.utils import InferenceServerException

        with pytest.raises(InferenceServerException, match=r"must lie in 0..3"):
            client.infer("model", [zin, bad])
    finally:
        client.close()


def test_concurrent_clients_are_merged_into_batches(server):
    def one(seed):
        body = json.dumps({"class": seed % 4, "n": 2, "seed": seed, "format": "npy"}).encode()
        req = urllib.request.Request(f"{server}/v1/generate", body,
                                     {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status

    def batches() -> tuple[float, float]:
        text = _get(f"{server}/metrics")[1].decode()

        def value(line: str) -> float:  # model "model"'s sample; none before its first batch
            found = re.search(rf"^{re.escape(line)} (\S+)$", text, re.M)
            return float(found.group(1)) if found else 0.0
        return (value('bigan_batch_size_images_count{model="model"}'),
                value('bigan_images_generated_total{model="model"}'))

    before = batches()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        assert list(pool.map(one, range(8))) == [200] * 8
    count, images = (a - b for a, b in zip(batches(), before))
    assert images == 16
    assert count < 8  # 8 concurrent 2-image requests took fewer than 8 runs (50 ms window)


@pytest.mark.slow
def test_the_web_page_renders_a_grid_in_headless_chromium(server, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("the headless browser test needs Debian's `chromium` package "
                    "(apt-get install chromium)")
    from PIL import Image

    def browse(query: str, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             "--no-first-run", "--disable-extensions", f"--user-data-dir={tmp_path / 'profile'}",
             "--window-size=800,600", "--virtual-time-budget=20000", *args,
             f"{server}/{query}"], capture_output=True, text=True, timeout=90)

    path = tmp_path / "page.png"
    done = browse("?class=ring-3&seed=3&size=3&psi=0.8&auto=1", f"--screenshot={path}")
    assert path.exists(), done.stderr[-2000:]
    shot = np.asarray(Image.open(path).convert("RGB")).astype(int)
    # The image area (#view: 384 px square right of the 260 px form) must show the grid: most of
    # its pixels differ from the page background, as almost none do in the empty strip below it.
    background = np.array([0xfa, 0xfa, 0xfa])
    differs = np.abs(shot - background).max(-1) > 8
    image_area, below = differs[120:440, 330:660], differs[500:590, 330:660]
    assert image_area.mean() > 0.5, f"only {image_area.mean():.0%} of the image area is drawn"
    assert below.mean() < 0.01
    # Not one flat colour either: the grid of nine generated images has many distinct colours.
    assert len(np.unique(shot[120:440, 330:660].reshape(-1, 3), axis=0)) > 500
    dom = browse("?class=ring-3&seed=3&size=3&auto=1", "--dump-dom").stdout
    assert 'data-rendered="1"' in dom and 'id="download" href="blob:' in dom
    assert "9 images in" in dom and "seeds 3…11" in dom


@pytest.mark.slow
def test_openapi_fuzzing_finds_no_server_errors(server):
    """schemathesis draws requests from the server's own OpenAPI spec (valid and invalid bodies,
    paths, query strings) and sends them over HTTP; every answer must be < 500."""
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given, settings

    schema = schemathesis.openapi.from_url(f"{server}/openapi.json")
    seen = []
    for result in schema.get_all_operations():
        operation = result.ok()

        @settings(max_examples=15, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def fuzz(case):
            response = case.call(timeout=30)
            seen.append((operation.label, response.status_code))
            assert response.status_code < 500, (case.as_curl_command(), response.text[:500])

        fuzz()
    labels = {label for label, _ in seen}
    assert "POST /v1/generate" in labels and "POST /v2/models/{name}/infer" in labels
    assert any(status == 200 for label, status in seen if label == "POST /v1/generate")
    assert any(400 <= status < 500 for _, status in seen)
