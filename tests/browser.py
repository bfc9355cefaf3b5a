"""Headless Chromium driven over the DevTools protocol, for the web-page tests that a screenshot
cannot check: a viewport narrower than headless Chromium's 500 px window minimum
(`Emulation.setDeviceMetricsOverride`), key presses (`Input.dispatchKeyEvent`) and reading the
page's state (`Runtime.evaluate`). The protocol is JSON over a websocket; aiohttp (installed with
the serve extra) is the websocket client, so no browser-automation package is needed. Imported by
the tests that use it; skips where Debian's `chromium` is not installed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any, AsyncIterator

import pytest

from serving.client import stop_process

KEYS = {"ArrowDown": 40, "ArrowUp": 38, "Enter": 13, "Escape": 27, "Home": 36, "End": 35,
        "Tab": 9}


class Page:
    """One browser tab: `call` a protocol method, `eval` JavaScript, `press` a key, `wait_for`."""

    def __init__(self, ws):
        self.ws, self.next_id = ws, 0

    async def call(self, method: str, **params) -> dict:
        self.next_id += 1
        await self.ws.send_json({"id": self.next_id, "method": method, "params": params})
        while True:  # events arrive in between; the answer carries our id
            message = json.loads((await self.ws.receive()).data)
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    async def eval(self, expression: str) -> Any:
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True,
                                 awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def press(self, key: str) -> None:
        code = KEYS[key]
        text = {"Enter": "\r"}.get(key)
        down = dict(key=key, code=key, windowsVirtualKeyCode=code, nativeVirtualKeyCode=code)
        await self.call("Input.dispatchKeyEvent", type="keyDown", **down,
                        **({"text": text} if text else {}))
        await self.call("Input.dispatchKeyEvent", type="keyUp", **down)

    async def type(self, text: str) -> None:
        await self.call("Input.insertText", text=text)

    async def wait_for(self, expression: str, timeout_s: float = 30.0) -> Any:
        """Poll `expression` until it is truthy; its value."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            value = await self.eval(expression)
            if value:
                return value
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"{expression!r} stayed falsy for {timeout_s} s")
            await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def open_page(url: str, profile: Path, width: int = 1000,
                    height: int = 800) -> AsyncIterator[Page]:
    """A headless Chromium showing `url` in a `width` x `height` CSS-pixel viewport."""
    import aiohttp

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("the browser tests need Debian's `chromium` package (apt-get install chromium)")
    process = subprocess.Popen(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         "--no-first-run", "--disable-extensions", f"--user-data-dir={profile}",
         "--remote-debugging-port=0", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        port = None
        for line in process.stderr:  # "DevTools listening on ws://127.0.0.1:PORT/devtools/..."
            if found := re.search(r"DevTools listening on ws://[^:]+:(\d+)/", line):
                port = int(found.group(1))
                break
        if port is None:
            raise RuntimeError(f"chromium exited with code {process.wait()} before listening")
        # Keep reading its log, or a full pipe would stall the browser.
        threading.Thread(target=process.stderr.read, daemon=True).start()
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/json/list") as r:
                target = next(t for t in await r.json() if t["type"] == "page")
            async with http.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                page = Page(ws)
                await page.call("Emulation.setDeviceMetricsOverride", width=width, height=height,
                                deviceScaleFactor=1, mobile=False)
                await page.call("Page.navigate", url=url)
                await page.wait_for("document.readyState === 'complete'")
                yield page
    finally:
        stop_process(process, grace_s=10)
