"""`llmbatch run --ray`'s engine room: workers that return results, and their scheduler.

    await run_on_ray(requests, spec, ClusterLimiter.create(rpm), RayRunConfig(workers=4),
                     on_results=lambda results: [sink.write(r) for r in results])

The driver alone writes the output: workers send back finished results, a chunk at a time, and
a chunk whose worker died is redone elsewhere, so every request ends with exactly one result.
Results (not pre-rendered lines) come back so the driver renders, logs and caches them exactly
as a local run does; `on_lines` is kept for callers of the first version.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import itertools
import os
import pickle
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import ray

from ..breaker import DEFAULT_MAX_OUTAGE, Outage
from ..clients import ClientSpec
from ..engine import DEFAULT_CONCURRENCY, Concurrency
from ..errors import LLMBatchError
from ..io.journal import result_line
from ..replies import ReplyPolicy
from ..retry import RetryPolicy
from ..tiers import TierPolicy
from ..types import BatchRequest, BatchResult, CompletionRequest
from ._engine import worker_engine
from .breaker import ClusterBreaker
from .limiter import ClusterLimiter

__all__ = ["Lines", "RayRunConfig", "RayWorker", "run_on_ray"]

AUTO_CHUNK = 64
OUTAGES_TIMEOUT = 10.0  # seconds to wait for the breaker actor's outages at the end


def _portable(result: BatchResult) -> BatchResult:
    """`result`, with an error that pickle cannot carry back replaced by a plain one.

    Our errors and the builtins travel fine; an exotic one from a hand-written client might
    not, and would then fail the whole chunk on the driver. Only failures pay for the check.
    """
    error = result.error
    if error is None:
        return result
    try:
        pickle.loads(pickle.dumps(error))
    except Exception:
        error = LLMBatchError(f"{type(error).__name__}: {error}")
    # Everything else travels as is: index, cost, parsed, timing (slotted dataclasses pickle).
    return dataclasses.replace(result, error=error)


class _BatchWorker:
    """A CLI worker: requests in, finished results out (the driver alone writes them)."""

    def __init__(
        self,
        client: ClientSpec,
        limiter: ClusterLimiter | None,
        concurrency: Concurrency,
        request_timeout: float | None,
        retry: RetryPolicy | None,
        max_outage: float | None = DEFAULT_MAX_OUTAGE,
        replies: ReplyPolicy | None = None,
        tiers: TierPolicy | None = None,
        breaker: ClusterBreaker | None = None,
    ) -> None:
        self.client = client.build()
        self.limiter = limiter.local() if limiter is not None else None
        budget = limiter.budget() if limiter is not None else None
        self.engine = worker_engine(
            self.client,
            self.limiter,
            concurrency,
            request_timeout,
            retry,
            max_outage,
            budget,
            replies,
            tiers,
            breaker.local() if breaker is not None else None,
        )
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

    async def run_chunk(self, chunk: list[tuple[str, CompletionRequest]]) -> list[BatchResult]:
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
        return [_portable(r) for r in results]

    def close(self) -> None:
        if self.limiter is not None:
            self.limiter.close()


RayWorker: Any = ray.remote(num_cpus=0)(_BatchWorker)


Lines = list[tuple[str, bytes, bool]]
Chunk = list[tuple[str, CompletionRequest]]


@dataclass(slots=True)
class RayRunConfig:
    """How `run_on_ray` spreads a batch over workers."""

    workers: int = 2
    concurrency: Concurrency = DEFAULT_CONCURRENCY  # per worker: "auto", or a number
    chunk_size: int | None = None  # default: the per-worker concurrency
    request_timeout: float | None = 600.0
    retry: RetryPolicy | None = None
    max_replacements: int | None = None  # dead workers replaced; default: `workers`
    max_chunk_failures: int = 5
    max_outage: float | None = DEFAULT_MAX_OUTAGE
    # Re-asks of invalid replies, retries of truncated ones; requests carry their schema.
    replies: ReplyPolicy | None = None
    # A service tier's capacity refusals (flex): waited out, or moved to another tier.
    tiers: TierPolicy | None = None


async def run_on_ray(
    requests: Iterator[BatchRequest],
    client: ClientSpec,
    limiter: ClusterLimiter,
    config: RayRunConfig,
    on_lines: Callable[[Lines], None] | None = None,
    *,
    on_results: Callable[[list[BatchResult]], None] | None = None,
    on_outages: Callable[[list[Outage]], None] | None = None,
) -> None:
    """Spread `requests` over Ray workers; hand every finished chunk to `on_results` (or, as
    rendered output lines `(custom_id, line, ok)`, to `on_lines`): give exactly one.

    With `max_outage` set, the workers share one outage breaker (`llmbatch.ray.breaker`):
    one probe per interval while the server is down; its outages go to `on_outages` when the
    run ends (however it ends).

    An exception from the callback (the output file failed) stops the run: no more chunks
    are sent, chunks in flight are cancelled and the workers killed.

    Requests are pulled lazily, a chunk at a time, two chunks in flight per worker. A chunk
    reaches the callback exactly once: if its worker dies first, the whole chunk is sent to
    another worker (and a replacement worker started), so every request ends with exactly one
    line even though a few may have been sent to the provider twice.
    """
    if (on_lines is None) == (on_results is None):
        raise TypeError("give exactly one of on_lines and on_results")

    def render(results: list[BatchResult]) -> None:
        assert on_lines is not None
        on_lines([(r.id, result_line(r), r.error is None) for r in results])

    deliver = on_results or render
    # With "auto" a worker's own gate decides how many of its requests are in flight; two
    # chunks of AUTO_CHUNK keep it supplied.
    per_worker = AUTO_CHUNK if config.concurrency == "auto" else config.concurrency
    chunk_size = config.chunk_size or per_worker
    replacements = config.workers if config.max_replacements is None else config.max_replacements
    breaker = None if config.max_outage is None else ClusterBreaker.create(config.max_outage)

    def start() -> Any:
        return RayWorker.remote(
            client,
            limiter,
            config.concurrency,
            config.request_timeout,
            config.retry,
            config.max_outage,
            config.replies,
            config.tiers,
            breaker,
        )

    live: list[Any] = [start() for _ in range(config.workers)]
    load: dict[Any, int] = dict.fromkeys(live, 0)
    inflight: dict[asyncio.Future[list[BatchResult]], tuple[Any, Chunk]] = {}
    redo: collections.deque[Chunk] = collections.deque()
    failures: dict[int, int] = {}
    exhausted = False

    def next_chunk() -> Chunk | None:
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
                    results = future.result()
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
                deliver(results)
    finally:
        for future in inflight:
            future.cancel()
        for worker in live:
            with contextlib.suppress(Exception):
                worker.close.remote()
        await asyncio.sleep(0.1)  # let the give-backs leave before the workers go
        for worker in live:
            ray.kill(worker)
        if breaker is not None:
            await _report_outages(breaker, on_outages)


async def _report_outages(
    breaker: ClusterBreaker, on_outages: Callable[[list[Outage]], None] | None
) -> None:
    """Hand the cluster's outages to `on_outages`, then stop the breaker's actor."""
    try:
        if on_outages is not None:
            outages = await asyncio.wait_for(breaker.outages(), OUTAGES_TIMEOUT)
            if outages:
                on_outages(outages)
    except (TimeoutError, ray.exceptions.RayError):
        pass  # the summary misses them; the results are all written
    finally:
        ray.kill(breaker.actor)
