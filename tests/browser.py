"""A real headless Chromium for tests, driven over the DevTools protocol (CDP) with aiohttp.

    async with Browser.start(tmp_path) as browser:
        await browser.open("file:///.../report.html")
        await browser.wait_until("document.querySelectorAll('.main-svg').length > 0", "plots")
        count = await browser.evaluate("document.querySelectorAll('.js-plotly-plot').length")
        png = await browser.screenshot(tmp_path / "page.png")

Why not Playwright: it downloads its own browser build, which this closed network cannot do;
Debian's `chromium` package is installed by `.ci/run`, and the protocol needs nothing beyond
aiohttp, already a dependency. The flags keep Chromium off the network (without them it
hangs on this machine, reaching for updates and sync). `find_chromium()` is None when no
browser is installed; tests skip then, except under CI (`CI=true`), where `.ci/run` installs
one and a missing browser is a failure, so the browser tests never silently stop running.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp
import pytest

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-extensions",
    "--disable-default-apps",
    "--hide-scrollbars",
    "--remote-debugging-port=0",
]


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if found := shutil.which(name):
            return found
    return None


def require_chromium() -> str:
    """The browser; a skip without one, a failure under CI (which installs it)."""
    found = find_chromium()
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("no Chromium under CI: .ci/run installs it (apt-get install chromium)")
        pytest.skip("no Chromium installed (apt-get install chromium)")
    return found


class Browser:
    def __init__(self, proc: subprocess.Popen[bytes], profile: str) -> None:
        self.proc = proc
        self.profile = profile
        self.session: aiohttp.ClientSession | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.ids = itertools.count(1)

    @classmethod
    def start(cls, width: int = 1280, height: int = 1800) -> Browser:
        binary = require_chromium()
        profile = tempfile.mkdtemp(prefix="llmbatch-chromium-")
        proc = subprocess.Popen(
            [
                binary,
                *FLAGS,
                f"--user-data-dir={profile}",
                f"--window-size={width},{height}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        return cls(proc, profile)

    async def __aenter__(self) -> Browser:
        port_file = Path(self.profile) / "DevToolsActivePort"
        for _ in range(600):  # Chromium writes its port once it listens
            if port_file.exists() and port_file.read_text().count("\n") >= 1:
                break
            if self.proc.poll() is not None:
                raise RuntimeError(f"Chromium exited with {self.proc.returncode}")
            await asyncio.sleep(0.05)
        else:
            raise RuntimeError("Chromium did not open its DevTools port")
        port = int(port_file.read_text().splitlines()[0])
        self.session = aiohttp.ClientSession()
        async with self.session.get(f"http://127.0.0.1:{port}/json/list") as resp:
            targets = await resp.json()
        page = next(t for t in targets if t["type"] == "page")
        self.ws = await self.session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0)
        await self.send("Page.enable")
        await self.send("Runtime.enable")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if self.ws is not None:
                await self.ws.close()
            if self.session is not None:
                await self.session.close()
        finally:
            self.proc.kill()
            self.proc.wait(timeout=30)
            shutil.rmtree(self.profile, ignore_errors=True)

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        """One CDP command; its result (events in between are dropped)."""
        assert self.ws is not None
        number = next(self.ids)
        await self.ws.send_json({"id": number, "method": method, "params": params})
        while True:
            message = await asyncio.wait_for(self.ws.receive_json(), timeout=120)
            if message.get("id") == number:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})  # type: ignore[no-any-return]

    async def open(self, url: str) -> None:
        await self.send("Page.navigate", url=url)
        await self.wait_until("document.readyState === 'complete'", f"{url} to load")

    async def evaluate(self, expression: str) -> Any:
        result = await self.send(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_until(self, expression: str, what: str, timeout: float = 60.0) -> Any:
        """Poll `expression` until it is truthy; its value. (A wait, not a timed assertion:
        the timeout only stops a test that would otherwise hang.)"""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            value = await self.evaluate(expression)
            if value:
                return value
            if loop.time() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            await asyncio.sleep(0.1)

    async def screenshot(self, path: Path) -> bytes:
        result = await self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        image = base64.b64decode(result["data"])
        path.write_bytes(image)
        return image
