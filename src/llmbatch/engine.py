"""The async core: a fixed set of workers pulls requests from a source and yields results.

    engine = Engine(client, EngineConfig(max_concurrency=32))
    async with contextlib.aclosing(engine.stream(requests, timeout=600)) as results:
        async for result in results:          # completion order
            print(result.id, result.error or result.response.content)

Guarantees:
- Memory is bounded by the concurrency, not by the number of requests: the source (a list,
  an iterator or an async iterator) is pulled lazily, and at most `max_pending` requests are
  in flight or waiting to be consumed.
- Every request that was pulled gets exactly one result. On the batch deadline or on
  cancellation no new attempt starts, in-flight attempts are cancelled and their requests get
  a `BatchTimeoutError` / `BatchCancelledError`; with `finish_unstarted=True` the requests
  never pulled get one too (the seed's `ProcessBatch` returns a result per request).
- One attempt = one admission: every attempt, retries included, passes the run's admission
  chain: the outage breaker, the limiter (a `RateLimiter` unless told otherwise) and, with
  `max_concurrency="auto"`, the adaptive concurrency gate. The per-attempt timeout starts
  after admission: time queued on our side never counts against it.
- A server-wide outage (refused connections, 5xx on everything) pauses the batch instead of
  burning every request's retries; attempts lost to it do not count as retries.
- A reply is checked as part of its attempt (`llmbatch.replies.check_reply`): refusals,
  truncated JSON and replies that break the request's schema fail with a `ReplyError`
  holding the reply; the reply policy (`EngineConfig.replies`) may re-ask (the validator's
  message added to the conversation) or retry a truncated reply with more room.
- After `max_auth_failures` authentication errors the batch stops calling the provider: the
  key is wrong and every further call would fail the same way.
- Money is never lost between attempts: a result says which of its attempts were paid though
  they gave no answer (`BatchResult.paid_replies`: re-asked, retried or failed replies) and
  how many may have been billed unread (`maybe_billed`: our timeout, an unreadable reply), so
  its line can carry their cost. A request the budget refuses after such attempts ends with
  its last error (`refused` says why it stopped), not as unfinished with no line.
- Every result the engine makes says where its time went (`BatchResult.timing`): admission
  wait, provider calls and backoff, per attempt, measured on the config's `clock`; wall-clock
  start and finish are the run's `time.time()` at its start plus that clock's seconds.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Sequence,
)
from dataclasses import dataclass, field
from typing import Any, Literal

from .admission import Admission, AdmissionChain, Permit, PermitBase, mark_outage
from .attempt_timer import AttemptTimer
from .breaker import DEFAULT_MAX_OUTAGE, Breaker, OutageBreaker
from .budget import BudgetExceededError
from .clients.base import LLMClient
from .concurrency import DEFAULT_MAX as AUTO_MAX_CONCURRENCY
from .concurrency import ConcurrencyLimiter
from .errors import (
    AuthenticationError,
    BatchCancelledError,
    BatchTimeoutError,
    CapacityError,
    ClientContractError,
    InvalidResponseError,
    LLMBatchError,
    ReplyError,
    RequestTimeoutError,
    error_code,
    may_be_billed,
)
from .events import (
    AttemptFinished,
    AttemptQueued,
    BatchFinished,
    BatchStarted,
    Event,
    Listener,
    ProviderOutage,
    RequestFinished,
    RequestRetrying,
    RequestStarted,
    ResponseCache,
)
from .fifo import FifoSemaphore
from .guarded import GuardedLimiter
from .limiter import RateLimiter
from .replies import ReplyPolicy, ReplyTries, check_reply
from .retry import RetryPolicy
from .throttled import ThrottledLLMClient
from .tiers import TierPolicy
from .types import (
    BatchRequest,
    BatchResult,
    CompletionRequest,
    CompletionResponse,
    Outcome,
    make_timing,
)

__all__ = ["Concurrency", "Engine", "EngineConfig", "RequestSource"]

log = logging.getLogger("llmbatch")

RequestSource = Iterable[BatchRequest] | AsyncIterable[BatchRequest]
Concurrency = int | Literal["auto"]

# The one default of the engine and of a run (`RunConfig.concurrency`, the CLI's flag): the
# adaptive gate, which steps aside for servers that state their rate limits (the rate
# limiter paces those) and finds the concurrency of those that do not (`llmbatch.concurrency`;
# `bench/pacing.py --only concurrency`). `BatchProcessorConfig` keeps the seed's 10.
DEFAULT_CONCURRENCY: Concurrency = "auto"
DEFAULT_REQUEST_TIMEOUT = 600.0
DEFAULT_MAX_AUTH_FAILURES = 5


@dataclass(slots=True)
class EngineConfig:
    """How the engine runs a batch. Every bound has a finite default.

    `max_concurrency`: attempts in flight at most, or "auto" (the default) to find the best
    number from latency (`llmbatch.concurrency`: for servers that queue rather than refuse;
    it steps aside once replies state rate limits, which the rate limiter then paces by).
    `request_timeout` bounds one attempt (None: unbounded); `max_pending` bounds requests
    pulled but whose result the consumer has not taken yet (default 2 x concurrency).
    `clock` and `sleep` are injectable so backoff tests never really wait.
    `cache` answers requests it has seen before without admission or a call.
    `limiter` paces attempts (any `Admission`, usually a `RateLimiter`, possibly shared);
    when None and `adaptive` is true, each engine gets its own `RateLimiter()` with no limits,
    which admits freely until the server pushes back and then converges to its limit.
    `max_outage`: seconds a server-wide outage is waited out before the waiting requests fail
    (None: fail per request, no breaker). `breaker`: one shared beyond this engine (a Ray
    cluster's) instead of one of its own; `max_outage` is then the shared one's business.
    `budget`: a hard cap on money (`llmbatch.budget.Budget`), the last link of the admission
    chain; requests it refuses end with `BudgetExceededError` (unfinished, not failed).
    `replies`: how invalid (schema) and truncated replies are re-asked (`llmbatch.replies`).
    `max_in_flight`: attempts in flight at most, when fewer than the workers: a request
    waiting out a capacity refusal (`tiers`: flex) then holds a worker, not an attempt's
    slot, so many such waits do not starve the lane (None: as many as workers).
    """

    max_concurrency: Concurrency = DEFAULT_CONCURRENCY
    request_timeout: float | None = DEFAULT_REQUEST_TIMEOUT
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    limiter: Admission | None = None
    adaptive: bool = True
    cache: ResponseCache | None = None
    listeners: Sequence[Listener] = ()
    max_pending: int | None = None
    validate_json: bool = True
    max_auth_failures: int | None = DEFAULT_MAX_AUTH_FAILURES
    max_outage: float | None = DEFAULT_MAX_OUTAGE
    breaker: Breaker | None = None
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    budget: Admission | None = None
    replies: ReplyPolicy = field(default_factory=ReplyPolicy)
    # A service tier's capacity refusals (flex): waited out, or moved to another tier.
    tiers: TierPolicy = field(default_factory=TierPolicy)
    max_in_flight: int | None = None

    def __post_init__(self) -> None:
        check_concurrency(self.max_concurrency)
        if self.max_in_flight is not None and self.max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {self.max_in_flight}")
        if self.request_timeout is not None and self.request_timeout <= 0:
            raise ValueError(f"request_timeout must be > 0, got {self.request_timeout}")
        if self.max_outage is not None and self.max_outage < 0:
            raise ValueError(f"max_outage must be >= 0, got {self.max_outage}")

    @property
    def workers(self) -> int:
        if self.max_concurrency == "auto":
            return AUTO_MAX_CONCURRENCY
        return self.max_concurrency


def check_concurrency(value: object) -> None:
    """Raise ValueError unless `value` is a positive int or "auto"."""
    if value == "auto":
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f'max_concurrency must be an integer >= 1 or "auto", got {value!r}')


_END: Any = object()


class _Source:
    """Pulls (index, request) pairs from any kind of source, one at a time."""

    def __init__(self, source: RequestSource):
        self._sync: Iterator[BatchRequest] | None = None
        self._async: AsyncIterator[BatchRequest] | None = None
        self._lock = asyncio.Lock()
        self._index = 0
        self.exhausted = False
        if isinstance(source, AsyncIterable):
            self._async = aiter(source)
        else:
            self._sync = iter(source)
        self.sync = self._sync is not None  # pulled without a coroutine (`next_sync`)

    def next_sync(self) -> tuple[int, BatchRequest] | None:
        if self.exhausted:
            return None
        assert self._sync is not None
        item = next(self._sync, _END)
        if type(item) is not BatchRequest:  # `_take`, its common case inlined (once a request)
            return self._take(item)
        index = self._index
        self._index = index + 1
        return index, item

    async def next(self) -> tuple[int, BatchRequest] | None:
        if self.exhausted:
            return None
        if self._sync is not None:
            item = next(self._sync, _END)
        else:
            assert self._async is not None
            # An async generator cannot be advanced by two tasks at once.
            async with self._lock:
                if self.exhausted:
                    return None
                item = await anext(self._async, _END)
        return self._take(item)

    def _take(self, item: Any) -> tuple[int, BatchRequest] | None:
        if item is _END:
            self.exhausted = True
            return None
        if not isinstance(item, BatchRequest):
            raise TypeError(
                f"request #{self._index} is a {type(item).__name__}, expected BatchRequest"
            )
        index = self._index
        self._index += 1
        return index, item


class _Run:
    """The state of one `Engine.stream` call."""

    def __init__(
        self, engine: Engine, source: RequestSource, listeners: Sequence[Listener]
    ) -> None:
        self.cfg = engine.config
        self.client = engine.client
        self.breaker: Breaker | None = self.cfg.breaker
        if self.breaker is None and self.cfg.max_outage is not None:
            self.breaker = OutageBreaker(
                max_outage=self.cfg.max_outage, clock=self.cfg.clock, sleep=self.cfg.sleep
            )
        limiter = engine.limiter
        guard: Admission | None = self.breaker
        if type(self.breaker) is OutageBreaker and type(limiter) is RateLimiter:
            # The default chain's first two links, as one permit (`llmbatch.guarded`). A
            # breaker shared beyond this engine (a Ray cluster's) stays a link of its own.
            guard, limiter = GuardedLimiter(self.breaker, limiter), None
        chain = (guard, limiter, engine.gate, engine.in_flight, self.cfg.budget)
        links = [x for x in chain if x is not None]
        self.admission: Admission | None = (
            links[0] if len(links) == 1 else AdmissionChain(*links) if links else None
        )
        self.outages_reported = 0
        self.gate = engine.gate
        self.active = 0  # requests pulled and not yet finished
        self.backing_off = 0  # of those, sleeping out a retry's backoff
        self.gate_changed = asyncio.Event()
        self.listeners = [*engine.listeners, *listeners]
        self.source = _Source(source)
        self.ready: collections.deque[BatchResult] = collections.deque()
        # The consumer's wait for a result (or for the workers' end), when it waits: a
        # worker wakes it only then, not at every result (an awake consumer drains `ready`).
        self.waiter: asyncio.Future[None] | None = None
        self.room = FifoSemaphore(self.cfg.max_pending or 2 * self.cfg.workers)
        self.workers: list[asyncio.Task[None]] = []
        # Workers cancelled on stop: those running a request's attempts, and those awaiting an async
        # source (a source that blocks must not hold the run past its deadline or an early
        # close; cancelling the pull closes an async generator, so requests it had not yet
        # yielded get no result).
        self.busy: set[asyncio.Task[None]] = set()
        self.stop_error: BaseException | None = None  # set on deadline / cancellation
        self.crash: BaseException | None = None  # the source or a listener broke
        self.abort_error: AuthenticationError | None = None  # set after repeated auth failures
        self.auth_failures = 0
        self.completed = 0
        self.failed = 0
        self.started = self.cfg.clock()
        self.wall_started = time.time()  # wall time = this + (clock() - started)

    def emit(self, event: Event) -> None:
        for listener in self.listeners:
            try:
                listener(event)
            except Exception:
                log.exception("llmbatch listener %r failed on %s", listener, type(event).__name__)

    def stop(self, error: BaseException) -> None:
        if self.stop_error is None:
            self.stop_error = error
            for task in self.busy:
                task.cancel()
            # Wake workers waiting for room (the consumer may be gone): each then pulls one
            # request, sees the stop and records it, so nothing pulled is left without a result.
            for _ in self.workers:
                self.room.release()
            self.gate_changed.set()
            self.wake()

    def wake(self) -> None:
        """Wake the consumer, if it waits (`Engine.stream`)."""
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():  # cancelled with its consumer
                waiter.set_result(None)

    async def gate_room(self) -> None:
        """With `max_concurrency="auto"`, pull a request only when the gate has room for it:
        a request must not wait inside the engine (its duration running) for a slot that
        the gate will not give for a while."""
        gate = self.gate
        while (
            gate is not None
            and self.active - self.backing_off >= gate.limit
            and self.stop_error is None
        ):
            self.gate_changed.clear()
            await self.gate_changed.wait()

    @contextlib.contextmanager
    def sleeping(self) -> Iterator[None]:
        """Around a backoff or a tier's wait: a request sleeping holds no attempt, so with
        "auto" it must not hold the gate's room either (a window cut to 1 would pull nothing
        meanwhile)."""
        self.backing_off += 1
        if self.gate is not None:
            self.gate_changed.set()
        try:
            yield
        finally:
            self.backing_off -= 1

    def deliver(self, item: BatchRequest, result: BatchResult) -> None:
        self.completed += 1
        if result.error is not None:
            self.failed += 1
        self.ready.append(result)
        if self.waiter is not None:
            self.wake()
        if self.listeners:
            self.emit(RequestFinished(item, result, self.cfg.clock()))

    def failed_result(
        self,
        index: int,
        item: BatchRequest,
        error: BaseException,
        started: float,
        attempts: int,
        refused: BaseException | None = None,
    ) -> BatchResult:
        """The result of a request that ends with `error` after `attempts` calls, timed from
        `started`; `refused`: what stopped a request that had been sent (the budget)."""
        return BatchResult(
            item.id,
            error=error,
            duration=self.cfg.clock() - started,
            attempts=attempts,
            index=index,
            refused=refused,
        )

    def stopped_result(self, index: int, item: BatchRequest, started: float, n: int) -> BatchResult:
        assert self.stop_error is not None
        return self.failed_result(index, item, self.stop_error, started, n)

    async def worker(self) -> None:
        task = asyncio.current_task()
        assert task is not None
        cfg = self.cfg
        clock = cfg.clock
        wall_offset = self.wall_started - self.started
        sync_source = self.source.sync
        timer = AttemptTimer(task) if cfg.request_timeout is not None else None
        cache = cfg.cache
        validate = cfg.validate_json
        try:
            while self.stop_error is None:
                if self.gate is not None:
                    await self.gate_room()
                if not self.room.take():
                    await self.room.acquire()
                if sync_source:
                    pulled = self.source.next_sync()
                else:
                    self.busy.add(task)
                    try:
                        pulled = await self.source.next()
                    except asyncio.CancelledError:
                        if self.stop_error is None:
                            raise
                        return
                    finally:
                        self.busy.discard(task)
                if pulled is None:
                    self.room.release()
                    return
                index, item = pulled
                started = clock()
                if self.stop_error is not None:
                    self.deliver(item, self.stopped_result(index, item, started, 0))
                    return
                state = _Attempts()
                state.timer = timer
                self.busy.add(task)
                self.active += 1
                try:
                    # The request's attempts. A plain answer's path is this loop's body and
                    # `attempt`: the worker awaits `attempt` itself (no coroutine in between:
                    # every resumption of a request in flight, its connect, its write, its
                    # read, passes through each frame of its await chain, and each costs CPU
                    # per resumption); retries, re-asks and tiers are `after_failure`'s,
                    # which only a failed attempt enters.
                    result = None if cache is None else self.cached(index, item)
                    request, asked = item.request, item  # `asked`: a re-ask or a tier's move
                    while result is None:
                        if self.abort_error is not None:
                            result = self.failed_result(
                                index, item, self.abort_error, started, state.count
                            )
                            break
                        try:
                            response = await self.attempt(asked, state)
                            # After the attempt's permit recorded the tokens the reply used.
                            parsed = check_reply(asked.request, response, validate_json=validate)
                        except Exception as exc:
                            result, asked = await self.after_failure(
                                index, asked, started, state, exc
                            )
                            continue
                        if self.listeners and self.breaker is not None:
                            self.report_outages()
                        if cache is not None:
                            cache.put(request, response)
                        result = BatchResult(
                            item.id,
                            response=response,
                            duration=clock() - started,
                            attempts=state.count,
                            index=index,
                            parsed=parsed,
                        )
                except asyncio.CancelledError:
                    if self.stop_error is None:
                        raise
                    result = self.stopped_result(index, item, started, state.count)
                finally:
                    self.busy.discard(task)
                    self.active -= 1
                    if self.gate is not None:
                        self.gate_changed.set()
                result.timing = make_timing(
                    wall_offset + started,
                    wall_offset + clock(),
                    state.wait_total,
                    state.provider,
                    state.backoff,
                    state.log,
                )
                if state.maybe_billed:
                    result.maybe_billed = state.maybe_billed
                if state.paid:
                    result.paid_replies = tuple(state.paid)
                self.deliver(item, result)
        except BaseException as exc:
            # The source raised or yielded something that is not a request, or a client or
            # listener raised a BaseException (KeyboardInterrupt, a user's subclass): handed
            # to `stream`, which raises it, as a nursery does. A worker that just ended would
            # leave the requests it pulled without a result and the batch "complete".
            if self.crash is None:
                self.crash = (
                    RuntimeError("an engine worker was cancelled from outside the engine")
                    if isinstance(exc, asyncio.CancelledError)
                    else exc
                )
            self.stop(BatchCancelledError(f"the batch stopped: {exc!r}"))
        finally:
            if timer is not None:
                timer.close()
            self.wake()

    def cached(self, index: int, item: BatchRequest) -> BatchResult | None:
        """The result of a request the cache answers (no admission, no call), or None."""
        assert self.cfg.cache is not None
        req = item.request
        if (hit := self.cfg.cache.get(req)) is not None:
            cached = _cached_answer(req, hit, self.cfg.validate_json)
            if cached is not None:
                return BatchResult(
                    item.id, response=hit, attempts=0, index=index, parsed=cached.parsed
                )
        return None

    async def after_failure(
        self, index: int, item: BatchRequest, started: float, state: _Attempts, error: Exception
    ) -> tuple[BatchResult | None, BatchRequest]:
        """After an attempt that failed with `error`: the request's result when it ends here
        (no retry left, refused, stopped), else None and the request to try next (itself,
        its re-ask or its move to another tier), once its backoff or its tier's wait is over."""
        cfg = self.cfg
        if isinstance(reply := getattr(error, "response", None), CompletionResponse):
            # A reply that was no answer, paid all the same.
            (state.paid if state.paid is not None else state.new_paid()).append(reply)
        paid_before = bool(state.maybe_billed or state.paid)
        previous, state.previous = state.previous, error
        if isinstance(error, BudgetExceededError) and paid_before and previous is not None:
            # Sent before and paid or maybe billed: not "never sent" (unfinished, with
            # no line, so a rerun would forget that money); it ends with its last
            # attempt's error and its line carries the cost.
            return self.failed_result(index, item, previous, started, state.count, error), item
        self.report_outages()
        # The Retry-After the limiter paused every admission for, if it did: that much of
        # the next admission wait is this retry's delay (see `attempt`).
        retry_after = getattr(error, "retry_after", None) if state.paused else None
        state.pause = float(retry_after or 0.0)
        if isinstance(error, AuthenticationError):
            self.note_auth_failure(error)
        if isinstance(error, InvalidResponseError):
            state.invalid += 1
        if isinstance(error, ReplyError) and (follow := self.follow_up(item, error, state)):
            return None, follow
        if isinstance(error, CapacityError):
            # A tier short of room (flex): not this request's failure, not a sign of our
            # pace (`llmbatch.tiers`). It waits, or moves tier, its retries untouched.
            state.excused += 1
            state.refusals += 1
            step = cfg.tiers.after_refusal(item.request, state.refusals, state.refused_for)
            if step is None:
                return self.failed_result(index, item, error, started, state.count), item
            request, wait = step
            if request is not item.request:
                item = BatchRequest(item.id, request)
            elif error.retry_after is not None:
                wait = min(max(error.retry_after, 0.0), cfg.retry.max_retry_after)
            self.emit(RequestRetrying(item, state.count, error, wait, cfg.clock()))
            if wait > 0:
                slept_from = cfg.clock()
                try:
                    with self.sleeping():
                        await cfg.tiers.wait(wait, cfg.sleep)
                finally:
                    state.backoff += cfg.clock() - slept_from
                    state.refused_for += cfg.clock() - slept_from
                if (moved := cfg.tiers.after_wait(item.request)) is not item.request:
                    item = BatchRequest(item.id, moved)
            return None, item
        if self.breaker is not None and self.breaker.excuses(error):
            # The server is down for everyone: wait at the breaker, not in a backoff,
            # and do not count this attempt against the request's retries.
            state.excused += 1
            self.emit(RequestRetrying(item, state.count, error, 0.0, cfg.clock()))
            return None, item
        delay = cfg.retry.next_delay(
            error,
            attempt=state.count - state.excused,
            elapsed=cfg.clock() - started - state.waited - state.refused_for,
            invalid_count=state.invalid,
            retry_after_handled=state.paused,
        )
        if delay is None:
            return self.failed_result(index, item, error, started, state.count), item
        self.emit(RequestRetrying(item, state.count, error, delay, cfg.clock()))
        if delay > 0:
            slept_from = cfg.clock()
            try:
                with self.sleeping():
                    await cfg.sleep(delay)
            finally:
                state.backoff += cfg.clock() - slept_from
        return None, item

    async def attempt(self, item: BatchRequest, state: _Attempts) -> CompletionResponse:
        """One admitted call, timed: every call adds one entry to the request's attempt log.
        Raises what the call raised; the permit hears it first.

        The call is spelled out here, not a coroutine of its own: every resumption of a
        request in flight (its connect, its write, its read) passes through each frame of
        its await chain, and each frame costs CPU per resumption."""
        cfg = self.cfg
        clock = cfg.clock
        admission = self.admission
        manager: Any = None
        base: PermitBase | None = None
        held: Permit | None = None
        if admission is not None:
            asked = clock()
            state.asked = asked
            if self.listeners:
                self.emit(AttemptQueued(item, state.count + 1, asked))
            manager = admission.admit(item.request)
            # `async with manager`, spelled out: a `PermitBase` (every admission of ours) is
            # entered and left without a coroutine when its slot is due, the hot path.
            base = manager if isinstance(manager, PermitBase) else None
        try:
            if manager is None:
                called = clock()
            elif base is not None and base.enter_now():
                # Admitted without waiting: no wait to time (the clock read at the ask).
                held = base
                called = asked
                state.asked = None
                state.pause = 0.0  # a Retry-After's pause, if any, is over: none of it waited
            else:
                if base is None:
                    held = await manager.__aenter__()
                else:
                    await base.enter_later()
                    held = base
                called = clock()
                state.admitted(called)
                # After a refusal whose Retry-After the limiter paused for, that much of this
                # wait is the retry's delay, which counts against max_retry_time; the rest
                # (pacing, an outage) is queueing on our side, which does not.
                if called != asked or state.pause:
                    state.waited += max(0.0, called - asked - state.pause)
                    state.pause = 0.0
            state.count += 1
            response: CompletionResponse | None = None
            try:
                if self.listeners:
                    self.emit(RequestStarted(item, state.count, called))
                request = item.request
                try:
                    timer = state.timer
                    if timer is None:
                        response = await self.client.complete(request)
                    else:
                        # `async with asyncio.timeout(...)`, without a loop timer per attempt.
                        timeout = cfg.request_timeout
                        if request.extra:  # a tier may ask for longer (flex)
                            timeout = TierPolicy.timeout_for(request, timeout)
                        timer.start(timeout or 0.0)
                        try:
                            response = await self.client.complete(request)
                        except BaseException as exc:
                            if timer.stop(exc):
                                raise TimeoutError from exc
                            raise
                        timer.stop(None)
                except (TimeoutError, asyncio.CancelledError, GeneratorExit) as exc:
                    error = self.call_error(exc)
                    if error is exc:
                        raise
                    raise error from exc
            except BaseException as exc:
                if may_be_billed(exc):
                    state.maybe_billed += 1
                self.attempt_finished(item, state, called, response, exc)
                if held is not None:
                    if (
                        isinstance(exc, Exception)
                        and self.breaker is not None
                        and self.breaker.excuses(exc)
                    ):
                        mark_outage(held)  # the breaker waits it out; limiters must not cut
                    if base is not None:
                        base.leave(exc)
                    else:
                        await manager.__aexit__(type(exc), exc, exc.__traceback__)
                raise
            self.attempt_finished(item, state, called, response, None)
            if base is not None:
                base.answered(response)  # `record` and `leave(None)` in one call
            elif held is not None:
                try:
                    held.record(response)
                except BaseException as exc:
                    await manager.__aexit__(type(exc), exc, exc.__traceback__)
                    raise
                await manager.__aexit__(None, None, None)
        finally:
            if admission is not None:
                if state.asked is not None:  # refused or cancelled while waiting: still waited
                    state.admitted(clock())
                # Read after the permit's release: did the limiter wait out the Retry-After?
                state.paused = held is not None and held.paused_for_retry
        return response

    def attempt_finished(
        self,
        item: BatchRequest,
        state: _Attempts,
        called: float,
        response: CompletionResponse | None,
        error: BaseException | None,
    ) -> None:
        """Log the call made at `called` in the request's attempt log, and tell listeners."""
        now = self.cfg.clock()
        wait, outcome = state.called(now - called, response, error)
        if self.listeners:
            self.emit(AttemptFinished(item, state.count, wait, now - called, outcome, error, now))

    def call_error(self, exc: BaseException) -> BaseException:
        """What the engine raises for a call that ended with `exc`, a timeout or a cancel
        (`exc` itself: raised as it is): the attempt's own timeout becomes a
        `RequestTimeoutError`; a cancel that is ours (a stop, the deadline, the consumer's
        cancel) goes through; the client's own (an inner task's cancel leaking out, a closed
        generator) is this request's failure, not a signal to unwind the worker."""
        if isinstance(exc, TimeoutError):
            if isinstance(exc, LLMBatchError):
                return exc
            return RequestTimeoutError(
                f"attempt exceeded request_timeout={self.cfg.request_timeout}s"
            )
        task = asyncio.current_task()
        if isinstance(exc, asyncio.CancelledError) and task is not None and task.cancelling():
            return exc
        return ClientContractError(exc)

    def follow_up(
        self, item: BatchRequest, error: ReplyError, state: _Attempts
    ) -> BatchRequest | None:
        """The re-ask (or roomier retry) the reply policy allows after `error`, or None."""
        if state.replies is None:
            state.replies = ReplyTries()
        request = self.cfg.replies.follow_up(item.request, error, state.replies)
        if request is None:
            return None
        self.emit(RequestRetrying(item, state.count, error, 0.0, self.cfg.clock()))
        return BatchRequest(item.id, request)

    def report_outages(self) -> None:
        if self.breaker is None or not self.listeners:
            return
        while self.outages_reported < len(self.breaker.outages):
            outage = self.breaker.outages[self.outages_reported]
            self.outages_reported += 1
            self.emit(ProviderOutage(outage, self.cfg.clock()))

    def note_auth_failure(self, error: AuthenticationError) -> None:
        limit = self.cfg.max_auth_failures
        self.auth_failures += 1
        if limit is not None and self.auth_failures >= limit and self.abort_error is None:
            self.abort_error = AuthenticationError(
                f"not sent: the batch stopped after {self.auth_failures} authentication "
                f"failures (last: {error})",
                status_code=error.status_code,
            )

    async def fail_unstarted(self) -> None:
        assert self.stop_error is not None
        while (pulled := await self.source.next()) is not None:
            index, item = pulled
            self.deliver(
                item, self.failed_result(index, item, self.stop_error, self.cfg.clock(), 0)
            )


@dataclass(slots=True)
class _Attempts:
    count: int = 0  # calls made
    excused: int = 0  # of those, lost to an outage the breaker waited out, or a tier's room
    refusals: int = 0  # capacity refusals of a service tier (flex)
    refused_for: float = 0.0  # seconds waited after those
    waited: float = 0.0  # seconds spent waiting for admission
    paused: bool = False  # the limiter waited out the last refusal's Retry-After
    pause: float = 0.0  # that Retry-After, in seconds: the next admission's wait is the retry's
    replies: ReplyTries | None = None  # re-asks used (made at the first re-ask)
    invalid: int = 0  # attempts whose reply was unreadable (`InvalidResponseError`)
    previous: Exception | None = None  # the last failed attempt's error
    maybe_billed: int = 0  # calls sent whose reply was never read (`errors.may_be_billed`)
    paid: list[CompletionResponse] | None = None  # replies that were no answer
    # Where the time went (`Timing`): `waited` above leaves out Retry-After pauses, these don't.
    asked: float | None = None  # when the admission being waited for was asked
    wait: float = 0.0  # this attempt's admission wait, until its call is logged
    wait_total: float = 0.0
    provider: float = 0.0
    backoff: float = 0.0
    log: tuple[tuple[float, float, Outcome], ...] = ()
    timer: AttemptTimer | None = None  # the worker's, for the attempts' request_timeout

    def new_paid(self) -> list[CompletionResponse]:
        self.paid = []
        return self.paid

    def admitted(self, now: float) -> None:
        if self.asked is not None:
            self.wait += now - self.asked
            self.wait_total += now - self.asked
            self.asked = None

    def called(
        self, seconds: float, response: CompletionResponse | None, error: BaseException | None
    ) -> tuple[float, Outcome]:
        """Log one call; return its admission wait and outcome."""
        if error is None and response is not None:
            outcome: Outcome = response.status_code
        else:
            outcome = attempt_outcome(response, error)
        wait = self.wait
        if wait:
            self.wait = 0.0
        self.provider += seconds
        # A tuple grown per call, not a list copied at the end: most requests make one call.
        self.log += ((round(wait, 6) if wait else 0.0, round(seconds, 6), outcome),)
        return wait, outcome


def attempt_outcome(response: CompletionResponse | None, error: BaseException | None) -> Outcome:
    """An attempt's HTTP status, or its error code when it got none."""
    if error is None:
        return response.status_code if response is not None else 200
    status = getattr(error, "status_code", None)
    if isinstance(status, int):
        return status
    if isinstance(error, asyncio.CancelledError):
        return "cancelled"
    return error_code(error)


@dataclass(slots=True)
class _Cached:
    parsed: Any


def _cached_answer(
    request: CompletionRequest, response: CompletionResponse, validate_json: bool
) -> _Cached | None:
    """A cache hit, decoded; None if it is no answer now (then the request is sent)."""
    try:
        return _Cached(check_reply(request, response, validate_json=validate_json))
    except (ReplyError, InvalidResponseError):
        return None


class Engine:
    """Runs batches of requests through one client. Reusable and safe to share between
    concurrent batches: all per-batch state lives in the call to `stream`."""

    def __init__(self, client: LLMClient, config: EngineConfig | None = None) -> None:
        self.config = config or EngineConfig()
        self.listeners: list[Listener] = list(self.config.listeners)
        cfg = self.config
        self.limiter = cfg.limiter
        # One limiter per engine: a ThrottledLLMClient's limiter becomes the engine's (not a
        # second, adaptive one stacked on it that would react to every 429 again); both run
        # only when the user composed them on purpose (a limiter in the config too).
        if isinstance(client, ThrottledLLMClient):
            client, self.limiter = client.unwrap(cfg.limiter)
        self.client = client
        if self.limiter is None and cfg.adaptive:
            self.limiter = RateLimiter(clock=cfg.clock, sleep=cfg.sleep)
        self.gate: ConcurrencyLimiter | None = None
        # A fixed bound on attempts in flight, below the workers (`max_in_flight`).
        self.in_flight: ConcurrencyLimiter | None = None
        if cfg.max_in_flight is not None and cfg.max_in_flight < cfg.workers:
            n = cfg.max_in_flight
            self.in_flight = ConcurrencyLimiter(
                initial=n, min_limit=n, max_limit=n, clock=cfg.clock
            )
        if cfg.max_concurrency == "auto":
            self.gate = ConcurrencyLimiter(max_limit=cfg.workers, clock=cfg.clock)

    async def stream(
        self,
        source: RequestSource,
        *,
        timeout: float | None = None,
        total: int | None = None,
        finish_unstarted: bool = True,
        listeners: Sequence[Listener] = (),
    ) -> AsyncGenerator[BatchResult, None]:
        """Yield one result per request, in completion order.

        `timeout` is the whole batch's deadline in seconds. `total` is only reported to
        listeners (taken from `len(source)` when it has one). `listeners` are added for this
        batch only. With `finish_unstarted=False`, requests never pulled from the source when
        the batch stops get no result (the CLI's journal leaves them for the next run).
        Closing the iterator early (`contextlib.aclosing`) or cancelling the consuming task
        cancels in-flight requests; their results then reach listeners only. A pull from an
        async source in progress when the batch stops is cancelled too, so a source that
        blocks cannot hold the run (an async generator is then closed).
        """
        if total is None and isinstance(source, Sequence):
            total = len(source)
        run = _Run(self, source, listeners)
        loop = asyncio.get_running_loop()
        deadline: asyncio.TimerHandle | None = None
        interrupted = False
        try:
            run.emit(BatchStarted(total, self.config.clock()))
            run.workers.extend(loop.create_task(run.worker()) for _ in range(self.config.workers))
            if timeout is not None:
                deadline = loop.call_later(
                    timeout, run.stop, BatchTimeoutError(f"the batch deadline of {timeout}s passed")
                )
            while True:
                while run.ready:
                    result = run.ready.popleft()
                    run.room.release()
                    yield result
                if all(w.done() for w in run.workers):
                    break
                # `ready` is empty here: wait for a worker's result or its end (`wake`).
                run.waiter = loop.create_future()
                await run.waiter
            if run.crash is not None:
                raise run.crash
            if run.stop_error is not None:
                interrupted = True
                if finish_unstarted:
                    await run.fail_unstarted()
                while run.ready:
                    yield run.ready.popleft()
        except (asyncio.CancelledError, GeneratorExit) as exc:
            interrupted = True
            run.stop(BatchCancelledError("the batch was cancelled before this request finished"))
            await asyncio.gather(*run.workers, return_exceptions=True)
            # A consumer that closed the stream early wants no more results; a cancelled one
            # (Ctrl-C, a timeout around the caller) is owed one per request.
            if isinstance(exc, asyncio.CancelledError) and finish_unstarted and run.crash is None:
                await run.fail_unstarted()
            raise
        finally:
            if deadline is not None:
                deadline.cancel()
            for w in run.workers:
                w.cancel()
            run.emit(
                BatchFinished(
                    run.completed, run.failed, self.config.clock() - run.started, interrupted
                )
            )
