"""Scale out on Ray: one rate limit for the whole cluster, and nothing lost when a worker dies.

    import ray, llmbatch.ray as lr
    ray.init()
    limiter = lr.ClusterLimiter.create(requests_per_minute=1200)
    spec = lr.ClientSpec(base_url="http://vllm:8000/v1", model="Qwen/Qwen2.5-7B-Instruct")
    ds = ray.data.read_parquet("docs/").map_batches(
        lr.LLMMapper,
        fn_constructor_kwargs={"client": spec, "template": "Summarize: {text}", "limiter": limiter},
        concurrency=4, batch_size=64, num_cpus=0.5,
    )

Needs `pip install llmbatch[ray]`; importing this module is the only thing that imports Ray.

The limiter: one actor owns a `RateLimiter` (requests and tokens per minute, adaptive mode
included). Workers do not ask it once per request: each leases a slice of capacity (the
request slots of `slice_seconds`, default 0.25 s, and a token budget), waits out each slot
locally, returns what it did not use, and settles actual token usage with its next lease.
A 429 seen by any worker pauses the actor's limiter, and every worker learns it at its next
lease (within one slice), dropping slots of the discarded schedule. Ray Data LLM paces each
actor on its own, so N actors send N times the rate; here the cluster shares one limit.

API keys are never shipped through Ray: a `ClientSpec` names the environment variable, and
each worker reads it from its own environment.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import itertools
import math
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

import ray

from .clients import ClientSpec
from .clients._http import ProviderClient
from .engine import Engine, EngineConfig
from .errors import RateLimitError, error_code
from .events import Admission
from .io.journal import result_line
from .limiter import RateLimiter, estimate_tokens
from .retry import RetryPolicy
from .types import (
    BatchRequest,
    BatchResult,
    CompletionRequest,
    CompletionResponse,
    RateLimitInfo,
    ResponseFormat,
)

__all__ = [
    "ClientSpec",
    "ClusterLimiter",
    "LLMMapper",
    "LeasedLimiter",
    "RayRunConfig",
    "RayWorker",
    "run_on_ray",
]

T = TypeVar("T")

DEFAULT_SLICE_SECONDS = 0.25
UNLIMITED_SLICE = 64  # slots per lease while no rate is known
OBSERVE_EVERY = 1.0  # seconds between forwarded rate-limit headers, per worker


class _LimiterState:
    """Owns the cluster's `RateLimiter`; its methods run one at a time."""

    def __init__(self, rpm: float | None, tpm: float | None, slice_seconds: float) -> None:
        self.limiter = RateLimiter(rpm, tpm)
        self.slice = slice_seconds

    def lease(self, tokens_needed: int, settle_delta: int) -> tuple[list[float], int, int]:
        lim = self.limiter
        if settle_delta and lim.tokens_per_minute:
            lim.settle(0, settle_delta)
        rpm, tpm = lim.requests_per_minute, lim.tokens_per_minute
        count = max(1, math.ceil(rpm * self.slice / 60)) if rpm else UNLIMITED_SLICE
        tokens = max(tokens_needed, math.ceil(tpm * self.slice / 60)) if tpm else 0
        if tpm and tokens > tpm:
            tokens = tokens_needed  # the caller raises TokenBudgetError for this one
        return lim.lease(count, tokens), tokens, lim.epoch

    def give_back(self, count: int, tokens: int) -> None:
        self.limiter.give_back(count, tokens)

    def rate_limited(self, retry_after: float | None, info: dict[str, Any] | None) -> None:
        rate_limit = RateLimitInfo(**info) if info else None
        self.limiter.report(None, RateLimitError(retry_after=retry_after, rate_limit=rate_limit))

    def observe(self, info: dict[str, Any]) -> None:
        self.limiter.report(CompletionResponse("", rate_limit=RateLimitInfo(**info)), None)

    def status(self) -> dict[str, Any]:
        return asdict(self.limiter.status())


# Actors need no CPU of their own: they wait on the network and on timers.
_LimiterActor: Any = ray.remote(num_cpus=0)(_LimiterState)


class ClusterLimiter:
    """A handle on the cluster's limiter actor; picklable, so it travels to workers.

    `ClusterLimiter.create(...)` starts the actor; `local()` gives a worker its `Admission`.
    With no limits the actor starts adaptive and learns the server's limit from its headers
    and 429s, for the whole cluster at once.
    """

    def __init__(self, actor: Any, slice_seconds: float = DEFAULT_SLICE_SECONDS) -> None:
        self.actor = actor
        self.slice_seconds = slice_seconds

    @classmethod
    def create(
        cls,
        requests_per_minute: float | None = None,
        tokens_per_minute: float | None = None,
        *,
        slice_seconds: float = DEFAULT_SLICE_SECONDS,
    ) -> ClusterLimiter:
        actor = _LimiterActor.remote(requests_per_minute, tokens_per_minute, slice_seconds)
        return cls(actor, slice_seconds)

    def local(self) -> LeasedLimiter:
        return LeasedLimiter(self.actor, self.slice_seconds)

    def status(self) -> dict[str, Any]:
        return ray.get(self.actor.status.remote())  # type: ignore[no-any-return]


class _LeasedPermit:
    __slots__ = ("estimate", "owner")

    def __init__(self, owner: LeasedLimiter, estimate: int) -> None:
        self.owner = owner
        self.estimate = estimate

    def release(self, response: CompletionResponse | None, error: BaseException | None) -> None:
        self.owner._release(self, response, error)


class LeasedLimiter:
    """A worker's view of the cluster limiter: an `Admission` that spends leased slices.

    Bound to the event loop it is first used on.
    """

    def __init__(self, actor: Any, slice_seconds: float = DEFAULT_SLICE_SECONDS) -> None:
        self.actor = actor
        self.slice_seconds = slice_seconds
        self._slots: collections.deque[float] = collections.deque()
        self._tokens = 0
        self._token_limited = False
        self._epoch = -1
        self._settle = 0
        self._paused_until = 0.0
        self._last_observe = 0.0
        self._lock: asyncio.Lock | None = None
        self.leases = 0

    async def admit(self, request: CompletionRequest) -> _LeasedPermit:
        estimate = estimate_tokens(request)
        if self._lock is None:
            self._lock = asyncio.Lock()
        while True:
            now = time.monotonic()
            # Slots far in the past belong to an idle spell; using them now would be a burst.
            while self._slots and self._slots[0] < now - self.slice_seconds:
                self._slots.popleft()
            enough = not self._token_limited or self._tokens >= estimate
            if self._slots and enough and now >= self._paused_until:
                slot = self._slots.popleft()
                if self._token_limited:
                    self._tokens -= estimate
                break
            async with self._lock:
                if not self._slots or (self._token_limited and self._tokens < estimate):
                    await self._refill(estimate)
            if self._paused_until > time.monotonic():
                await asyncio.sleep(self._paused_until - time.monotonic())
        delay = slot - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        return _LeasedPermit(self, estimate)

    async def _refill(self, estimate: int) -> None:
        settle, self._settle = self._settle, 0
        delays, tokens, epoch = await self.actor.lease.remote(estimate, settle)
        self.leases += 1
        now = time.monotonic()
        if epoch != self._epoch:
            self._slots.clear()  # a pause discarded the schedule these came from
            self._epoch = epoch
        self._slots.extend(now + d for d in delays)
        self._token_limited = tokens > 0
        self._tokens += tokens

    def _release(
        self,
        permit: _LeasedPermit,
        response: CompletionResponse | None,
        error: BaseException | None,
    ) -> None:
        if response is not None:
            used = response.usage.total_tokens
            if used and self._token_limited:
                self._settle += used - permit.estimate
            info = response.rate_limit
            now = time.monotonic()
            if info is not None and now - self._last_observe >= OBSERVE_EVERY:
                self._last_observe = now
                self.actor.observe.remote(asdict(info))
        elif isinstance(error, RateLimitError):
            pause = error.retry_after if error.retry_after is not None else 1.0
            self._paused_until = max(self._paused_until, time.monotonic() + pause)
            self._slots.clear()
            info_dict = asdict(error.rate_limit) if error.rate_limit is not None else None
            self.actor.rate_limited.remote(error.retry_after, info_dict)

    def close(self) -> None:
        """Give unused slots and tokens back to the cluster."""
        now = time.monotonic()
        unused = sum(1 for t in self._slots if t >= now)
        if unused or self._tokens or self._settle:
            self.actor.give_back.remote(unused, max(0, self._tokens - self._settle))
        self._slots.clear()
        self._tokens = 0
        self._settle = 0


class _LoopThread:
    """An event loop on its own thread: keeps a worker's connections alive between calls."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        future: concurrent.futures.Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result()


def _engine(
    client: ProviderClient,
    admission: Admission | None,
    concurrency: int,
    request_timeout: float | None,
    retry: RetryPolicy | None,
) -> Engine:
    return Engine(
        client,
        EngineConfig(
            max_concurrency=concurrency,
            request_timeout=request_timeout,
            retry=retry or RetryPolicy(),
            admission=admission,
        ),
    )


class LLMMapper:
    """A callable class for `Dataset.map_batches`: rows in, rows with LLM results out.

    Each row becomes a request from `template` (fields by column name) or from the text in
    `prompt_column`. Added columns: `content`, `error`, `prompt_tokens`, `completion_tokens`,
    `duration`, `attempts`. Failed rows are kept, with `error` set, never dropped.
    """

    def __init__(
        self,
        client: ClientSpec,
        *,
        template: str | None = None,
        prompt_column: str | None = None,
        limiter: ClusterLimiter | None = None,
        concurrency: int = 32,
        max_tokens: int | None = None,
        temperature: float | None = None,
        response_format: ResponseFormat = "text",
        system: str | None = None,
        request_timeout: float | None = 600.0,
        retry: RetryPolicy | None = None,
    ) -> None:
        if (template is None) == (prompt_column is None):
            raise ValueError("give exactly one of template= or prompt_column=")
        self.template = template
        self.prompt_column = prompt_column
        self.defaults = dict(
            max_tokens=max_tokens,
            temperature=temperature,
            response_format=response_format,
            system=system,
        )
        self._runner = _LoopThread()
        self._client = client.build()
        self._limiter = limiter.local() if limiter is not None else None
        self._engine = _engine(self._client, self._limiter, concurrency, request_timeout, retry)

    def _prompt(self, row: Mapping[str, Any]) -> str:
        if self.template is not None:
            return self.template.format_map(row)
        return str(row[self.prompt_column])  # type: ignore[index]

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        columns = list(batch)
        n = len(batch[columns[0]]) if columns else 0
        rows = [{c: batch[c][i] for c in columns} for i in range(n)]
        requests = [
            BatchRequest(str(i), CompletionRequest(prompt=self._prompt(row), **self.defaults))  # type: ignore[arg-type]
            for i, row in enumerate(rows)
        ]
        results = self._runner.run(self._collect(requests))
        out = dict(batch)
        out["content"] = [r.response.content if r.response else None for r in results]
        out["error"] = [
            None if r.error is None else f"{error_code(r.error)}: {r.error}" for r in results
        ]
        out["prompt_tokens"] = [
            r.response.usage.prompt_tokens if r.response else 0 for r in results
        ]
        out["completion_tokens"] = [
            r.response.usage.completion_tokens if r.response else 0 for r in results
        ]
        out["duration"] = [r.duration for r in results]
        out["attempts"] = [r.attempts for r in results]
        return out

    async def _collect(self, requests: Sequence[BatchRequest]) -> list[BatchResult]:
        results = [r async for r in self._engine.stream(requests)]
        results.sort(key=lambda r: int(r.id))
        return results

    def __del__(self) -> None:
        limiter = getattr(self, "_limiter", None)
        if limiter is not None:
            limiter.close()


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
        self.engine = _engine(self.client, self.limiter, concurrency, request_timeout, retry)
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
