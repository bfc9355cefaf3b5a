"""The server's browser-facing routes: the web page at `/`, its files under `/static`, and `/docs`.

Everything is served from `serving/static/`, nothing from a CDN: the server often runs where
browsers cannot reach the internet (a cluster behind a proxy, an air-gapped lab), and FastAPI's
default /docs and /redoc pages load their JavaScript and CSS from a CDN. No installed package
ships Swagger UI or ReDoc assets (fastapi-offline and swagger-ui-bundle would be new
dependencies of ~1.5 MB for one page), so `/docs` is a small self-contained page
(`static/docs.html` + `docs.js`) that renders the app's own `/openapi.json`: every route with its
summary, parameters, request body fields and responses, and a form per POST route to send a
JSON body and show the answer.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).with_name("static")


def add_page_routes(app: FastAPI) -> None:
    """`/` (the page), `/docs` (the API reference) and `/static/*` on `app`, which must have been
    created with `docs_url=None, redoc_url=None`."""

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(STATIC / "index.html")

    @app.get("/docs", include_in_schema=False)
    def docs():
        return FileResponse(STATIC / "docs.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
