"""The server's browser-facing routes: the web page at `/`, its files under `/static`, and `/docs`.

Everything is served from `serving/static/`, nothing from a CDN: the server often runs where
browsers cannot reach the internet (a cluster behind a proxy, an air-gapped lab), and FastAPI's
default /docs and /redoc pages load their JavaScript and CSS from a CDN. No installed package
ships Swagger UI or ReDoc assets (fastapi-offline and swagger-ui-bundle would be new
dependencies of ~1.5 MB for one page), so `/docs` is a small self-contained page
(`static/docs.html` + `docs.js`) that renders the app's own `/openapi.json`: every route with its
summary, parameters, request body fields and responses, and a form per POST route to send a
JSON body and show the answer.

`router` holds `/` and `/docs` (the app must be created with `docs_url=None, redoc_url=None`);
the app mounts `static_files()` at `/static`. The page at `/` is `static/index.html` with the psi
range of `bigan.onnx_metadata` written in (`render_page`): the slider's bounds, and with them the
psi strip's check in app.js, are the ones the server checks a request against.
"""

from __future__ import annotations

from pathlib import Path

from typing import Callable

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles

from bigan import onnx_metadata
from serving.transports.v1 import MAX_SEED

STATIC = Path(__file__).parent.parent / "static"  # serving/static, the package data

router = APIRouter(include_in_schema=False)


@router.get("/")
def page():
    return HTMLResponse(render_page())


def render_page() -> str:
    """index.html with its {{MIN_TRUNCATION}} and {{MAX_TRUNCATION}} replaced by the contract's
    psi range (read per request: 3 kB, and a test can change the range)."""
    html = (STATIC / "index.html").read_text(encoding="utf-8")
    for key in ("MIN_TRUNCATION", "MAX_TRUNCATION"):
        html = html.replace("{{" + key + "}}", f"{getattr(onnx_metadata, key):g}")
    return html


@router.get("/docs")
def docs():
    return FileResponse(STATIC / "docs.html")


def exact_bounds_openapi(app: FastAPI) -> Callable[[], dict]:
    """`app.openapi` with the seed bound exact. FastAPI's OpenAPI models hold `maximum` as a
    float, so 2^63 - 1 (/v1's MAX_SEED, the one bound past 2^53) came out as
    9.223372036854776e+18 and /docs showed 9223372036854776000; it is put back as the integer."""
    build = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            app.openapi_schema = _exact(build())
        return app.openapi_schema

    return openapi


def _exact(value):
    if isinstance(value, dict):
        return {k: MAX_SEED if k in ("maximum", "minimum") and value_is_max_seed(v) else _exact(v)
                for k, v in value.items()}
    if isinstance(value, list):
        return [_exact(v) for v in value]
    return value


def value_is_max_seed(value) -> bool:
    return isinstance(value, float) and value == float(MAX_SEED)


def static_files() -> StaticFiles:
    return StaticFiles(directory=STATIC)
