"""Reading JSON request bodies so that a bad number is refused naming its field.

Python's JSON reader refuses integers of more than 4,300 digits (`sys.get_int_max_str_digits`, a
guard against quadratic conversion) with one message for the whole body: FastAPI answered
"There was an error parsing the body" and the v2 routes the limit's text, neither naming the
field. `loads` reads such integers exactly, in 4,000-digit chunks (the bodies are bounded: 64 KiB
for /v1, a few MiB for /v2, so the work stays small), and leaves the verdict to the checks that
know the field: /v1's schema (`JsonBodyRoute`, whose requests parse with `loads`) answers 422
with the field's location, v2's `huge_integer_at` names the input.
"""

from __future__ import annotations

import json
import math
from typing import Any, Callable

from fastapi import Request, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError

_CHUNK = 4000  # digits converted at a time, under Python's 4,300-digit limit
_SHOWN_BITS = 64  # integers larger than int64 are described by their length, not written out


def json_int(text: str) -> int:
    """int(text) for a JSON integer of any length."""
    if len(text) <= _CHUNK:
        return int(text)
    sign, digits = (-1, text[1:]) if text[0] == "-" else (1, text)
    value = 0
    for start in range(0, len(digits), _CHUNK):
        chunk = digits[start:start + _CHUNK]
        value = value * 10 ** len(chunk) + int(chunk)
    return sign * value


def loads(text: str | bytes) -> tuple[Any, bool]:
    """(json.loads with integers of any length (`json_int`), whether an integer beyond int64
    was read: only then need `huge_integer_at` walk the value)."""
    huge = False

    def parse_int(digits: str) -> int:
        nonlocal huge
        huge = huge or len(digits) > 18
        return json_int(digits)

    return json.loads(text, parse_int=parse_int), huge


def describe_int(value: int) -> str:
    """`value` as text when it is short, else its length: "an integer of 5000 digits"."""
    if value.bit_length() <= _SHOWN_BITS:
        return str(value)
    return f"an integer of {int(math.log10(abs(value))) + 1} digits"


def huge_integer_at(value: Any, where: str = "") -> str | None:
    """Where in parsed JSON `value` the first integer beyond int64 sits ("inputs['z'].shape[1]"),
    or None. Entries of a list that carry a "name" (v2 inputs) are shown by it."""
    if isinstance(value, int) and not isinstance(value, bool):
        return where or "the body" if value.bit_length() > 63 else None
    if isinstance(value, dict):
        items = ((f"{where}.{key}" if where else str(key), v) for key, v in value.items())
    elif isinstance(value, list):
        items = ((f"{where}[{v['name']!r}]" if isinstance(v, dict) and isinstance(
            v.get("name"), str) else f"{where}[{i}]", v) for i, v in enumerate(value))
    else:
        return None
    for path, item in items:
        if (found := huge_integer_at(item, path)) is not None:
            return found
    return None


class JsonRequest(Request):
    """A Request whose JSON is read with `loads`."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = loads(await self.body())[0]
        return self._json


class JsonBodyRoute(APIRoute):
    """An APIRoute whose JSON body is read with `loads` (FastAPI's documented way to change how
    a request is read: a Request subclass handed to the route's handler)."""

    def get_route_handler(self) -> Callable:
        handler = super().get_route_handler()

        async def read_with_long_integers(request: Request) -> Response:
            return await handler(JsonRequest(request.scope, request.receive))

        return read_with_long_integers


def plainly_valid(body: bytes, schema: type[BaseModel]) -> BaseModel | None:
    """`body` (sent as exactly `application/json`) as `schema` when FastAPI would read it so
    without a word: a non-empty JSON object, read with `loads`, that passes the schema, validated
    as FastAPI validates a lone body model. None for anything else: the caller then lets FastAPI
    answer the request, its errors included, as it always did (`serving.transports.v1.LeanGenerate`)."""
    if not body:
        return None
    try:
        value = loads(body)[0]
    except (ValueError, RecursionError):  # not JSON, not UTF-8, nested too deep: FastAPI answers
        return None
    if not isinstance(value, dict):
        return None
    try:
        return schema.model_validate(value, from_attributes=True)
    except ValidationError:
        return None
