"""`llmbatch run --ray`'s engine room: workers that return output lines, and their scheduler.

    await run_on_ray(requests, spec, ClusterLimiter.create(rpm), RayRunConfig(workers=4), on_lines)

The driver alone writes the output: workers send back finished lines, a chunk at a time, and
a chunk whose worker died is redone elsewhere, so every request ends with exactly one line.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import os
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import ray

from ..clients import ClientSpec
from ..io.journal import result_line
from ..retry import RetryPolicy
from ..types import BatchRequest, BatchResult, CompletionRequest
from ._engine import worker_engine
from .limiter import ClusterLimiter

__all__ = ["Lines", "RayRunConfig", "RayWorker", "run_on_ray"]


class _BatchWorker:
    """A CLI worker: requests in, finished output lines out (the driver alone writes them)."""

    def __init__(
        self,
        client: ClientSpec,
        limiter: ClusterLimiter | None,
        concurrency: int,
        request_timeout: float | None,
        retry: RetryPolicy | None,
    ) -> None:
        self.client = client.build()
        self.limiter = limiter.local() if limiter is not None else None
        self.engine = worker_engine(self.client, self.limiter, concurrency, request_timeout, retry)
        self.queue: asyncio.Queue[BatchRequest] | None = None
        self.waiting: dict[str, asyncio.Future[BatchResult]] = {}
        self.feeder: asyncio.Task[None] | None = None

    def pid(self) -> int:
        return os.getpid()

    async def _source(self) -> AsyncIterator[BatchRequest]:
        assert self.queue is not None
        while True:
            yield await self.queue.get()

    async def _drive(self) -> None:
        async for result in self.engine.stream(self._source()):
            future = self.waiting.pop(result.id, None)
            if future is not None and not future.done():
                future.set_result(result)

    async def run_chunk(
        self, chunk: list[tuple[str, CompletionRequest]]
    ) -> list[tuple[str, bytes, bool]]:
        """Run a chunk through this worker's single engine (shared by concurrent chunks)."""
        loop = asyncio.get_running_loop()
        if self.queue is None:
            self.queue = asyncio.Queue()
            self.feeder = loop.create_task(self._drive())
        futures = []
        for rid, request in chunk:
            future: asyncio.Future[BatchResult] = loop.create_future()
            self.waiting[rid] = future
            self.queue.put_nowait(BatchRequest(rid, request))
            futures.append(future)
        results = await asyncio.gather(*futures)
        return [(r.id, result_line(r), r.error is None) for r in results]

    def close(self) -> None:
        if self.limiter is not None:
            self.limiter.close()


RayWorker: Any = ray.remote(num_cpus=0)(_BatchWorker)


Lines = list[tuple[str, bytes, bool]]


@dataclass(slots=True)
class RayRunConfig:
    """How `run_on_ray` spreads a batch over workers."""

    workers: int = 2
    concurrency: int = 32  # per worker
    chunk_size: int | None = None  # default: the per-worker concurrency
    request_timeout: float | None = 600.0
    retry: RetryPolicy | None = None
    max_replacements: int | None = None  # dead workers replaced; default: `workers`
    max_chunk_failures: int = 5


async def run_on_ray(
    requests: Iterator[BatchRequest],
    client: ClientSpec,
    limiter: ClusterLimiter,
    config: RayRunConfig,
    on_lines: Callable[[Lines], None],
) -> None:
    """Spread `requests` over Ray workers; hand every finished chunk's lines to `on_lines`.

    Requests are pulled lazily, a chunk at a time, two chunks in flight per worker. A chunk
    reaches `on_lines` exactly once: if its worker dies first, the whole chunk is sent to
    another worker (and a replacement worker started), so every request ends with exactly one
    line even though a few may have been sent to the provider twice.
    """
    chunk_size = config.chunk_size or config.concurrency
    replacements = config.workers if config.max_replacements is None else config.max_replacements

    def start() -> Any:
        return RayWorker.remote(
            client, limiter, config.concurrency, config.request_timeout, config.retry
        )

    live: list[Any] = [start() for _ in range(config.workers)]
    load: dict[Any, int] = dict.fromkeys(live, 0)
    inflight: dict[asyncio.Future[Lines], tuple[Any, list[tuple[str, CompletionRequest]]]] = {}
    redo: collections.deque[list[tuple[str, CompletionRequest]]] = collections.deque()
    failures: dict[int, int] = {}
    exhausted = False

    def next_chunk() -> list[tuple[str, CompletionRequest]] | None:
        nonlocal exhausted
        if redo:
            return redo.popleft()
        if exhausted:
            return None
        chunk = [(r.id, r.request) for r in itertools.islice(requests, chunk_size)]
        if len(chunk) < chunk_size:
            exhausted = True
        return chunk or None

    try:
        while True:
            for worker in list(live):
                while load[worker] < 2:
                    chunk = next_chunk()
                    if chunk is None:
                        break
                    ref = worker.run_chunk.remote(chunk)
                    inflight[asyncio.wrap_future(ref.future())] = (worker, chunk)
                    load[worker] += 1
            if not inflight:
                return
            done, _ = await asyncio.wait(inflight, return_when=asyncio.FIRST_COMPLETED)
            for future in done:
                worker, chunk = inflight.pop(future)
                load[worker] = load.get(worker, 1) - 1
                try:
                    lines = future.result()
                except ray.exceptions.RayActorError:
                    # The worker died (killed, crashed, node lost): redo its chunk elsewhere.
                    redo.append(chunk)
                    if worker in live:
                        live.remove(worker)
                        load.pop(worker, None)
                        if replacements > 0:
                            replacements -= 1
                            fresh = start()
                            live.append(fresh)
                            load[fresh] = 0
                    if not live:
                        raise RuntimeError("every Ray worker died; no replacements left") from None
                    continue
                except ray.exceptions.RayTaskError:
                    key = id(chunk)
                    failures[key] = failures.get(key, 0) + 1
                    if failures[key] >= config.max_chunk_failures:
                        raise
                    redo.append(chunk)
                    continue
                on_lines(lines)
    finally:
        for future in inflight:
            future.cancel()
        for worker in live:
            with contextlib.suppress(Exception):
                worker.close.remote()
        await asyncio.sleep(0.1)  # let the give-backs leave before the workers go
        for worker in live:
            ray.kill(worker)
