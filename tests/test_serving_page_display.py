"""What the web page shows, measured in headless Chromium (issue 33, defect 14): an error message
sits under the field at fault, the open class list covers no text of the form, a class name
holding a bidirectional control character (U+202E RIGHT-TO-LEFT OVERRIDE) is shown as its code
point rather than reordering the page, and images get hard pixel edges only while enlarged.

The model is test_serving_page's 1,000-class one, with two names rewritten to hold bidi controls.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.helpers import ROOT
from tests.test_serving_page import export_imagenet_style_model, imagenet_style_names

pytestmark = [pytest.mark.serving, pytest.mark.slow]

pytest.importorskip("onnxruntime")
pytest.importorskip("aiohttp")

RLO = "\u202e"  # RIGHT-TO-LEFT OVERRIDE: "photo" RLO "gnp.exe" displays as "photoexe.png"
SPOOFED = {3: f"photo{RLO}gnp.exe", 4: "left\u2067right\u2069 isolate"}
BIDI = "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from bigan.export.metadata import rewrite_metadata
    from serving.client import started_server

    root = tmp_path_factory.mktemp("page-display")
    onnx = export_imagenet_style_model(root)
    names = imagenet_style_names()
    for k, name in SPOOFED.items():
        names[k] = name
    rewrite_metadata(onnx, class_names=names)
    with open(root / "server.log", "wb") as out:
        with started_server(onnx, "--max-images", "16", timeout_s=90, output=out,
                            cwd=ROOT) as s:
            yield s.url


def _browser(url: str, tmp_path: Path, width: int = 1000, height: int = 830):
    from tests.browser import open_page

    return open_page(url, tmp_path / "profile", width, height)


RECT = "(id) => document.getElementById(id).getBoundingClientRect().toJSON()"


def test_an_error_is_shown_under_its_field(server, tmp_path):
    """Before: every message was at the top of the results column, 300 px right of the form."""
    async def check():
        async with _browser(f"{server}/?seed_b=1&steps=40&auto=all", tmp_path) as page:
            await page.wait_for("document.body.dataset.done === 'all'")
            assert "steps=40 is above" in await page.eval("document.getElementById('error')"
                                                          ".textContent")
            await _assert_under(page, "steps")
            # The next rejection moves the message to its own field: seed B, a schema error.
            await page.eval("""(() => { document.getElementById('steps').value = '8';
                document.getElementById('seed-b').value = '-1';
                document.getElementById('interp-go').click(); })()""")
            await page.wait_for("document.getElementById('error').textContent"
                                ".startsWith('seed_b: ')")
            await _assert_under(page, "seed-b")
            assert await page.eval("document.activeElement.id") == "seed-b"

    asyncio.run(check())


async def _assert_under(page, field_id: str) -> None:
    error, field = await page.eval(f"['error', '{field_id}'].map({RECT})")
    assert await page.eval(f"document.getElementById('{field_id}').closest('.field')"
                           ".contains(document.getElementById('error'))")
    assert 0 <= error["top"] - field["bottom"] < 12, (error, field)  # right beneath it
    assert field["left"] - 1 <= error["left"] < field["right"], (error, field)
    assert 0 <= error["top"] and error["bottom"] <= await page.eval("innerHeight")  # in view


def test_the_open_class_list_covers_no_text(server, tmp_path):
    """Before: the list was laid over the fields below it and its bottom edge cut through the
    psi strip's hint; now it opens in the flow, with its own hint beneath it."""
    async def check():
        async with _browser(f"{server}/?q=", tmp_path) as page:
            await page.wait_for("!document.getElementById('class-list').hidden")
            listed = await page.eval(f"({RECT})('class-list')")
            assert listed["height"] > 200  # open, showing many of the 1,000 names
            others = await page.eval("""[...document.querySelectorAll(
                'form label, form legend, form .hint, form input, form select, form button')]
                .filter((e) => e.getClientRects().length)
                .map((e) => [e.id || e.textContent.trim(), e.getBoundingClientRect().toJSON()])""")
            assert len(others) > 10
            for name, box in others:
                apart = (box["bottom"] <= listed["top"] or box["top"] >= listed["bottom"]
                         or box["right"] <= listed["left"] or box["left"] >= listed["right"])
                assert apart, f"{name!r} at {box} lies under the open list at {listed}"
            hint = await page.eval(f"({RECT})('class-hint')")
            assert hint["top"] >= listed["bottom"]

    asyncio.run(check())


def test_bidi_controls_in_class_names_are_shown_as_code_points(server, tmp_path):
    """Before: the list, the input and the caption held U+202E itself, so "photo[RLO]gnp.exe"
    displayed as "photoexe.png" and the caption's text after the name ran right to left."""
    async def check():
        async with _browser(f"{server}/?class=3&seed=1&size=1&auto=1", tmp_path) as page:
            await page.wait_for("document.body.dataset.rendered === '1'")
            value, caption, alt = await page.eval("""[
                document.getElementById('class-input').value,
                document.getElementById('grid-caption').textContent,
                document.getElementById('grid').alt]""")
            assert value == "3: photo[U+202E]gnp.exe"
            assert caption.startswith("photo[U+202E]gnp.exe, ψ ")
            assert "(photo[U+202E]gnp.exe)" in alt
            # Search finds the names by what they show; the list shows them escaped too.
            await page.eval("document.getElementById('class-input').focus()")
            await page.eval("document.getElementById('class-input').select()")
            await page.type("u+20")
            shown = await page.eval("[...document.querySelectorAll('#class-list [role=option]')]"
                                    ".map((li) => li.textContent)")
            assert shown == ["3photo[U+202E]gnp.exe", "4left[U+2067]right[U+2069] isolate"]
            text = await page.eval("document.body.innerText + [...document.querySelectorAll("
                                   "'[alt], input')].map((e) => e.alt || e.value).join('')")
            assert not set(text) & set(BIDI)

    asyncio.run(check())


def test_only_enlarged_images_are_pixelated(server, tmp_path):
    """Before: `image-rendering: pixelated` on every image, so a grid shrunk to the column
    dropped whole pixel rows (aliased tiles, uneven seams). The 16-step interpolation is 546 px
    wide: shrunk in a 400 px window, enlarged once the window is 1,400 px."""
    async def check():
        url = f"{server}/?class=3&seed=3&size=3&seed_b=9&steps=16&auto=all"
        async with _browser(url, tmp_path, width=400, height=900) as page:
            await page.wait_for("document.body.dataset.done === 'all'")
            look = ("['grid', 'interp'].map((id) => { const i = document.getElementById(id); "
                    "return [i.naturalWidth, i.clientWidth, getComputedStyle(i).imageRendering] })")
            grid, interp = await page.eval(look)
            assert grid[0] < grid[1] and grid[2] == "pixelated"  # 104 px shown at ~376
            assert interp[0] > interp[1] and interp[2] == "auto"  # 546 px shown at ~376
            strip = await page.eval("[...document.querySelectorAll('#strip img')]"
                                    ".map((i) => getComputedStyle(i).imageRendering)")
            assert strip == ["pixelated"] * 5  # 32 px shown at ~96
            await page.call("Emulation.setDeviceMetricsOverride", width=1400, height=900,
                            deviceScaleFactor=1, mobile=False)
            await page.wait_for("getComputedStyle(document.getElementById('interp'))"
                                ".imageRendering === 'pixelated'")
            _, interp = await page.eval(look)
            assert interp[0] <= interp[1]

    asyncio.run(check())
