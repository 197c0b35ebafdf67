"""Helpers shared by test files: input and output files, waiting for a condition, virtual
time for many sleepers at once (`SteppedClock`)."""

from __future__ import annotations

import asyncio
import heapq
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any


def write_requests(path: Path, ids: list[str], *, max_tokens: int = 16, **extra: Any) -> None:
    """A JSONL input: one chat prompt per id."""
    lines = [
        json.dumps({"id": rid, "prompt": f"question {rid}", "max_tokens": max_tokens, **extra})
        for rid in ids
    ]
    path.write_text("".join(line + "\n" for line in lines))


def read_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def ids_once(path: Path) -> Counter[str]:
    """The ids of an output file, asserting none appears twice."""
    counts = Counter(rec["custom_id"] for rec in read_lines(path))
    assert not counts or counts.most_common(1)[0][1] == 1, counts.most_common(3)
    return counts


def wait_for(predicate: Any, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


class SteppedClock:
    """Virtual time in which many tasks sleep at once: `advance_to` wakes them in order."""

    def __init__(self) -> None:
        self.now = 0.0
        self._timers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = 0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._seq += 1
        heapq.heappush(self._timers, (self.now + max(0.0, seconds), self._seq, future))
        await future

    async def advance_to(self, until: float) -> None:
        for _ in range(10):
            await asyncio.sleep(0)
        while self._timers and self._timers[0][0] <= until:
            wake, _, future = heapq.heappop(self._timers)
            self.now = max(self.now, wake)
            if not future.done():
                future.set_result(None)
            for _ in range(10):
                await asyncio.sleep(0)
        self.now = max(self.now, until)
