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
the app mounts `static_files()` at `/static`.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).parent.parent / "static"  # serving/static, the package data

router = APIRouter(include_in_schema=False)


@router.get("/")
def page():
    return FileResponse(STATIC / "index.html")


@router.get("/docs")
def docs():
    return FileResponse(STATIC / "docs.html")


def static_files() -> StaticFiles:
    return StaticFiles(directory=STATIC)
