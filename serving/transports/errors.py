"""How the HTTP transports answer errors: the exceptions a route raises and the handlers that turn
them into responses, which `create_app` installs as they are (`EXCEPTION_HANDLERS`).

Bad input is a 4xx with a message, never a 5xx: a request that passes the schema but not the
model (`BadRequest`) and one that fails the schema get 422, an unknown model 404, a full queue 503
with Retry-After. Paths under /v2 answer `{"error": message}`, the form Triton's clients read;
the others FastAPI's `{"detail": message}`.
"""

from __future__ import annotations

import math

from fastapi import Request
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from serving.core.batcher import QueueFull
from serving.core.repository import UnknownModel
from serving.transports.json_body import describe_int

_SHOWN_CHARS = 80  # longer strings in error messages are cut: a 5,000-digit "class" is not echoed


class BadRequest(ValueError):
    """Input that passes the schema but not the model (unknown class, too many images)."""


def v2_error(message: str, status: int, headers: dict | None = None) -> JSONResponse:
    """A KServe v2 error body: `{"error": message}`."""
    return JSONResponse({"error": message}, status_code=status, headers=headers)


async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
    # FastAPI's own handler echoes each bad input; JSON has no NaN or Infinity, so a request
    # with truncation=NaN made that echo fail with a 500. Echo a JSON-safe, bounded form.
    return JSONResponse({"detail": json_safe(jsonable_encoder(exc.errors()))}, status_code=422)


async def queue_full(_: Request, exc: QueueFull) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=503,
                        headers={"Retry-After": str(exc.retry_after_s)})


async def bad_request(_: Request, exc: BadRequest) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=422)


async def unknown_model(_: Request, exc: UnknownModel) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=404)


async def http_error(request: Request, exc: StarletteHTTPException):
    # Triton's clients parse {"error": ...} from any failed /v2 call; FastAPI's default body
    # is {"detail": ...}, which tritonclient cannot read. Other paths keep FastAPI's form.
    if request.url.path.startswith("/v2"):
        message = (f"{request.method} {request.url.path}: this server has no such endpoint"
                   if exc.status_code in (404, 405) else str(exc.detail))
        return v2_error(message, exc.status_code, getattr(exc, "headers", None))
    return await http_exception_handler(request, exc)


EXCEPTION_HANDLERS = {RequestValidationError: invalid, QueueFull: queue_full,
                      BadRequest: bad_request, UnknownModel: unknown_model,
                      StarletteHTTPException: http_error}


def json_safe(value):
    """`value` (parsed JSON) with non-finite floats as strings ("nan", "inf") and long strings cut
    to _SHOWN_CHARS, so it can be sent back in an error body."""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, str):
        return shorten(value)
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return describe_int(value)  # JSON could write it, but not past 4,300 digits, nor briefly
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def shorten(text: str) -> str:
    return text if len(text) <= _SHOWN_CHARS else f"{text[:_SHOWN_CHARS]}... ({len(text)} chars)"
