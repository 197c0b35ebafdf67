"""`llmbatch simulate` in a process of its own, for tests and benchmarks.

    with SimulatorProcess("--latency-ms", "50", "--rpm", "1200") as sim:
        client = OpenAIClient(base_url=sim.url + "/v1", api_key="sk-test")
        ...
        sim.stats()["rate_limited"]

A separate process is how users run the simulator, and it keeps the server's CPU off the
client's event loop, so what a benchmark measures is the client. Start-up is bounded: if
the server has not printed `listening on URL` within `startup_timeout`, it is killed and
`TimeoutError` raised. `fetch_stats` and `reset_stats` work on any simulator URL.
"""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from typing import Any

__all__ = ["SimulatorProcess", "fetch_stats", "reset_stats"]

_READY = "listening on "


def fetch_stats(url: str, timeout: float = 10.0) -> dict[str, Any]:
    """The counters of the simulator at `url` (GET /stats)."""
    with urllib.request.urlopen(url + "/stats", timeout=timeout) as resp:
        stats: dict[str, Any] = json.loads(resp.read())
    return stats


def reset_stats(url: str, timeout: float = 10.0) -> None:
    """Zero the counters of the simulator at `url` (POST /stats/reset); limits keep their state."""
    request = urllib.request.Request(url + "/stats/reset", method="POST")
    urllib.request.urlopen(request, timeout=timeout).close()


class SimulatorProcess:
    """Start `python -m llmbatch simulate --port 0 *args`; `.url` once it listens.

    `env` adds variables to the current environment for the child. `close()` (or leaving
    the `with` block) stops it with SIGTERM, then SIGKILL if it does not exit in time.
    """

    def __init__(
        self,
        *args: str,
        env: Mapping[str, str] | None = None,
        startup_timeout: float = 30.0,
        python: str = sys.executable,
    ) -> None:
        self.args = args
        self.proc = subprocess.Popen(
            [python, "-m", "llmbatch", "simulate", "--port", "0", *args],
            stdout=subprocess.PIPE,
            env={**os.environ, **(env or {})},
        )
        try:
            self.url = self._wait_for_url(startup_timeout)
        except BaseException:
            self.close()
            raise

    def _wait_for_url(self, timeout: float) -> str:
        # Read the first line with a deadline: a plain readline() would block forever on a
        # child that hangs before printing.
        stdout = self.proc.stdout
        assert stdout is not None
        deadline = time.monotonic() + timeout
        line = b""
        with selectors.DefaultSelector() as selector:
            selector.register(stdout, selectors.EVENT_READ)
            while not line.endswith(b"\n"):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"simulator did not start within {timeout} s")
                if not selector.select(left):
                    continue
                chunk = os.read(stdout.fileno(), 4096)
                if not chunk:
                    code = self.proc.wait(timeout=5)
                    raise RuntimeError(f"simulator exited with {code} before listening")
                line += chunk
        text = line.decode(errors="replace").splitlines()[0]
        if not text.startswith(_READY):
            raise RuntimeError(f"simulator did not start: {text!r}")
        return text.removeprefix(_READY).strip()

    def stats(self) -> dict[str, Any]:
        return fetch_stats(self.url)

    def reset(self) -> None:
        reset_stats(self.url)

    def close(self, timeout: float = 10.0) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=timeout)
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def __enter__(self) -> SimulatorProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        url = getattr(self, "url", None)
        return f"SimulatorProcess(pid={self.proc.pid}, url={url!r})"
