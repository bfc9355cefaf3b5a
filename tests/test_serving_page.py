"""The web page and its API with a 1,000-class model (ImageNet-sized class list): the page's files,
/docs without a CDN, /v1/interpolate (its ends are /v1/generate's images, its errors are 4xx
messages), and the page itself in headless Chromium: the class list is searchable, a grid, a psi
strip and an interpolation render, an error is shown as a sentence, and nothing overflows a
400 px window. With BIGAN_WRITE_DOCS_IMAGES=1 the wide screenshot is saved as
docs/images/serving-page.png."""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import ROOT, tiny_overrides

pytestmark = pytest.mark.serving

pytest.importorskip("onnxruntime")
pytest.importorskip("fastapi")

from fastapi.testclient import TestClient  # noqa: E402

from serving.app import create_app  # noqa: E402
from serving.core.engine import Engine, EngineConfig  # noqa: E402

SCREENSHOT = ROOT / "docs" / "images" / "serving-page.png"
_KINDS = ["tabby", "spotted", "great grey", "red", "striped", "common", "black-footed", "giant",
          "little blue", "golden", "snow", "water", "king", "desert", "crested", "mountain",
          "sea", "barn", "tree", "rock", "marsh", "harbor", "long-eared", "white-tailed", "dwarf"]
_THINGS = ["cat", "owl", "shark", "salamander", "frog", "turtle", "lizard", "snake", "heron",
           "finch", "beetle", "spider", "crab", "lobster", "seal", "otter", "fox", "wolf", "bear",
           "hare", "squirrel", "goose", "crane", "parrot", "eel", "ray", "moth", "butterfly",
           "snail", "newt", "gecko", "toad", "wren", "jay", "kite", "falcon", "lynx", "badger",
           "weasel", "mole"]


def imagenet_style_names() -> list[str]:
    """1,000 distinct names shaped like ImageNet's ("tabby cat", "great grey owl")."""
    names = [f"{kind} {thing}" for thing in _THINGS for kind in _KINDS]
    assert len(set(names)) == 1000
    return names


def export_imagenet_style_model(root: Path) -> Path:
    """An untrained tiny BigGAN (width 8, 32 px) with 1,000 classes, checkpointed without a
    training step and exported by `bigan export` to root/models/imagenet.onnx (~10 s)."""
    import torch

    from bigan import models
    from bigan.checkpoint.store import save_checkpoint
    from bigan.config import dump_config, load_config
    from bigan.export.onnx import export_onnx

    cfg = load_config(None, tiny_overrides(root / "run", **{"model.num_classes": 1000}))
    torch.manual_seed(0)
    G, D = models.build(cfg.model)
    ckpt = save_checkpoint(root / "ckpts", 0, {"G": G.state_dict(), "G_ema": G.state_dict(),
                                               "D": D.state_dict()}, {}, dump_config(cfg),
                           {"config": cfg.to_dict(), "class_names": imagenet_style_names()})
    return export_onnx(ckpt, root / "models" / "imagenet.onnx").path


@pytest.fixture(scope="module")
def imagenet_onnx(tmp_path_factory) -> Path:
    return export_imagenet_style_model(tmp_path_factory.mktemp("imagenet"))


@pytest.fixture(scope="module")
def client(imagenet_onnx):
    engine = Engine(imagenet_onnx, EngineConfig(max_batch=16, max_wait_ms=0))
    with TestClient(create_app(engine, max_images=16)) as c:
        yield c


def _npy(response) -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.load(io.BytesIO(response.content), allow_pickle=False)


def test_the_page_loads_its_scripts_and_the_thousand_names(client):
    page = client.get("/").text
    for script in ("/static/combobox.js", "/static/app.js"):
        assert f'src="{script}"' in page
        assert client.get(script).status_code == 200
    assert 'role="combobox"' in page and 'role="listbox"' in page
    assert 'aria-live="polite"' in page and 'role="alert"' in page
    assert client.get("/static/page.css").status_code == 200
    (model,) = client.get("/v1/models").json()["models"]
    assert model["metadata"]["class_names"] == imagenet_style_names()


def _psi_bounds(page: str) -> tuple[str, str, str]:
    """The page's psi slider min and max and the psi strip's hint range, as written."""
    slider = re.search(r'<input id="psi"[^>]*>', page).group(0)
    hint = re.search(r'id="psis-hint"[^>]*>[^<]*\(comma-separated,\s*([^)]*)\)', page).group(1)
    return (re.search(r'\smin="([^"]*)"', slider).group(1),
            re.search(r'\smax="([^"]*)"', slider).group(1), hint)


def test_the_pages_psi_bounds_are_the_contracts(client, monkeypatch):
    """The slider and the strip's hint show the range of `bigan.onnx_metadata`, the one every
    request is checked against, and follow it when it changes (they were literal 0.05-2 on the
    slider and 0.01-4 in the hint)."""
    from bigan import onnx_metadata

    assert _psi_bounds(client.get("/").text) == ("0.01", "4", "0.01–4")
    assert (onnx_metadata.MIN_TRUNCATION, onnx_metadata.MAX_TRUNCATION) == (0.01, 4.0)
    monkeypatch.setattr(onnx_metadata, "MIN_TRUNCATION", 0.2)
    monkeypatch.setattr(onnx_metadata, "MAX_TRUNCATION", 1.5)
    page = client.get("/").text
    assert _psi_bounds(page) == ("0.2", "1.5", "0.2–1.5")
    assert "{{" not in page


def test_nothing_is_loaded_from_another_host(client):
    """Every src/href of the page and of /docs is local: no CDN, no external network."""
    for path in ("/", "/docs", "/static/app.js", "/static/docs.js", "/static/combobox.js",
                 "/static/page.css", "/static/docs.html"):
        text = client.get(path).text
        assert client.get(path).status_code == 200, path
        assert not re.search(r"(src|href)=[\"']?(https?:)?//", text), path
        assert not re.search(r"""(fetch|import)\(\s*["'`]https?:""", text), path
        assert "cdn" not in text.lower() or path == "/static/docs.js", path
    docs = client.get("/docs").text
    assert 'src="/static/docs.js"' in docs
    spec = client.get("/openapi.json").json()
    assert "/v1/interpolate" in spec["paths"] and "/docs" not in spec["paths"]
    assert client.get("/redoc").status_code == 404  # FastAPI's CDN page is off too


def test_interpolation_ends_are_the_generated_images(client):
    common = {"class": "tabby cat", "truncation": 0.7, "format": "npy"}
    path = _npy(client.post("/v1/interpolate", json={**common, "seed_a": 3, "seed_b": 11,
                                                     "steps": 5}))
    assert path.shape == (5, 32, 32, 3) and path.dtype == np.uint8
    for seed, image in ((3, path[0]), (11, path[-1])):
        alone = _npy(client.post("/v1/generate", json={**common, "seed": seed, "n": 1}))[0]
        np.testing.assert_array_equal(image, alone)
    assert not np.array_equal(path[1], path[0]) and not np.array_equal(path[1], path[-1])
    answer = client.post("/v1/interpolate", json={**common, "seed_a": 3, "seed_b": 11,
                                                  "steps": 3, "format": "json"}).json()
    assert answer["t"] == [0.0, 0.5, 1.0] and answer["class_name"] == "tabby cat"
    assert answer["class_id"] == imagenet_style_names().index("tabby cat")
    png = client.post("/v1/interpolate", json={"class": 5, "seed_a": 0, "seed_b": 1, "steps": 4})
    assert png.headers["content-type"] == "image/png" and png.content[:4] == b"\x89PNG"


@pytest.mark.parametrize("body, status, message", [
    ({"seed_b": 1, "steps": 1}, 422, "steps: Input should be greater than or equal to 2"),
    ({"seed_b": 1, "steps": 17}, 422, "steps=17 is above this server's limit of 16 images"),
    ({"seed_b": -1}, 422, "seed_b"),
    ({"seed_b": 1, "class": "no such beast"}, 422, "unknown class name 'no such beast'"),
    ({"seed_b": 1, "class": 1000}, 422, "class id 1000 is outside 0..999"),
    ({"seed_b": 1, "truncation": 0}, 422, "truncation"),
    ({"seed_b": 1, "model": "other"}, 404, "unknown model 'other'"),
    ({"seed_b": 1, "wobble": 2}, 422, "wobble"),
])
def test_interpolation_errors_are_4xx_with_a_message(client, body, status, message):
    r = client.post("/v1/interpolate", json={"class": 0, "seed_a": 0, **body})
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    text = detail if isinstance(detail, str) else "; ".join(
        f"{'.'.join(map(str, e['loc'][1:]))}: {e['msg']}" for e in detail)
    assert message in text


# --- the page in headless Chromium ---------------------------------------------------------------

@pytest.fixture(scope="module")
def server(imagenet_onnx, tmp_path_factory):
    from serving.client import started_server

    log = tmp_path_factory.mktemp("serve-page") / "server.log"
    with open(log, "wb") as out:
        with started_server(imagenet_onnx, "--max-images", "16", timeout_s=60, output=out,
                            cwd=ROOT) as s:
            yield s.url


def _browse(server: str, query: str, tmp_path: Path, *args: str, width: int = 1000,
            height: int = 830) -> subprocess.CompletedProcess:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("the headless browser test needs Debian's `chromium` package")
    return subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         "--no-first-run", "--disable-extensions", f"--user-data-dir={tmp_path / 'profile'}",
         f"--window-size={width},{height}", "--virtual-time-budget=30000", *args,
         f"{server}/{query}"], capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_the_page_draws_grid_strip_and_interpolation(server, tmp_path):
    import base64

    from PIL import Image

    from tests.browser import open_page

    async def check():
        query = "?class=tabby%20cat&seed=3&size=3&psi=0.8&seed_b=9&steps=8&auto=all"
        async with open_page(f"{server}/{query}", tmp_path / "profile", 1000, 830) as page:
            await page.wait_for("document.body.dataset.done === 'all'")
            text = "(id) => document.getElementById(id).textContent"
            status, error, caption = await page.eval(
                f"['status', 'error', 'grid-caption'].map({text})")
            assert status.startswith("interpolation of 8 images in")  # the last action's
            assert error == ""  # every action succeeded
            assert caption.startswith("tabby cat, ψ 0.8, seeds 3…11")  # picked by name
            alts = await page.eval("[...document.querySelectorAll('#strip img')].map(i => i.alt)")
            assert alts == [f"class 0 (tabby cat), seed 3, ψ {psi}"
                            for psi in ("0.25", "0.5", "0.75", "1", "1.5")]
            sizes = await page.eval("['grid', 'interp'].map((id) => "
                                    "[document.getElementById(id).naturalWidth, "
                                    "document.getElementById(id).naturalHeight])")
            assert sizes == [[3 * 32 + 4 * 2, 3 * 32 + 4 * 2], [8 * 32 + 9 * 2, 32 + 2 * 2]]
            shot = await page.call("Page.captureScreenshot", format="png")
            return base64.b64decode(shot["data"])

    png = asyncio.run(check())
    picture = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    assert picture.shape == (830, 1000, 3)
    # Generated images have many colours; the page's own chrome has a handful.
    assert len(np.unique(picture.reshape(-1, 3), axis=0)) > 2000
    # Into the docs only when asked: every run's picture differs (timings in the status line).
    target = SCREENSHOT if os.environ.get("BIGAN_WRITE_DOCS_IMAGES") else tmp_path / "page.png"
    target.write_bytes(png)


@pytest.mark.slow
def test_the_psi_strip_checks_the_sliders_bounds(server, tmp_path):
    """app.js keeps no psi bounds of its own: the strip refuses what lies outside the slider's
    range, which the server wrote from its contract; narrowing the slider narrows the check."""
    from tests.browser import open_page

    async def check():
        async with open_page(f"{server}/", tmp_path / "profile") as page:
            await page.wait_for("models.length > 0")  # app.js's list, from /v1/models
            strip = ("(text) => { document.getElementById('psis').value = text; "
                     "try { return parsePsis(); } catch (e) { return e.message; } }")
            bounds = await page.eval("['min', 'max'].map((k) => document.getElementById('psi')[k])")
            answers = [await page.eval(f"({strip})({text!r})")
                       for text in ("0.01, 4", "4.5", "0.005")]
            await page.eval("document.getElementById('psi').max = '1.5'")
            narrowed = await page.eval(f"({strip})('2')")
            return bounds, answers, narrowed

    bounds, answers, narrowed = asyncio.run(check())
    assert bounds == ["0.01", "4"]
    assert answers == [[0.01, 4], "ψ values: “4.5” is not a number in 0.01–4",
                       "ψ values: “0.005” is not a number in 0.01–4"]
    assert narrowed == "ψ values: “2” is not a number in 0.01–1.5"


@pytest.mark.slow
def test_searching_the_class_list_filters_it(server, tmp_path):
    dom = _browse(server, "?q=grey%20ow", tmp_path, "--dump-dom").stdout
    options = re.findall(r'<li id="class-option-(\d+)" role="option"', dom)
    names = imagenet_style_names()
    assert [int(i) for i in options] == [i for i, n in enumerate(names) if "grey ow" in n]
    assert "1 of 1000 classes match" in dom and 'aria-expanded="true"' in dom
    everything = _browse(server, "?q=", tmp_path, "--dump-dom").stdout
    assert len(re.findall(r'role="option"', everything)) == 100  # the first 100 of 1,000
    assert "… 900 more: type to narrow" in everything


@pytest.mark.slow
def test_a_rejected_request_is_shown_as_a_sentence(server, tmp_path):
    dom = _browse(server, "?seed_b=1&steps=40&auto=all", tmp_path, "--dump-dom").stdout
    assert "steps=40 is above this server's limit of 16 images" in dom, dom[-3000:]
    assert re.search(r'id="steps"[^>]*aria-invalid="true"', dom)
    # The status code is not shown: the page's text, without scripts and tags (attributes hold
    # blob: URLs with random UUIDs and the server's port, where "422" can occur by chance).
    shown = re.sub(r"<[^>]*>", " ", re.sub(r"<script.*?</script>", "", dom, flags=re.S))
    assert "steps=40 is above" in shown and "422" not in shown
    # A schema error (FastAPI's list of failures) becomes "field: reason".
    dom = _browse(server, "?seed_b=-1&auto=all", tmp_path, "--dump-dom").stdout
    assert "seed_b: Input should be greater than or equal to 0" in dom, dom[-3000:]
    assert re.search(r'id="seed-b"[^>]*aria-invalid="true"', dom)


@pytest.mark.slow
def test_the_page_fits_a_400_px_window(server, tmp_path):
    """Headless Chromium's windows are at least 500 px wide: the viewport is set over the
    DevTools protocol instead."""
    from tests.browser import open_page

    async def check():
        url = f"{server}/?class=3&seed=3&size=3&auto=all"
        async with open_page(url, tmp_path / "profile", width=400, height=900) as page:
            await page.wait_for("document.body.dataset.done === 'all'")
            assert await page.eval("innerWidth") == 400
            assert await page.eval("document.documentElement.scrollWidth") <= 400
            rights = await page.eval("[...document.querySelectorAll('input, select, button, img, "
                                     "figure')].map((e) => e.getBoundingClientRect().right)")
            assert max(rights) <= 400
            # The form is stacked above the results, each as wide as the window allows.
            form, results = await page.eval("""['controls', 'results'].map((id) =>
                document.getElementById(id).getBoundingClientRect().toJSON())""")
            assert results["top"] >= form["bottom"] and form["width"] >= 350

    asyncio.run(check())


@pytest.mark.slow
def test_the_class_list_is_keyboard_navigable(server, tmp_path):
    from tests.browser import open_page

    names = imagenet_style_names()
    owls = [i for i, n in enumerate(names) if "owl" in n]

    async def check():
        async with open_page(f"{server}/?seed=2&size=1", tmp_path / "profile") as page:
            await page.wait_for("document.getElementById('class-input').value === '0: tabby cat'")
            await page.eval("document.getElementById('class-input').focus()")
            await page.eval("document.getElementById('class-input').select()")
            await page.type("owl")
            assert await page.eval("document.getElementById('class-input')"
                                   ".getAttribute('aria-expanded')") == "true"
            shown = await page.eval("[...document.querySelectorAll('#class-list [role=option]')]"
                                    ".map((li) => Number(li.dataset.id))")
            assert shown == owls
            for _ in range(3):
                await page.press("ArrowDown")
            await page.press("ArrowUp")
            active = await page.eval("document.getElementById('class-input')"
                                     ".getAttribute('aria-activedescendant')")
            assert active == f"class-option-{owls[2]}"
            await page.press("Enter")  # picks; does not submit the form
            state = await page.eval("""(() => { const i = document.getElementById('class-input');
                return [i.value, i.getAttribute('aria-expanded'), document.activeElement.id,
                        document.body.dataset.rendered || ''] })()""")
            assert state == [f"{owls[2]}: {names[owls[2]]}", "false", "class-input", ""]
            await page.eval("document.getElementById('class-input').select()")
            await page.type("no such beast")
            assert await page.eval("document.getElementById('class-hint').textContent") == \
                "no class matches “no such beast”"
            await page.press("Escape")  # closes and restores the picked class
            assert await page.eval("document.getElementById('class-input').value") == \
                f"{owls[2]}: {names[owls[2]]}"
            await page.press("Enter")  # with the list closed, Enter submits: a grid of class 27
            await page.wait_for("document.body.dataset.rendered === '1'")
            caption = await page.eval("document.getElementById('grid-caption').textContent")
            assert caption.startswith(f"{names[owls[2]]}, ") and "seeds 2…2" in caption
            status = await page.eval("document.getElementById('status').textContent")
            assert status.startswith("1 images in")

    asyncio.run(check())


@pytest.mark.slow
def test_the_docs_page_renders_every_route_from_local_files(server, tmp_path):
    import urllib.request

    with urllib.request.urlopen(f"{server}/openapi.json", timeout=10) as r:
        spec = json.load(r)
    operations = sum(len(item) for item in spec["paths"].values())
    dom = _browse(server, "docs", tmp_path, "--dump-dom").stdout
    assert f'data-rendered="{operations}"' in dom, dom[-2000:]
    assert 'id="post-v1-interpolate"' in dom and "seed_b" in dom
    assert "send POST /v1/generate" in dom  # a form to try the route


@pytest.mark.slow
def test_the_model_picker_switches_models(imagenet_onnx, tiny_onnx, tmp_path):
    from serving.client import started_server
    from tests.browser import open_page

    root = tmp_path / "models"
    root.mkdir()
    shutil.copy(imagenet_onnx, root / "imagenet.onnx")
    shutil.copy(tiny_onnx, root / "small.onnx")
    small_names = Engine(tiny_onnx).metadata.class_names

    async def check(url):
        async with open_page(f"{url}/?seed=4&size=2", tmp_path / "profile") as page:
            await page.wait_for("!document.getElementById('pick-field').hidden")
            assert await page.eval("[...document.getElementById('pick').options]"
                                   ".map((o) => o.value)") == ["imagenet", "small"]
            assert await page.eval("document.getElementById('class-hint').textContent") == \
                "1000 classes: type to search"
            await page.eval("""(() => { const pick = document.getElementById('pick');
                pick.focus(); pick.value = 'small';
                pick.dispatchEvent(new Event('change')); })()""")
            assert await page.eval("document.getElementById('class-input').value") == \
                f"0: {small_names[0]}"
            assert await page.eval("document.getElementById('class-hint').textContent") == \
                "4 classes: type to search"
            assert (await page.eval("document.getElementById('model').textContent")).startswith(
                "small v1: biggan, 4 classes")
            assert await page.eval("document.activeElement.id") == "pick"  # focus stays put
            await page.eval("document.getElementById('generate').click()")
            await page.wait_for("document.body.dataset.rendered === '1'")
            assert (await page.eval("document.getElementById('grid-caption').textContent")
                    ).startswith(f"{small_names[0]}, ")

    with open(tmp_path / "server.log", "wb") as out:
        with started_server(root, timeout_s=60, output=out, cwd=ROOT) as s:
            asyncio.run(check(s.url))
