"""The ways of executing a run, each one `Executor`: requests in, final results out.

    executor = RealtimeExecutor(context)                 # or Ray, BatchAPI, Deadline
    async with contextlib.aclosing(executor.stream(requests)) as results:
        async for result in results:
            sink.write(result)
    for result in executor.held():                        # after the stream, even interrupted
        sink.write(result)

Every executor yields `BatchResult`s for the one sink (`llmbatch.run.harness` drains it), so
resume, `retry_failed`, stats, export and the report work the same whichever answered.
Closing the stream (an interrupt, the output failing) stops it: the realtime engine
cancels what is in flight, Ray kills its workers, provider batches keep running at the
provider, recorded in the ledger for the rerun. `held()` returns results the executor kept
back to replace (a batch reply the schema refused, waiting for its realtime re-ask) and
must still be written when the stream stops early: they were paid for.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..batch_api import (
    BatchAPIConfig,
    BatchAPIRunner,
    LedgerError,
    is_redoable,
    ledger_paths,
)
from ..batch_api.hybrid import DeadlineRunner, Switched, estimate_work
from ..breaker import Outage
from ..budget import Budget
from ..clients import ClientSpec
from ..clients.provider import ProviderClient
from ..deadline import Work, assumed_latency, split_size
from ..engine import Concurrency, Engine, EngineConfig
from ..errors import InvalidOutputError, LLMBatchError, TruncatedReplyError
from ..events import ProviderOutage
from ..io.sink import ResultSink
from ..limiter import RateLimiter
from ..metrics import MetricsListener
from ..pricing import Pricer, flex_costs_no_more
from ..replies import ReplyPolicy, ReplyTries
from ..retry import RetryPolicy
from ..tiers import (
    FLEX_CONCURRENCY_FACTOR,
    FLEX_WORKERS_FACTOR,
    TierPolicy,
    tier_policy,
    wire_tier,
)
from ..types import BatchRequest, BatchResult
from .capacity import capacity_of, deadline_policy
from .config import RunConfig
from .events import DeadlineProgress, Emitter, PassStarted

log = logging.getLogger("llmbatch")

__all__ = [
    "BatchAPIExecutor",
    "BatchAPIFailed",
    "Context",
    "DeadlineExecutor",
    "Executor",
    "RayExecutor",
    "RealtimeExecutor",
    "executor_for",
]

STATUS_INTERVAL = 1.0  # seconds between a deadline run's progress events


class Executor(Protocol):
    """One way of executing a run."""

    name: str

    def stream(self, requests: Iterator[BatchRequest]) -> AsyncIterator[BatchResult]:
        """One final result per request taken from `requests`, in any order. Requests
        never taken get none (the sink counts them unfinished; a rerun sends them)."""
        ...

    def held(self) -> list[BatchResult]:
        """Results kept back and not yielded; written after the stream, even when it was
        closed early."""
        ...


class BatchAPIFailed(Exception):
    """The provider's batch API could not go on (a key or permission refused, the provider
    unreachable through the retries, a ledger that cannot be used). What was recorded is
    safe: every batch already created is in the ledger and a rerun picks it up."""

    def __init__(self, ledger: str, cause: Exception) -> None:
        self.ledger = ledger
        self.cause = cause
        if isinstance(cause, LedgerError):
            message = str(cause)
        else:
            message = (
                f"the batch API failed: {cause}; every batch already created is recorded in "
                f"{ledger}: rerun the same command to resume"
            )
        super().__init__(message)


@dataclass
class Context:
    """What every executor of one run shares."""

    config: RunConfig
    client: ProviderClient
    spec: ClientSpec | None  # how a Ray worker builds the client (None: a client was given)
    sink: ResultSink
    emit: Emitter
    total: int  # requests to run
    reread: Callable[[], Iterator[BatchRequest]]  # the requests again, from the input
    budget: Budget | None = None
    metrics: MetricsListener | None = None
    replies: ReplyPolicy = field(default_factory=ReplyPolicy)

    def engine(
        self,
        replies: ReplyPolicy | None = None,
        tiers: TierPolicy | None = None,
        concurrency: Concurrency | None = None,
        in_flight: int | None = None,
    ) -> Engine:
        """The realtime engine of the run, as its config says (`concurrency` workers, at
        most `in_flight` of them in an attempt)."""
        config = self.config
        listeners: list[Any] = [self.sink]
        if self.metrics is not None:
            listeners.append(self.metrics)
        engine = Engine(
            self.client,
            EngineConfig(
                max_concurrency=concurrency or config.concurrency,
                request_timeout=config.request_timeout,
                retry=retry_policy(config),
                limiter=rate_limiter(config),
                max_outage=config.max_outage,
                listeners=listeners,
                budget=self.budget,
                replies=replies or self.replies,
                tiers=tiers or tier_policy(config.service_tier),
                max_in_flight=in_flight,
            ),
        )
        if self.metrics is not None:
            self.metrics.watch(engine.limiter)
        return engine

    def batch_config(self) -> BatchAPIConfig:
        config = self.config
        return BatchAPIConfig(
            config.output,
            max_requests=config.batch_max_requests,
            max_tokens=config.batch_max_tokens,
            enqueued_tokens=config.batch_enqueued_tokens,
            poll_interval=config.poll_interval,
            keep_files=config.keep_files,
            listeners=[self.emit],
            budget=self.budget,
            pricer=self.sink.pricer,
        )

    @property
    def done(self) -> Callable[[str], bool]:
        """Ids whose answer the output already holds (a re-attached batch may return them)."""
        return self.sink.journal.scan.is_ok

    @property
    def ledger(self) -> str:
        return str(ledger_paths(self.config.output)[0])


def retry_policy(config: RunConfig) -> RetryPolicy:
    """The one retry policy of a run, local or on Ray: `max_retries` after the first try."""
    return RetryPolicy(max_attempts=max(1, config.max_retries + 1))


def rate_limiter(config: RunConfig) -> RateLimiter | None:
    """The limiter the pace settings ask for, or None to let the engine adapt on its own."""
    if not any((config.rpm, config.tpm, config.itpm, config.otpm)):
        return None
    return RateLimiter(
        config.rpm,
        config.tpm,
        input_tokens_per_minute=config.itpm,
        output_tokens_per_minute=config.otpm,
    )


def reply_policy(config: RunConfig) -> ReplyPolicy:
    """The one reply policy of a run, local or on Ray."""
    return ReplyPolicy(
        max_invalid_retries=config.max_invalid_retries,
        max_tokens_on_truncation=config.max_tokens_on_truncation,
    )


def executor_for(context: Context) -> Executor:
    config = context.config
    if config.finish_by is not None:
        return DeadlineExecutor(context)
    if config.batch_api:
        return BatchAPIExecutor(context)
    if config.ray:
        return RayExecutor(context)
    return RealtimeExecutor(context)


# -- realtime ---------------------------------------------------------------------------------


class RealtimeExecutor:
    """The local engine."""

    name = "realtime"

    def __init__(self, context: Context, *, replies: ReplyPolicy | None = None) -> None:
        self.context = context
        self.replies = replies

    async def stream(self, requests: Iterator[BatchRequest]) -> AsyncIterator[BatchResult]:
        context = self.context
        engine = context.engine(self.replies)
        stream = engine.stream(
            requests,
            timeout=context.config.timeout,
            total=context.total,
            finish_unstarted=False,
        )
        # Closing this stream (the consumer left: the output failed, or an interrupt)
        # closes the engine's, which stops admissions and cancels what is in flight.
        async with contextlib.aclosing(stream) as results:
            async for result in results:
                yield result

    def held(self) -> list[BatchResult]:
        return []


# -- Ray --------------------------------------------------------------------------------------


class RayExecutor:
    """Ray workers sharing one cluster-wide limiter (and budget). Results come back to this
    process and are written by its one sink; the cache stays here too (the requests given
    already left out the ones it answered)."""

    name = "ray"

    def __init__(self, context: Context) -> None:
        self.context = context

    async def stream(self, requests: Iterator[BatchRequest]) -> AsyncIterator[BatchResult]:
        import ray

        from .. import ray as lray

        context, config = self.context, self.context.config
        assert context.spec is not None, "checked by the pipeline: Ray builds its own clients"
        started = False
        if not ray.is_initialized():
            ray.init(address=config.ray_address, include_dashboard=False, log_to_driver=False)
            started = True
        budget = context.budget
        ready: asyncio.Queue[list[BatchResult] | None] = asyncio.Queue()
        try:
            limiter = lray.ClusterLimiter.create(
                config.rpm,
                config.tpm,
                input_tokens_per_minute=config.itpm,
                output_tokens_per_minute=config.otpm,
                max_cost=None if budget is None else budget.max_cost,
                spent=0.0 if budget is None else budget.spent,
                # The run's pricer reports through the run's listeners, which stay here;
                # workers get one with the same prices that logs instead.
                pricer=None
                if budget is None
                else Pricer(
                    budget.pricer.source,
                    provider=budget.pricer.provider,
                    model=config.model,
                    vendor=budget.pricer.vendor,
                ),
            )
            # The scrape thread reads what the gauges task last read: a scrape calling into
            # Ray itself could land after `ray.shutdown()`, and Ray ends the process then.
            seen = _ClusterStatus()
            if context.metrics is not None:
                context.metrics.watch(seen)
            ray_config = lray.RayRunConfig(
                workers=config.workers,
                concurrency=config.concurrency,
                request_timeout=config.request_timeout,
                retry=retry_policy(config),
                max_outage=config.max_outage,
                replies=context.replies,
                tiers=tier_policy(config.service_tier),
            )

            async def work() -> None:
                try:
                    async with asyncio.timeout(config.timeout):
                        await lray.run_on_ray(
                            requests,
                            context.spec,  # type: ignore[arg-type]
                            limiter,
                            ray_config,
                            on_results=ready.put_nowait,
                            on_outages=self._outages,
                        )
                except TimeoutError:
                    pass  # what was not written is counted by the sink as unfinished

            task = asyncio.create_task(work())
            task.add_done_callback(lambda _: ready.put_nowait(None))
            gauges = None
            if context.metrics is not None:
                gauges = asyncio.create_task(_cluster_gauges(limiter, context.metrics, seen))
            try:
                while (results := await ready.get()) is not None:
                    for result in results:
                        yield result
                await task  # its error, if it failed
            finally:
                task.cancel()
                if gauges is not None:
                    gauges.cancel()
                await asyncio.gather(task, *filter(None, [gauges]), return_exceptions=True)
        finally:
            if started:
                ray.shutdown()

    def held(self) -> list[BatchResult]:
        return []

    def _outages(self, outages: list[Outage]) -> None:
        """The cluster breaker's outages, to the listeners a local engine reports them to."""
        listeners: list[Any] = [self.context.sink]
        if self.context.metrics is not None:
            listeners.append(self.context.metrics)
        for outage in outages:
            event = ProviderOutage(outage, time.monotonic())
            for listener in listeners:
                listener(event)


class _ClusterStatus:
    """The cluster limiter's status as last read by the run's loop, for the metrics scrape."""

    def __init__(self) -> None:
        self.last: dict[str, Any] = {}

    def status(self) -> dict[str, Any]:
        return self.last


async def _cluster_gauges(
    limiter: Any, metrics: Any, seen: _ClusterStatus, every: float = 1.0
) -> None:
    """The in-flight and waiting gauges of a Ray run: its engines run in the workers, whose
    events never reach this process, so the cluster limiter's counts stand in for them."""
    while True:
        try:
            status = await limiter.astatus()
        except Exception:  # an observer: a failed read leaves the gauges as they were
            log.debug("llmbatch: reading the cluster's gauges failed", exc_info=True)
        else:
            seen.last = status
            metrics.in_flight.set(status.get("in_flight", 0))
            metrics.waiting.set(status.get("waiting", 0))
        await asyncio.sleep(every)


# -- the provider's batch API -----------------------------------------------------------------


class BatchAPIExecutor:
    """The provider's batch API (half price). Batches are recorded in OUTPUT.batches.json;
    an interrupt leaves them running at the provider and the rerun collects them. With
    `expired="realtime"`, lines a batch leaves expired (or failed retryably) and replies the
    schema refused (re-asked, one re-ask fewer left) are sent through the engine after."""

    name = "batch_api"

    def __init__(self, context: Context) -> None:
        self.context = context
        # Replies that broke the schema, held for a re-ask in the realtime pass.
        self._reasks: dict[str, BatchResult] = {}

    async def stream(self, requests: Iterator[BatchRequest]) -> AsyncIterator[BatchResult]:
        context = self.context
        runner = BatchAPIRunner(context.client, context.batch_config())
        policy = context.replies
        realtime = context.config.expired == "realtime"
        redo: set[str] = set()
        try:
            stream = runner.stream(requests, done=context.done, flush=context.sink.flush)
            async with contextlib.aclosing(stream) as results:
                async for result in results:
                    if realtime and is_redoable(result):
                        redo.add(result.id)
                    elif realtime and _reaskable(result, policy):
                        self._reasks[result.id] = result
                    else:
                        yield result
        except (LedgerError, LLMBatchError) as exc:
            raise BatchAPIFailed(context.ledger, exc) from None
        if redo:
            context.emit(PassStarted("expired", len(redo)))
            # The redone ids were never written: `sink.expected` already counts them.
            again = (r for r in context.reread() if r.id in redo)
            async for result in RealtimeExecutor(context).stream(again):
                yield result
        if self._reasks:
            context.emit(PassStarted("reask", len(self._reasks)))
            # The batch's answer was the first reply: the engine may re-ask one time fewer.
            left = dataclasses.replace(
                policy, max_invalid_retries=max(0, policy.max_invalid_retries - 1)
            )
            executor = RealtimeExecutor(context, replies=left)
            async for result in executor.stream(self._follow_ups(policy)):
                yield result

    def _follow_ups(self, policy: ReplyPolicy) -> Iterator[BatchRequest]:
        for item in self.context.reread():
            first = self._reasks.get(item.id)
            if first is None:
                continue
            assert first.error is not None
            follow = policy.follow_up(item.request, first.error, ReplyTries())
            if follow is None:
                continue  # no follow-up after all (not chat, room already given): kept
            del self._reasks[item.id]
            yield BatchRequest(item.id, follow)

    def held(self) -> list[BatchResult]:
        # Replies not re-asked (interrupted, the budget spent) are kept as failed, with
        # what they cost: `retry_failed` asks again.
        held, self._reasks = list(self._reasks.values()), {}
        return held


def _reaskable(result: BatchResult, policy: ReplyPolicy) -> bool:
    """Whether the reply policy may have a follow-up for this batch answer's error."""
    error = result.error
    if isinstance(error, InvalidOutputError):
        return policy.max_invalid_retries > 0
    return isinstance(error, TruncatedReplyError) and policy.max_tokens_on_truncation is not None


# -- the deadline: batch API and realtime -----------------------------------------------------


class DeadlineExecutor:
    """Batch API first, realtime for what would otherwise be late (`DeadlineRunner`); both
    paths feed this one stream. The run ends once every id has its final result."""

    name = "deadline"

    def __init__(self, context: Context) -> None:
        self.context = context
        self.runner: DeadlineRunner | None = None

    async def stream(self, requests: Iterator[BatchRequest]) -> AsyncIterator[BatchResult]:
        context, config = self.context, self.context.config
        deadline = config.deadline
        assert deadline is not None
        done = context.done
        total = _total(item for item in context.reread() if not done(item.id))  # what is left
        capacity = capacity_of(config, assumed_latency(total))
        policy = deadline_policy(deadline, config.prefer, time.time())
        # Several batches, not one: a batch that comes back late then costs only its share.
        batches = dataclasses.replace(
            context.batch_config(),
            max_requests=split_size(total.requests, config.batch_max_requests),
        )
        tiers, concurrency, in_flight = None, config.concurrency, None
        if config.service_tier is not None:
            # Flex waits out refusals only while the deadline allows (`flex_urgent`).
            tiers = dataclasses.replace(
                tier_policy(config.service_tier), urgent=lambda: runner.flex_urgent()
            )
        if config.service_tier in ("flex", "auto") and isinstance(concurrency, int):
            # Flex answers slower: the same pace needs more requests in flight (the rate
            # limits still pace them); and a refused request waits in its worker, so there
            # are more workers still, which hold no attempt's slot while they wait.
            in_flight = concurrency * FLEX_CONCURRENCY_FACTOR
            concurrency *= FLEX_WORKERS_FACTOR
            capacity = dataclasses.replace(capacity, concurrency=in_flight)
        self.runner = runner = DeadlineRunner(
            BatchAPIRunner(context.client, batches),
            context.engine(tiers=tiers, concurrency=concurrency, in_flight=in_flight),
            policy,
            capacity,
            check_interval=min(config.poll_interval, 5.0),
            on_duplicate=context.sink.count_duplicate,
            listeners=[context.emit],
            tier=None if config.service_tier is None else wire_tier(config.service_tier),
            feed_flex=flex_costs_no_more(context.sink.pricer, config.model),
        )
        ready: asyncio.Queue[BatchResult | None] = asyncio.Queue()

        async def work() -> None:
            await runner.run(
                context.reread(),
                on_result=ready.put_nowait,
                done=context.done,
                flush=context.sink.flush,
                reread=context.reread,
                total=total,
            )

        async def show_status() -> None:
            while True:
                s = runner.status()
                context.emit(
                    DeadlineProgress(s.seconds_left, s.realtime_sent, s.realtime_done, s.batch_done)
                )
                await asyncio.sleep(STATUS_INTERVAL)

        task = asyncio.create_task(work())
        task.add_done_callback(lambda _: ready.put_nowait(None))
        status = asyncio.create_task(show_status())
        try:
            while (result := await ready.get()) is not None:
                yield result
            await task
        except (LedgerError, LLMBatchError) as exc:
            raise BatchAPIFailed(context.ledger, exc) from None
        finally:
            for t in (task, status):
                t.cancel()
            await asyncio.gather(task, status, return_exceptions=True)

    def held(self) -> list[BatchResult]:
        return []

    @property
    def switched(self) -> Switched | None:
        return None if self.runner is None else self.runner.switched


def _total(requests: Iterator[BatchRequest]) -> Work:
    n = inp = out = 0
    for item in requests:
        work = estimate_work(item.request)
        n, inp, out = n + 1, inp + work.input_tokens, out + work.output_tokens
    return Work(n, inp, out)


__all__ += ["rate_limiter", "reply_policy", "retry_policy"]
