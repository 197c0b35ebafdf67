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
