"""Shared test helpers: a fake clock whose sleep advances time instantly."""

from __future__ import annotations

import asyncio

import pytest


class FakeClock:
    """`clock()` returns virtual seconds; `await sleep(s)` advances them and yields once."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += max(0.0, seconds)
        await asyncio.sleep(0)

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


class SimProcess:
    """`llmbatch simulate` in its own process, as users run it."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        import os
        import subprocess
        import sys

        self.proc = subprocess.Popen(
            [sys.executable, "-m", "llmbatch", "simulate", "--port", "0", *args],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.startswith("listening on "), line
        self.url = line.split()[-1]

    def stats(self) -> dict:  # type: ignore[type-arg]
        import json
        import urllib.request

        with urllib.request.urlopen(self.url + "/stats", timeout=10) as resp:
            return json.loads(resp.read())  # type: ignore[no-any-return]

    def reset(self) -> None:
        import urllib.request

        req = urllib.request.Request(self.url + "/stats/reset", method="POST")
        urllib.request.urlopen(req, timeout=10).close()

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


@pytest.fixture
def start_sim():  # type: ignore[no-untyped-def]
    started: list[SimProcess] = []

    def start(*args: str) -> SimProcess:
        sim = SimProcess(*args)
        started.append(sim)
        return sim

    yield start
    for sim in started:
        sim.close()
