"""uvicorn's HTTP protocol with two bounds it lacks: a deadline for request headers and a cap on
open connections (`bigan serve --header-timeout`, `--max-connections`).

uvicorn times out idle keep-alive connections only after a response, and `--body-timeout`
(`serving.transports.middleware.BodyDeadline`) covers bodies, which the app sees; a client that
trickles header bytes (or connects and sends nothing) reaches no app code and was held forever:
3,000 such connections stayed open past 60 s (issue 33). uvicorn's `limit_concurrency` answers 503
only once a request's headers are complete, so it bounds neither. `GuardedHttpToolsProtocol` arms
a timer when a connection opens and when a request begins, disarms it when the request's headers
are complete, and answers 408 and closes when it fires; a connection beyond `max_connections`
gets 503 and is closed at once. It reads its bounds from the `ServeConfig` in
`$BIGAN_SERVE_CONFIG`, which `serving.server.serve` sets for its own process and the uvicorn
workers it starts alike (a protocol class travels to worker processes by name, not with state).
"""

from __future__ import annotations

import functools
import json
import os

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from serving.config import ServeConfig
from serving.server import CONFIG_ENV


@functools.cache
def _bounds() -> tuple[float, int]:
    """(header deadline in seconds, 0: none; most open connections) of this process's config."""
    cfg = ServeConfig.from_json(os.environ[CONFIG_ENV]) if CONFIG_ENV in os.environ else None
    if cfg is None:
        return ServeConfig.header_timeout_s, ServeConfig.max_connections
    return cfg.header_timeout_s, cfg.max_connections


def _raw_response(status: str, message: str) -> bytes:
    body = json.dumps({"detail": message}).encode()
    return (f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\nconnection: close\r\n"
            f"content-length: {len(body)}\r\n\r\n").encode() + body


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """`HttpToolsProtocol` with a header deadline and a connection cap (see the module)."""

    _header_timer = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        header_timeout_s, max_connections = _bounds()
        if len(self.connections) > max_connections:
            self._answer_and_close("503 Service Unavailable", f"this server holds its limit of "
                                   f"{max_connections} open connections; retry shortly")
            return
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._header_timer is None:  # a connection's first request counts from its opening
            self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        header_timeout_s = _bounds()[0]
        if header_timeout_s > 0:
            self._header_timer = self.loop.call_later(header_timeout_s, self._headers_late)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_late(self) -> None:
        self._header_timer = None
        if self.cycle is not None and not self.cycle.response_complete:
            self.transport.close()  # a response is under way: no room for another
            return
        self._answer_and_close("408 Request Timeout", f"the request headers did not arrive "
                               f"within {_bounds()[0]:g} s; send them at once")

    def _answer_and_close(self, status: str, message: str) -> None:
        if not self.transport.is_closing():
            self.transport.write(_raw_response(status, message))
            self.transport.close()
