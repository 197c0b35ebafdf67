"""The seed's face: `BatchProcessor` and `BatchProcessorWithProgress`, thin over the engine.

    processor = BatchProcessor(client, BatchProcessorConfig(max_concurrency=10))
    results = processor.process_batch(requests, timeout=600)   # input order
    stats = calculate_batch_stats(results)

The sync methods work inside a running event loop too (Jupyter, an async web handler): the
batch then runs on a helper thread with its own loop and the caller's thread blocks until it
ends. From async code prefer `await processor.aprocess_batch(...)`, which does not block.
A Ctrl-C during the sync `process_batch` cancels what is in flight and raises
`BatchInterrupted` (a `KeyboardInterrupt`) carrying every result known at that moment; inside
a running loop too, where the interrupt cancels the batch on the helper thread, so no request
is admitted after it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import threading
import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Iterable,
    Sequence,
)
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .admission import Admission
from .breaker import DEFAULT_MAX_OUTAGE
from .clients.base import LLMClient
from .engine import (
    DEFAULT_REQUEST_TIMEOUT,
    Concurrency,
    Engine,
    EngineConfig,
    RequestSource,
    check_concurrency,
)
from .errorlog import ErrorHandler, request_text
from .events import (
    BatchFinished,
    Event,
    Listener,
    RequestFinished,
    ResponseCache,
)
from .progress import ProgressLogger, ProgressTracker, RichProgress
from .replies import ReplyPolicy
from .retry import RetryPolicy
from .schema import Schema, SchemaMode
from .stats import BatchStats, StatsCollector
from .types import BatchProgress, BatchRequest, BatchResult, PromptSection, conversational

__all__ = [
    "BatchInterrupted",
    "BatchProcessor",
    "BatchProcessorConfig",
    "BatchProcessorWithProgress",
    "run_sync",
]

T = TypeVar("T")


@dataclass(slots=True)
class BatchProcessorConfig:
    """The seed's `BatchProcessorConfig`, plus the engine's knobs.

    `progress_callback` is called with a `BatchProgress` after every completed request.
    `max_concurrency` is a number, or "auto" to find it from latency (self-hosted servers).
    `limiter` is any `Admission` (a `RateLimiter`); it may be shared by processors. When
    None, a `ThrottledLLMClient`'s limiter is used, else an adaptive `RateLimiter()`.
    `max_outage`: seconds a server-wide outage is waited out before requests fail.
    `budget`: a hard cap on money (`llmbatch.Budget(max_cost, pricer)`); requests it does not
    admit end with `BudgetExceededError`, the money spent is `budget.spent`.
    `response_model`: a pydantic model class (or a `Schema`, or a JSON Schema dict) every chat
    request without a schema of its own must answer in; `result.parsed` is then an instance
    of it. `schema_mode` "native" (the provider's structured output) or "prompt" (JSON mode
    plus the schema in the system prompt). `replies`: re-asks of invalid replies and retries
    of truncated ones (`llmbatch.replies.ReplyPolicy`).
    """

    max_concurrency: Concurrency = 10
    progress_callback: Callable[[BatchProgress], None] | None = None
    error_handler: ErrorHandler | None = None
    prompt_section: PromptSection | str = ""
    request_timeout: float | None = DEFAULT_REQUEST_TIMEOUT
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    limiter: Admission | None = None
    cache: ResponseCache | None = None
    listeners: Sequence[Listener] = ()
    validate_json: bool = True
    max_outage: float | None = DEFAULT_MAX_OUTAGE
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    budget: Admission | None = None
    response_model: Any = None
    schema_mode: SchemaMode | None = None
    replies: ReplyPolicy = field(default_factory=ReplyPolicy)

    def __post_init__(self) -> None:
        check_concurrency(self.max_concurrency)
        if self.response_model is not None:
            self.response_model = Schema.of(self.response_model, mode=self.schema_mode)

    def engine_config(self) -> EngineConfig:
        return EngineConfig(
            max_concurrency=self.max_concurrency,
            request_timeout=self.request_timeout,
            retry=self.retry,
            limiter=self.limiter,
            max_outage=self.max_outage,
            cache=self.cache,
            listeners=self.listeners,
            validate_json=self.validate_json,
            clock=self.clock,
            sleep=self.sleep,
            budget=self.budget,
            replies=self.replies,
        )


class BatchInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped a sync batch; `results` holds what finished, in input order.

    Requests that were in flight or not started have a `BatchCancelledError` result.
    """

    def __init__(self, results: list[BatchResult]) -> None:
        super().__init__(f"batch interrupted; {sum(r.ok for r in results)} results succeeded")
        self.results = results


# How often the caller's thread wakes while a batch runs on the helper thread: short, so a
# Ctrl-C is noticed at once; how long it then waits for the batch to wind down.
_POLL_SECONDS = 0.1
_CANCEL_GRACE_SECONDS = 30.0


def run_sync(factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion from sync code, even inside a running event loop.

        results = run_sync(lambda: processor.aprocess_batch(requests))

    Inside a running loop (Jupyter) the coroutine runs on a helper thread with its own loop.
    A Ctrl-C in the calling thread then cancels it there, waits for the cancellation to
    finish (so what was in flight is recorded), and re-raises `KeyboardInterrupt`.
    """
    try:
        caller_loop = asyncio.get_running_loop()
    except RuntimeError:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            return runner.run(factory())
    return _run_on_helper_thread(factory, asyncio.current_task(caller_loop))


def _run_on_helper_thread(
    factory: Callable[[], Coroutine[Any, Any, T]], caller: asyncio.Task[Any] | None
) -> T:
    outcome: concurrent.futures.Future[T] = concurrent.futures.Future()
    started = threading.Event()
    handle: list[tuple[asyncio.AbstractEventLoop, asyncio.Task[Any]]] = []

    async def main() -> T:
        task = asyncio.current_task()
        assert task is not None
        handle.append((asyncio.get_running_loop(), task))
        started.set()
        return await factory()

    def thread_main() -> None:
        try:
            with asyncio.Runner(loop_factory=_loop_factory()) as runner:
                outcome.set_result(runner.run(main()))
        except BaseException as exc:  # handed to the caller's thread, which re-raises it
            outcome.set_exception(exc)
        finally:
            started.set()

    # A cancel already pending on the caller (sync code in a `finally` during cancellation)
    # is not an interrupt of this batch: only a new one is.
    cancels_before = caller.cancelling() if caller is not None else 0
    thread = threading.Thread(target=thread_main, name="llmbatch-run-sync", daemon=True)
    thread.start()
    try:
        # Short waits rather than one blocking `result()`: the caller's thread stays
        # responsive to Ctrl-C, and sees the cancel that `asyncio.run`'s own SIGINT handler
        # puts on the caller's (blocked) task instead of raising.
        while True:
            try:
                return outcome.result(timeout=_POLL_SECONDS)
            except concurrent.futures.TimeoutError:
                if caller is not None and caller.cancelling() > cancels_before:
                    raise KeyboardInterrupt from None
    except KeyboardInterrupt:
        _cancel_and_wait(thread, started, handle)
        raise
    except concurrent.futures.CancelledError:
        raise KeyboardInterrupt from None


def _cancel_and_wait(
    thread: threading.Thread,
    started: threading.Event,
    handle: list[tuple[asyncio.AbstractEventLoop, asyncio.Task[Any]]],
) -> None:
    """Cancel the helper's task and wait (bounded) for it to finish; a second Ctrl-C stops
    the wait."""
    try:
        started.wait(_CANCEL_GRACE_SECONDS)
        if handle:
            loop, task = handle[0]
            with contextlib.suppress(RuntimeError):  # the loop already closed: it finished
                loop.call_soon_threadsafe(task.cancel)
        deadline = time.monotonic() + _CANCEL_GRACE_SECONDS
        while thread.is_alive() and time.monotonic() < deadline:
            thread.join(_POLL_SECONDS)
    except KeyboardInterrupt:
        pass  # the user insists: return now, the helper thread is a daemon


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


class BatchProcessor:
    """Runs batches of requests through one client with the seed's semantics."""

    def __init__(self, client: LLMClient, config: BatchProcessorConfig | None = None) -> None:
        self.client = client
        self.config = config or BatchProcessorConfig()
        self.engine = Engine(client, self.config.engine_config())

    def _batch_listeners(self, total: int | None) -> list[Listener]:
        listeners: list[Listener] = []
        cfg = self.config
        if cfg.progress_callback is not None:
            tracker = ProgressTracker(total, clock=cfg.clock)
            callback = cfg.progress_callback

            def on_progress(event: Event) -> None:
                if isinstance(event, RequestFinished):
                    callback(tracker.on_complete(event.result.ok))

            listeners.append(on_progress)
        if cfg.error_handler is not None:
            handler, section = cfg.error_handler, cfg.prompt_section

            def on_error(event: Event) -> None:
                if isinstance(event, RequestFinished) and event.result.error is not None:
                    text = request_text(event.request.request)
                    handler.record_result(event.result, text, prompt_section=section or None)

            listeners.append(on_error)
        return listeners

    def stream(
        self,
        requests: RequestSource,
        *,
        timeout: float | None = None,
        listeners: Sequence[Listener] = (),
    ) -> AsyncGenerator[BatchResult, None]:
        """Yield results in completion order (the engine's own stream: no second generator
        for every result to pass through)."""
        total = len(requests) if isinstance(requests, Sequence) else None
        schema = self.config.response_model
        return self.engine.stream(
            requests if schema is None else _with_schema(requests, schema),
            timeout=timeout,
            total=total,
            listeners=[*self._batch_listeners(total), *listeners],
        )

    async def aprocess_batch(
        self,
        requests: Iterable[BatchRequest],
        *,
        timeout: float | None = None,
        listeners: Sequence[Listener] = (),
    ) -> list[BatchResult]:
        """Run every request; return one result per request, in input order."""
        return await self._collect(requests, timeout, listeners, [])

    async def _collect(
        self,
        requests: Iterable[BatchRequest],
        timeout: float | None,
        listeners: Sequence[Listener],
        sink: list[BatchResult],
    ) -> list[BatchResult]:
        # Results are gathered by a listener, not from the stream, so that the requests
        # cancelled by an interrupt are in `sink` too.
        def collect(event: Event) -> None:
            if isinstance(event, RequestFinished):
                sink.append(event.result)

        async with contextlib.aclosing(
            self.stream(requests, timeout=timeout, listeners=[collect, *listeners])
        ) as results:
            async for _ in results:
                pass
        sink.sort(key=lambda r: r.index)
        return sink

    def process_batch(
        self, requests: Iterable[BatchRequest], *, timeout: float | None = None
    ) -> list[BatchResult]:
        """The seed's `ProcessBatch`: blocks until every request has a result."""
        return self._sync(requests, timeout, ())

    def _sync(
        self,
        requests: Iterable[BatchRequest],
        timeout: float | None,
        listeners: Sequence[Listener],
    ) -> list[BatchResult]:
        if not isinstance(requests, Sequence):
            requests = list(requests)
        sink: list[BatchResult] = []

        async def job() -> list[BatchResult]:
            try:
                return await self._collect(requests, timeout, listeners, sink)
            finally:
                # The loop ends with this call: close the client's connections made on it
                # (the client opens new ones on its next loop).
                release = getattr(self.client, "release_loop_resources", None)
                if release is not None:
                    await release()

        try:
            return run_sync(job)
        except KeyboardInterrupt as exc:
            if isinstance(exc, BatchInterrupted):
                raise
            sink.sort(key=lambda r: r.index)
            raise BatchInterrupted(sink) from exc


def _needs(request: BatchRequest, schema: Schema) -> BatchRequest:
    if not isinstance(request, BatchRequest):  # the engine names the bad item
        return request
    req = request.request
    if req.schema is not None or not conversational(req):
        return request
    return BatchRequest(request.id, dataclasses.replace(req, schema=schema))


def _with_schema(requests: RequestSource, schema: Schema) -> RequestSource:
    """`requests`, each chat request without a schema given `schema` (lazily, in order)."""
    if isinstance(requests, AsyncIterable):

        async def pulled() -> AsyncIterator[BatchRequest]:
            async for request in requests:
                yield _needs(request, schema)

        return pulled()
    return (_needs(request, schema) for request in requests)


class BatchProcessorWithProgress:
    """A `BatchProcessor` that draws a progress bar, logs progress and returns stats.

        processor = BatchProcessorWithProgress(client, BatchProcessorConfig(), logger, True)
        results, stats = processor.process_batch(requests)

    The bar is drawn on stderr with `rich`, and only when stderr is a terminal.
    """

    def __init__(
        self,
        client: LLMClient,
        config: BatchProcessorConfig | None = None,
        logger: ProgressLogger | None = None,
        show_progress_bar: bool = True,
    ) -> None:
        self.processor = BatchProcessor(client, config)
        self.logger = logger
        self.show_progress_bar = show_progress_bar

    def _listeners(self, total: int) -> tuple[list[Listener], StatsCollector]:
        stats = StatsCollector()
        tracker = ProgressTracker(total, self.logger, clock=self.processor.config.clock)
        logger = self.logger

        def on_event(event: Event) -> None:
            if isinstance(event, RequestFinished):
                tracker.on_complete(event.result.ok)
            elif isinstance(event, BatchFinished) and logger is not None:
                logger.log_final(tracker.get_progress(), stats.snapshot())

        listeners: list[Listener] = [stats, on_event]
        if self.show_progress_bar:
            listeners.append(RichProgress(description="llmbatch"))
        return listeners, stats

    async def aprocess_batch(
        self, requests: Sequence[BatchRequest], *, timeout: float | None = None
    ) -> tuple[list[BatchResult], BatchStats]:
        listeners, stats = self._listeners(len(requests))
        results = await self.processor.aprocess_batch(
            requests, timeout=timeout, listeners=listeners
        )
        return results, stats.snapshot()

    def process_batch(
        self, requests: Iterable[BatchRequest], *, timeout: float | None = None
    ) -> tuple[list[BatchResult], BatchStats]:
        requests = list(requests)
        listeners, stats = self._listeners(len(requests))
        results = self.processor._sync(requests, timeout, listeners)
        return results, stats.snapshot()
