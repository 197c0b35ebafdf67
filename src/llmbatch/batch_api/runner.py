"""Running requests through a provider's batch API (half price), resumable and never paid twice.

    runner = BatchAPIRunner(client, BatchAPIConfig("out.jsonl", poll_interval=60))
    async for result in runner.stream(requests, done=scan.is_ok, flush=sink.flush):
        sink.write(result)            # the same BatchResults as the engine's, batch_api=True

The runner splits the requests into chunks under the provider's caps (`split`), and for each
one records its intent in the ledger (`ledger`, next to the output) BEFORE anything is sent,
the uploaded file id after the upload and the batch id right after the create. It then polls
every batch with a backoff and, once a batch has ended, downloads its results and yields one
result per id of the chunk: the answer, the provider's error, or a `BatchAPIError` (codes
batch_expired, batch_cancelled, batch_failed) for lines the batch left unanswered. Only then,
after `flush()` has made those lines durable, is the chunk marked ended.

Guarantees, after a crash or `kill -9` at any moment and a rerun with the same ledger:
- ids in a chunk the ledger knows are never submitted again while that chunk is live;
- a batch already created is re-attached, never re-created. A create whose answer was lost
  (killed, or a timeout) is found before any new create: OpenAI batches by their metadata
  tag (it holds the ledger's random run key, so no other run's batch carries it),
  Anthropic batches (no metadata) only with proof: a batch created since the intent,
  unknown to the ledger, with the chunk's request count, is waited for until it ends, and
  adopted only if its results' custom_ids are exactly the chunk's (each carries the id and
  a digest of the request's content, `anthropic.proof_id`). Two proven candidates, or one
  whose results are gone, stop the run naming them rather than guess;
- an OpenAI upload whose answer was lost is found by its name and size and used, not
  uploaded again;
- results of a re-attached batch for ids `done` says are written are skipped.
Cancelling the task (Ctrl-C) leaves the batches running at the provider; the rerun collects.

With a `budget` (`llmbatch.Budget`, `--max-cost`), money is checked per batch: a chunk's worst
case at the batch price (`Pricer.worst_case(request, batch=True)`) is reserved before its
intent is recorded (and kept in the ledger), a chunk is closed early when the next request
would not fit what is left, and when a request alone does not fit, submitting stops: it gets
a `BudgetExceededError` result (unfinished, no line) and the requests after it are not sent.
A re-attached batch holds its recorded worst case until it is collected; a collected batch
settles to what its answers cost (set as `result.cost`, invalid replies included: they were
paid for).

With `enqueued_tokens` (OpenAI's enqueued-token limit, per model; `enqueued`), a chunk is
created only when its estimated input tokens fit beside those of this run's live batches of
its model; until then the runner polls and collects (submission and polling interleave) and
reads no further. A batch the provider fails for the limit (`token_limit_exceeded`) teaches
the limit, goes back to waiting (its chunk keeps its uploaded file; the ledger records the
refused batch, and the next create carries a new tag, so a rerun neither re-attaches the
refused batch nor creates the chunk twice) and is created again when there is room: its
lines are not failed. A chunk held before its intent is recorded has no ledger record: a
rerun reads its requests again.

Each answer is checked like a realtime reply (`llmbatch.replies.check_reply`, against the
request's schema or JSON mode): `result.parsed` is set, and refusals, truncated JSON and
replies that break the schema become the same errors as realtime (`RefusalError`,
`TruncatedReplyError`, `InvalidOutputError`, each keeping the reply). The runner re-asks
nothing; `llmbatch run --expired realtime` sends re-asks through the engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import re
import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Collection,
    Iterable,
    Sequence,
)
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from ..budget import Budget, BudgetExceededError
from ..clients.provider import ProviderClient
from ..errors import (
    BadRequestError,
    BatchAPIError,
    InvalidResponseError,
    LLMBatchError,
    ReplyError,
    RetryableError,
)
from ..pricing import Pricer
from ..replies import check_reply
from ..retry import RetryPolicy
from ..schema import Schema, SchemaMode
from ..text import chars_to_tokens
from ..types import BatchRequest, BatchResult, CompletionRequest, conversational
from .backend import BatchBackend, BatchInfo, LineOutcome
from .enqueued import MAX_HOLD, EnqueuedTokens, model_of, stated_limit
from .events import BatchEnded, BatchEvent, BatchHeld, BatchPolled, BatchSubmitted
from .ledger import CREATED, ENDED, INTENT, UPLOADED, ChunkRecord, Ledger, LedgerError
from .providers import backend_for
from .split import JSONL, Caps, Chunk, Splitter, TooLarge, read_ids

__all__ = ["BatchAPIConfig", "BatchAPIRunner", "is_redoable"]

log = logging.getLogger("llmbatch")
T = TypeVar("T")

DEFAULT_POLL_INTERVAL = 30.0
DEFAULT_MAX_POLL_INTERVAL = 600.0
# How far a provider's clock may be behind ours when matching a lost create to its intent.
CLOCK_SKEW = 600.0
_REQUEST_INDEX = re.compile(r"requests\.(\d+)")
VALIDATING = "validating"  # OpenAI's status before the input is checked (and the limit)


def _never(rid: str) -> bool:
    return False


def is_redoable(result: BatchResult) -> bool:
    """True for a batch line worth sending again realtime: expired, or a retryable failure."""
    err = result.error
    if isinstance(err, BatchAPIError):
        return err.code == "batch_expired"
    return isinstance(err, RetryableError)


@dataclass(slots=True, frozen=True)
class BatchAPIConfig:
    """How a `BatchAPIRunner` works. `output` is the results file the ledger sits beside.

        `max_requests` / `max_tokens` lower the per-batch caps (estimated input tokens, for
        providers that limit enqueued tokens). Polls start at `poll_interval` seconds and back off
        by 1.5x while nothing changes, up to `max_poll_interval`. `max_retries` bounds retries of
    each API call that fails transiently (429, 5xx, connection); `retry` replaces that with a
    `RetryPolicy` of your own (jitter, bounded total time). `keep_files`: leave uploaded
    and result files at the provider. `clock` is wall time (compared with the provider's
        timestamps); `sleep` is injectable so tests never wait.

        `budget`: a hard cap on money, checked per batch (see the module doc). `pricer` prices
        each answer (`result.cost`; default the budget's, else answers are not priced here).
        `response_model`: a pydantic model class (or `Schema`, or JSON Schema dict) every chat
        request without a schema of its own must answer in (`schema_mode` native or prompt).
        `validate_json`: JSON-mode replies must parse (as the engine's).
        `enqueued_tokens`: the provider's enqueued-token limit per model (estimated input tokens
        of live batches); None: learned from the provider's refusal, if one comes.
    """

    output: str | Path
    max_requests: int | None = None
    max_tokens: int | None = None
    poll_interval: float = DEFAULT_POLL_INTERVAL
    max_poll_interval: float = DEFAULT_MAX_POLL_INTERVAL
    max_retries: int = 8
    retry: RetryPolicy | None = None
    keep_files: bool = False
    listeners: Sequence[Callable[[BatchEvent], None]] = ()
    clock: Callable[[], float] = time.time
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    budget: Budget | None = None
    pricer: Pricer | None = None
    response_model: Any = None
    schema_mode: SchemaMode | None = None
    validate_json: bool = True
    enqueued_tokens: int | None = None

    @property
    def retry_policy(self) -> RetryPolicy:
        """`retry`, or `max_retries` retries backing off from 1 s to 60 s (full jitter),
        within 10 minutes of the first try."""
        if self.retry is not None:
            return self.retry
        return RetryPolicy(
            max_attempts=self.max_retries + 1, base_delay=1.0, max_delay=60.0, max_retry_time=600.0
        )

    def __post_init__(self) -> None:
        if self.response_model is not None and not isinstance(self.response_model, Schema):
            model = Schema.of(self.response_model, mode=self.schema_mode)
            object.__setattr__(self, "response_model", model)


class BatchAPIRunner:
    """The batch-API counterpart of `Engine`: requests in, `BatchResult`s out.

    Results carry `response.batch_api = True` (billed at the batch price), `attempts=1` and
    `duration` = seconds from the chunk's submission to its results.
    """

    def __init__(
        self,
        client: ProviderClient,
        config: BatchAPIConfig,
        *,
        backend: BatchBackend | None = None,
    ) -> None:
        self.client = client
        self.config = config
        self.backend = backend or backend_for(client)
        self.ledger: Ledger | None = None
        # Per chunk: how its answers are checked, and the USD its batch holds in the budget.
        self._checks: dict[int, _Checks] = {}
        self._specs: dict[tuple[Any, ...], CompletionRequest] = {}
        self._reserved: dict[int, float] = {}
        self._unrecorded: set[int] = set()  # re-attached chunks whose worst case is summed
        self.halted = False
        self._poked: asyncio.Future[None] | None = None
        # The enqueued-token limit: live tokens per model; chunks with an intent recorded
        # and no batch yet, created when there is room; when each may be tried again (a
        # chunk refused while nothing of this run's was live); chunks refused in this run.
        self.enqueued = EnqueuedTokens(config.enqueued_tokens)
        self._waiting: list[ChunkRecord] = []
        self._retry_at: dict[int, float] = {}
        self._requeued: set[int] = set()
        self._splitter: Splitter | None = None
        self._changed = False

    # -- steering from outside (a deadline moving work to realtime) ----------------------------

    def halt(self) -> None:
        """Submit no more batches: requests not yet in one get no result from this runner.
        Batches already created are still polled and collected. Chunks waiting for room
        under the enqueued-token limit end without a batch (and without results), but those
        an earlier run recorded: their create may have happened, so they are looked for."""
        self.halted = True
        waiting = [r for r in self._waiting if r.n in self._requeued]
        self._waiting = [r for r in self._waiting if r.n not in self._requeued]
        for record in waiting:
            self._settle(record.n, 0.0)
            self._checks.pop(record.n, None)
            record.state, record.status = ENDED, "not created"
            record.note = "waited for room under the enqueued-token limit; the run halted"
            record.ended_at = self.config.clock()
        if waiting and self.ledger is not None:
            self.ledger.save()
            for record in waiting:
                self.ledger.forget_files(record)
                self._emit(BatchEnded(record.n, None, "not created", record.count, 0))
        self.poke()

    async def cancel_live(self, skip: Collection[str] = ()) -> list[str]:
        """Ask the provider to cancel every batch of this run that has not ended (but those
        in `skip`); the poll loop then collects what each one finished. Returns the ids
        asked. A batch the provider refuses to cancel (it ended meanwhile, or is cancelling
        already) is left to be collected as it is."""
        cancelled: list[str] = []
        for record in self.ledger.chunks if self.ledger is not None else ():
            if record.live and record.batch_id is not None and record.batch_id not in skip:
                with contextlib.suppress(BadRequestError):
                    await self._call(partial(self.backend.cancel, record.batch_id))
                cancelled.append(record.batch_id)
        if cancelled:
            self.poke()
        return cancelled

    async def cancel(self, batch_id: str) -> None:
        """Ask the provider to cancel one batch of this run (a refusal: it ended meanwhile,
        or is cancelling already, and is collected as it is); the poll loop collects it."""
        with contextlib.suppress(BadRequestError):
            await self._call(partial(self.backend.cancel, batch_id))
        self.poke()

    def poke(self) -> None:
        """Poll now (and at the first interval again), not after the backed-off wait."""
        if self._poked is not None and not self._poked.done():
            self._poked.set_result(None)

    async def _nap(self, seconds: float) -> bool:
        """Sleep between polls; True if `poke()` cut it short."""
        self._poked = asyncio.get_running_loop().create_future()
        sleeper = asyncio.ensure_future(self.config.sleep(seconds))
        try:
            await asyncio.wait({sleeper, self._poked}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
        return self._poked.done()

    # -- the building block -----------------------------------------------------------------

    async def stream(
        self,
        requests: Iterable[BatchRequest],
        *,
        done: Callable[[str], bool] = _never,
        flush: Callable[[], None] | None = None,
    ) -> AsyncGenerator[BatchResult, None]:
        """Submit `requests`, re-attach the ledger's live batches, yield every result.

        `done(id)`: the id's answer is already in the output (skipped if a re-attached batch
        returns it again). `flush()`: make what was consumed so far durable; called before a
        chunk is marked ended. Raises `LedgerError` if the ledger cannot be used.
        """
        ledger = self.ledger = Ledger.open(
            self.config.output, provider=self.backend.name, base_url=self.client.base_url
        )
        ledger.ensure_directory()
        ledger.sweep()
        self._done, self._flush = done, flush or (lambda: None)
        for record in ledger.chunks:  # limits learned by earlier runs
            if isinstance(limit := record.extra.get("enqueued_limit"), int):
                self.enqueued.learn(model_of(record.key), limit)
        live = [r for r in ledger.chunks if r.live]
        covered: dict[str, int] = {}
        for record in live:
            covered.update(dict.fromkeys(ledger.ids(record), record.n))
            self._hold(record)
        for record in live:
            if record.batch_id is None:
                self._waiting.append(record)  # created below, or once there is room
            else:
                self._track(record)
                self._emit(BatchSubmitted(record.n, record.batch_id, record.count, True))
        async for result in self._create_waiting():
            yield result
        async for result in self._submit_new(requests, covered):
            yield result
        del covered
        async for result in self._poll():
            yield result

    # -- submitting -------------------------------------------------------------------------

    async def _submit_new(
        self, requests: Iterable[BatchRequest], covered: dict[str, int]
    ) -> AsyncIterator[BatchResult]:
        assert self.ledger is not None
        backend, budget = self.backend, self.config.budget
        caps = backend.caps.lowered(self.config.max_requests, self.config.max_tokens)
        splitter = self._splitter = Splitter(
            self.ledger.directory, caps, framing=backend.framing, start=self.ledger.next_n
        )
        self._cap_tokens()
        stopped = False  # the budget refused a request: nothing more is submitted
        try:
            for item in requests:
                if self.halted:
                    return  # the chunk being filled is discarded below, never sent
                n = covered.get(item.id)
                if n is not None:  # its batch is live: the results come from there
                    self._note(n, item.id, item.request, reattached=True)
                    continue
                if stopped:
                    continue  # read on only for the live batches' requests, above
                item = self._with_model(item)
                try:
                    key, line, wire = backend.encode(item)
                    tokens = chars_to_tokens(item.request.text_length())
                    worst = 0.0
                    if budget is not None:
                        cost = budget.pricer.worst_case(item.request, batch=True)
                        if cost is None or not budget.fits(splitter.open_cost + cost):
                            # What is open is submitted now (it fits), then this one alone.
                            for ready in splitter.finish():
                                async for result in self._start(ready):
                                    yield result
                            if cost is None or not budget.fits(cost):
                                budget.try_reserve(cost, wait=False)  # refused: exhausted
                                stopped = True
                                yield self._refused(item.id, budget)
                                continue
                        worst = cost
                    chunk = splitter.add(key, item.id, line, tokens, worst, wire)
                except LLMBatchError as exc:
                    yield BatchResult(item.id, error=exc, attempts=0)
                    continue
                except TooLarge as exc:
                    yield BatchResult(item.id, error=BadRequestError(str(exc)), attempts=0)
                    continue
                opened = splitter.open_chunk(key)
                if opened is not None:
                    self._note(opened, item.id, item.request)
                if chunk is not None and self.halted:
                    _drop(chunk)
                elif chunk is not None:
                    async for result in self._start(chunk):
                        yield result
            for chunk in splitter.finish():
                if self.halted:
                    _drop(chunk)
                    continue
                async for result in self._start(chunk):
                    yield result
        finally:
            splitter.discard()
            self._splitter = None

    async def _start(self, chunk: Chunk) -> AsyncIterator[BatchResult]:
        assert self.ledger is not None
        if self.halted:  # halted while earlier chunks were being created: never sent
            _drop(chunk)
            return
        async for result in self._room(chunk):
            yield result
        if self.halted:  # halted while it waited for room
            _drop(chunk)
            return
        budget = self.config.budget
        extra: dict[str, Any] = {}
        if budget is not None:
            if not budget.admit_amount(chunk.cost):  # only by rounding: checked as it filled
                first, _ = read_ids(chunk.ids_path)[0]
                for p in (chunk.input_path, chunk.ids_path):
                    p.unlink(missing_ok=True)
                self._checks.pop(chunk.n, None)
                yield self._refused(first, budget)
                return
            self._reserved[chunk.n] = chunk.cost
            extra["worst_cost"] = chunk.cost
        extra["tokens"] = chunk.tokens
        record = self.ledger.add(chunk, self.config.clock(), extra)  # the intent, durable
        async for result in self._create(record, reattach=False):
            yield result

    # -- the budget and the checks of answers -----------------------------------------------

    def _hold(self, record: ChunkRecord) -> None:
        """A live chunk from an earlier run holds its worst case until it is collected."""
        budget = self.config.budget
        if budget is None:
            return
        worst = record.extra.get("worst_cost")
        if not isinstance(worst, int | float):
            # Recorded without a budget: its worst case is summed as its requests go by.
            worst = 0.0
            self._unrecorded.add(record.n)
        budget.hold(float(worst))
        self._reserved[record.n] = float(worst)

    def _settle(self, n: int, actual: float) -> None:
        budget = self.config.budget
        reserved = self._reserved.pop(n, None)
        if budget is not None and reserved is not None:
            budget.settle_amount(reserved, actual)

    def _refused(self, rid: str, budget: Budget) -> BatchResult:
        message = f"not sent under `max_cost` ${budget.max_cost:g}: {budget.exhausted}"
        return BatchResult(rid, error=BudgetExceededError(message), attempts=0)

    def _with_model(self, item: BatchRequest) -> BatchRequest:
        schema = self.config.response_model
        request = item.request
        if schema is None or request.schema is not None or not conversational(request):
            return item
        return BatchRequest(item.id, dataclasses.replace(request, schema=schema))

    def _note(
        self, n: int, rid: str, request: CompletionRequest, *, reattached: bool = False
    ) -> None:
        """Remember how the answer to `request` (in chunk `n`) is to be checked."""
        if reattached:
            request = self._with_model(BatchRequest("", request)).request
            budget = self.config.budget
            if budget is not None and n in self._unrecorded and n in self._reserved:
                worst = budget.pricer.worst_case(request, batch=True) or 0.0
                budget.reserved += worst
                self._reserved[n] += worst
        # Only what `check_reply` reads, shared by every request that asks the same.
        key = (request.endpoint, id(request.schema), request.response_format, request.max_tokens)
        spec = self._specs.get(key)
        if spec is None:
            spec = self._specs[key] = CompletionRequest(
                max_tokens=request.max_tokens,
                response_format=request.response_format,
                endpoint=request.endpoint,
                schema=request.schema,
            )
        self._checks.setdefault(n, _Checks()).add(rid, spec)

    async def _create(self, record: ChunkRecord, *, reattach: bool) -> AsyncIterator[BatchResult]:
        """Upload (if the provider takes files) and create the batch of `record`, unless a
        batch already exists for it; record each step. A refused create fails its lines."""
        ledger, backend = self.ledger, self.backend
        assert ledger is not None
        tag = _tag(ledger, record)
        path = ledger.input_path(record.n)
        try:
            # A backend with `inline_max_bytes` (Gemini) sends a chunk that small inline.
            limit = getattr(backend, "inline_max_bytes", None)
            inline = limit is not None and path.stat().st_size <= limit
            if backend.uploads and record.file_id is None and not inline:
                name = f"llmbatch-{ledger.run_key}-{record.n}.jsonl"
                size = path.stat().st_size
                since = record.intent_at - CLOCK_SKEW
                found = None
                if reattach:  # an upload whose answer was lost is used, not repeated
                    found = await self._lookup(
                        record, lambda: backend.find_upload(name, size, since)
                    )
                record.file_id = found or await self._call(lambda: backend.upload(path, name))
                record.state = UPLOADED
                ledger.save()
            info = await self._create_once(record, tag, path, search=reattach)
        except BadRequestError as exc:
            # The provider refused the upload or the batch as a whole (a 4xx naming the
            # problem): every line of it fails, saying why. Anything less clear (a garbled
            # answer, a timeout, a refused look-up: `_lookup`) propagates instead: the batch
            # may exist, and the rerun looks for it first.
            message = _name_lines(str(exc), ledger.ids(record))
            async for result in self._end_unsent(record, message):
                yield result
            return
        record.batch_id, record.status, record.state = info.id, info.status, CREATED
        ledger.save()
        self._track(record)
        if info.status != VALIDATING:
            path.unlink(missing_ok=True)  # the provider holds the requests now
        self._emit(BatchSubmitted(record.n, info.id, record.count, reattach))

    async def _create_once(
        self, record: ChunkRecord, tag: str, path: Path, *, search: bool
    ) -> BatchInfo:
        """Create the batch exactly once: before every create after the first (and on a
        re-attach), look for one an earlier try made whose answer was lost."""
        started, attempt = self.config.clock(), 0
        while True:
            attempt += 1
            if search or attempt > 1:
                found = await self._find(record, tag)
                if found is not None:
                    return found
            try:
                return await self.backend.create(record.key, path, record.file_id, tag)
            except RetryableError as exc:
                await self._backoff(exc, attempt, started)

    async def _find(self, record: ChunkRecord, tag: str) -> BatchInfo | None:
        assert self.ledger is not None
        known = {r.batch_id for r in self.ledger.chunks if r.batch_id}
        candidates: list[BatchInfo] = []

        async def scan() -> None:
            candidates.clear()
            async for info in self.backend.recent(record.intent_at - CLOCK_SKEW):
                if self.backend.tags:  # the batch carries our tag: an exact match
                    if info.tag == tag:
                        candidates[:] = [info]
                        return
                elif info.id not in known and info.total == record.count:
                    candidates.append(info)

        await self._lookup(record, scan)
        if self.backend.tags or not candidates:
            return candidates[0] if candidates else None
        # Without a tag (Anthropic), a batch of the same size may be another run's: only its
        # results tell, as their custom_ids carry each request's id and a digest of its
        # content. So each candidate is waited for until it ends, and adopted only if it ran
        # exactly this chunk. At most one batch of ours exists (a search precedes each create).
        expected = {w or self.backend.wire_id(rid) for rid, w in self.ledger.entries(record)}
        proven: list[BatchInfo] = []
        unknown: list[BatchInfo] = []
        for info in candidates:
            ran = await self._ran_chunk(record, info, expected)
            if ran is None:
                unknown.append(info)
            elif ran:
                proven.append(info)
        if len(proven) > 1 or (unknown and not proven):
            doubtful = proven + unknown
            raise LedgerError(
                f"chunk {record.n} ({record.count:,} requests) may have been created before "
                f"the last run stopped, and {len(doubtful)} batches match it: "
                f"{', '.join(c.id for c in doubtful)} (whose results cannot tell which ran "
                "it); cancel the ones that are not this run's at the provider, then rerun"
            )
        return proven[0] if proven else None

    async def _ran_chunk(
        self, record: ChunkRecord, info: BatchInfo, expected: set[str]
    ) -> bool | None:
        """Whether batch `info` ran exactly the requests whose custom_ids are `expected`,
        read from its results once it has ended; None if its results are gone."""
        interval = self.config.poll_interval
        while not info.ended:
            await self.config.sleep(interval)
            interval = min(interval * 1.5, self.config.max_poll_interval)
            info = await self._lookup(record, partial(self.backend.get, info.id))
        seen: set[str] = set()

        async def read() -> bool:
            seen.clear()  # a download cut short starts again
            async for line in self.backend.results(info):
                if line.custom_id not in expected:
                    return False  # a request that is not this chunk's: another run's batch
                seen.add(line.custom_id)
            return seen == expected

        try:
            return await self._call(read)
        except LLMBatchError as exc:
            if exc.status_code == 404:
                return None
            raise self._lookup_failed(record, exc) from exc

    async def _lookup(self, record: ChunkRecord, fn: Callable[[], Awaitable[T]]) -> T:
        """`fn()`, a look-up for what an earlier try at `record` may have created (listing
        batches or files). Its refusal (a 403 on a listing, a 404 of a route a gateway
        lacks) says nothing of the batch, which may exist and be billed: it stops the run,
        the chunk left live in the ledger, never as a refused batch."""
        try:
            return await self._call(fn)
        except LLMBatchError as exc:
            raise self._lookup_failed(record, exc) from exc

    def _lookup_failed(self, record: ChunkRecord, exc: LLMBatchError) -> LedgerError:
        assert self.ledger is not None
        return LedgerError(
            f"looking for the batch of chunk {record.n} ({record.count:,} requests) at the "
            f"provider failed ({exc}); it may exist and be billed, so its lines are not "
            f"failed: {self.ledger.path} keeps the chunk, and a rerun looks again"
        )

    # -- waiting and collecting -------------------------------------------------------------

    async def _poll(self) -> AsyncIterator[BatchResult]:
        """Poll and collect until every batch of the run has ended and no chunk waits."""
        interval = self.config.poll_interval
        while True:
            async for result in self._poll_round():
                yield result
            changed = self._changed
            async for result in self._create_waiting():
                changed = True
                yield result
            if not self._waiting and not self._created():
                return
            if changed:
                interval = self.config.poll_interval  # news: look again soon
            poked = await self._nap(self._next_wait(interval))
            interval = (
                self.config.poll_interval
                if poked
                else min(interval * 1.5, self.config.max_poll_interval)
            )

    def _created(self) -> list[ChunkRecord]:
        """The live chunks with a batch at the provider."""
        assert self.ledger is not None
        return [r for r in self.ledger.chunks if r.live and r.batch_id is not None]

    async def _poll_round(self) -> AsyncIterator[BatchResult]:
        """Look at every live batch once; collect those that ended (`_changed`: any news)."""
        assert self.ledger is not None
        self._changed = False
        for record in self._created():
            assert record.batch_id is not None
            info = await self._call(partial(self.backend.get, record.batch_id))
            self._emit(
                BatchPolled(
                    record.n,
                    info.id,
                    info.status,
                    info.total,
                    info.succeeded,
                    info.failed,
                    self.config.clock() - record.intent_at,
                )
            )
            if info.status != record.status:
                record.status, self._changed = info.status, True
                self.ledger.save()
            if info.status != VALIDATING and info.refused is None:
                # Past validation: the chunk's input is no longer needed to cut it smaller.
                self.ledger.input_path(record.n).unlink(missing_ok=True)
            if info.ended:
                self._changed = True
                self.enqueued.remove(record.n)
                if info.refused is not None and self.halted:
                    # No more batches are created: its lines go elsewhere (a deadline run
                    # sends them realtime), as the batch never ran them.
                    message = (
                        f"batch {info.id} was refused for the provider's enqueued-token limit "
                        f"({info.refused}) after the run stopped creating batches"
                    )
                    async for result in self._end_unsent(record, message):
                        yield result
                    continue
                if info.refused is not None and self._requeue(record, info.id, info.refused):
                    continue
                if info.refused is not None and self._split(record, info.id, info.refused):
                    if not self.config.keep_files:
                        await self.backend.cleanup(info, record.file_id)
                    continue
                async for result in self._collect(record, info):
                    yield result

    # -- the enqueued-token limit -----------------------------------------------------------

    def _track(self, record: ChunkRecord) -> None:
        """`record`'s batch is live: its tokens count against its model's limit."""
        self.enqueued.add(record.n, model_of(record.key), _tokens(record))

    def _cap_tokens(self) -> None:
        """No new chunk holds more estimated tokens than a model's limit allows."""
        splitter = self._splitter
        limits = [self.enqueued.limit, *self.enqueued.learned.values()]
        known = [x for x in limits if x is not None]
        if splitter is None or not known:
            return
        cap = min(known)
        if splitter.caps.max_tokens is None or cap < splitter.caps.max_tokens:
            splitter.caps = dataclasses.replace(splitter.caps, max_tokens=cap)

    def _must_wait(self, model: str, tokens: int) -> bool:
        """True while a new chunk of `model` may not be created: no room, or chunks of its
        model wait already (they go first)."""
        if any(model_of(r.key) == model for r in self._waiting):
            return True
        return not self.enqueued.fits(model, tokens)

    async def _room(self, chunk: Chunk) -> AsyncIterator[BatchResult]:
        """Wait until `chunk` may be created, polling and collecting meanwhile."""
        model = model_of(chunk.key)
        interval, held = self.config.poll_interval, False
        while True:
            async for result in self._create_waiting():
                yield result
            if self.halted or not self._must_wait(model, chunk.tokens):
                return
            if not held:
                held = True
                self._emit(
                    BatchHeld(
                        chunk.n,
                        model,
                        chunk.count,
                        chunk.tokens,
                        self.enqueued.live_tokens(model),
                        self.enqueued.limit_for(model),
                    )
                )
            async for result in self._poll_round():
                yield result
            if self._changed or self.halted or not self._must_wait(model, chunk.tokens):
                interval = self.config.poll_interval
                continue
            poked = await self._nap(self._next_wait(interval))
            interval = (
                self.config.poll_interval
                if poked
                else min(interval * 1.5, self.config.max_poll_interval)
            )

    def _next_wait(self, interval: float) -> float:
        """`interval`, or less when a refused chunk may be tried again sooner (one whose
        time has come but that has no room waits for room, as the others)."""
        now = self.config.clock()
        due = [at - now for at in self._retry_at.values() if at > now]
        return min([interval, *due])

    async def _create_waiting(self) -> AsyncIterator[BatchResult]:
        """Create the waiting chunks that fit now, in order (per model, first come first).
        Once halted, only chunks an earlier run recorded wait (`halt` ended the others):
        each is looked for, since its create may have happened, and created if not found,
        as a rerun always did (a deadline run then cancels it with the rest)."""
        blocked: set[str] = set()
        now = self.config.clock()
        for record in list(self._waiting):
            model = model_of(record.key)
            if self.halted:
                pass
            elif model in blocked:
                continue
            elif self._retry_at.get(record.n, now) > now or not self.enqueued.fits(
                model, _tokens(record)
            ):
                blocked.add(model)
                continue
            self._waiting.remove(record)
            self._retry_at.pop(record.n, None)
            # A chunk from an earlier run may have been created before it stopped: looked
            # for first. One refused in this run has a new tag no create has used yet.
            reattach = record.n not in self._requeued
            async for result in self._create(record, reattach=reattach):
                yield result

    def _split(self, record: ChunkRecord, batch_id: str, message: str) -> bool:
        """`record` alone is over the stated limit: cut its requests (its input file, kept
        until the provider validated it) into chunks under the limit, which wait for room in
        its place. One atomic ledger save records them and ends `record`; a crash before it
        leaves `record` live, refused again by the rerun's poll, and cut again. False when it
        cannot be cut (one request, not JSONL lines, the input gone): its lines then fail."""
        ledger = self.ledger
        assert ledger is not None
        path = ledger.input_path(record.n)
        stated = stated_limit(message)
        tokens = _tokens(record)
        if (
            stated is None
            or tokens <= stated  # it fits alone: it waited too long (`MAX_HOLD`)
            or record.count < 2
            or self.backend.framing != JSONL
            or not path.exists()
            or tokens <= 0
        ):
            return False
        # A margin under the limit: the tokens of the requests are spread evenly here.
        pieces = min(record.count, math.ceil(tokens / (0.9 * stated)))
        per = math.ceil(record.count / pieces)
        pieces = math.ceil(record.count / per)
        start = self._splitter.reserve(pieces) if self._splitter is not None else ledger.next_n
        worst = record.extra.get("worst_cost")
        each_cost = float(worst) / record.count if isinstance(worst, int | float) else 0.0
        each_tokens = math.ceil(tokens / record.count)
        cutter = Splitter(ledger.directory, Caps(per, 1 << 62), framing=JSONL, start=start)
        chunks: list[Chunk] = []
        entries = ledger.entries(record)
        with path.open("rb") as f:
            for (rid, wire), line in zip(entries, f, strict=True):
                closed = cutter.add(record.key, rid, line, each_tokens, each_cost, wire)
                if closed is not None:
                    chunks.append(closed)
        chunks += cutter.finish()
        now = self.config.clock()
        checks = self._checks.pop(record.n, None)
        reserved = self._reserved.pop(record.n, None)
        pieces_made: list[ChunkRecord] = []
        for chunk in chunks:
            piece = ChunkRecord(chunk.n, chunk.key, chunk.count, chunk.digest, now)
            piece.extra.update(tokens=chunk.tokens, split_from=record.n)
            if isinstance(worst, int | float):
                piece.extra["worst_cost"] = chunk.cost
            if reserved is not None:
                self._reserved[chunk.n] = reserved * chunk.count / record.count
            if checks is not None:
                mine = self._checks.setdefault(chunk.n, _Checks())
                for rid, _ in read_ids(chunk.ids_path):
                    mine.add(rid, checks.get(rid))
            pieces_made.append(piece)
        ledger.chunks.extend(pieces_made)
        record.state, record.status, record.ended_at = ENDED, "failed", now
        record.note = (
            f"batch {batch_id} alone was over the enqueued-token limit ({message}); its "
            f"requests were cut into chunks {', '.join(str(c.n) for c in chunks)}"
        )
        ledger.save()
        ledger.forget_files(record)
        self._waiting.extend(pieces_made)
        self._requeued.update(c.n for c in chunks)
        self._emit(BatchEnded(record.n, batch_id, "split", record.count, 0))
        return True

    def _requeue(self, record: ChunkRecord, batch_id: str, message: str) -> bool:
        """The provider failed `record`'s batch for the enqueued-token limit: learn the
        limit and put the chunk back to wait for room. False when it can never fit (it
        alone is over the stated limit: `_split`) or has waited `MAX_HOLD` (its lines fail)."""
        assert self.ledger is not None
        model, tokens = model_of(record.key), _tokens(record)
        now = self.config.clock()
        if self.enqueued.refused(model, tokens, message) is not None:
            # Kept for a rerun, which splits under it from the start.
            record.extra["enqueued_limit"] = self.enqueued.learned[model]
        self._cap_tokens()
        stated = stated_limit(message)
        since = record.extra.get("held_at")
        since = float(since) if isinstance(since, int | float) else now
        if (stated is not None and tokens > stated) or now - since > MAX_HOLD:
            return False  # saved with the chunk's end
        refused = [*record.extra.get("refused", ()), batch_id]
        record.extra.update(refused=refused, held_at=since)
        # Back to before its create (the uploaded file is used again): the ledger records
        # the refused batch, and the next create's tag names the try.
        record.batch_id, record.status = None, None
        record.state = UPLOADED if record.file_id is not None else INTENT
        self.ledger.save()
        self._waiting.append(record)
        self._requeued.add(record.n)
        if self.enqueued.live_tokens(model) == 0:
            # Nothing of this run's holds the queue: other programs' batches do. Try again
            # after a wait that doubles with each refusal.
            wait = self.config.poll_interval * 2 ** min(len(refused) - 1, 10)
            self._retry_at[record.n] = now + min(wait, self.config.max_poll_interval)
        self._emit(
            BatchHeld(
                record.n,
                model,
                record.count,
                tokens,
                self.enqueued.live_tokens(model),
                self.enqueued.limit_for(model),
                batch_id,
            )
        )
        return True

    async def _collect(self, record: ChunkRecord, info: BatchInfo) -> AsyncIterator[BatchResult]:
        """Every id of an ended batch, once: its answer, its error, or why it has none."""
        assert self.ledger is not None
        entries = self.ledger.entries(record)
        ids = [rid for rid, _ in entries]
        by_wire = {wire or self.backend.wire_id(rid): rid for rid, wire in entries}
        seen: set[str] = set()
        written = 0
        spent = 0.0  # USD of the answers yielded, for the budget
        elapsed = max(0.0, self.config.clock() - record.intent_at)
        started, attempt = self.config.clock(), 0
        gone: LLMBatchError | None = None
        while True:
            attempt += 1
            try:
                # A download cut short starts again; `seen` keeps lines from being repeated.
                async for line in self.backend.results(info):
                    rid = by_wire.get(line.custom_id)
                    if rid is None or rid in seen:
                        continue  # not this chunk's (or a repeat): never written twice
                    seen.add(rid)
                    if self._done(rid):
                        continue
                    written += 1
                    result = self._result(record, rid, line, elapsed)
                    spent += result.cost or 0.0
                    yield result
                break
            except RetryableError as exc:
                await self._backoff(exc, attempt, started)
            except LLMBatchError as exc:
                if exc.status_code != 404:
                    raise
                # The result file was deleted (by hand, by its retention, by another run):
                # stopping here would stop every rerun too. Its lines fail, for --retry-failed.
                gone = exc
                break
        missing = [rid for rid in ids if rid not in seen and not self._done(rid)]
        if missing:
            error = _missing_error(info, ids)
            if gone is not None:
                error = BatchAPIError(
                    f"the results of batch {info.id} are no longer at the provider ({gone}); "
                    "this request's answer is lost: a rerun with retry_failed sends it again",
                    code="batch_failed",
                )
            for rid in missing:
                written += 1
                yield BatchResult(rid, error=error, duration=elapsed, attempts=1)
        self._flush()
        self._settle(record.n, spent)
        self._checks.pop(record.n, None)
        record.state, record.status, record.ended_at = ENDED, info.status, self.config.clock()
        self.ledger.save()
        if not self.config.keep_files:
            await self.backend.cleanup(info, record.file_id)
        self.ledger.forget_files(record)
        self._emit(
            BatchEnded(record.n, info.id, info.outcome or info.status, record.count, written)
        )

    def _result(
        self, record: ChunkRecord, rid: str, line: LineOutcome, elapsed: float
    ) -> BatchResult:
        if line.error is not None:
            return BatchResult(rid, error=line.error, duration=elapsed, attempts=1)
        try:
            response = self.backend.parse(record.key, line)
        except (KeyError, IndexError, TypeError, AttributeError) as exc:
            error = InvalidResponseError(
                f"batch answer lacks the expected fields ({exc!r}): {str(line.body)[:200]}",
                status_code=line.status,
                body=line.body,
            )
            return BatchResult(rid, error=error, duration=elapsed, attempts=1)
        response.batch_api = True
        budget = self.config.budget
        pricer = self.config.pricer or (budget.pricer if budget is not None else None)
        cost = pricer.cost(response) if pricer is not None else None
        checks = self._checks.get(record.n)
        request = checks.get(rid) if checks is not None else _PLAIN
        try:
            parsed = check_reply(request, response, validate_json=self.config.validate_json)
        except (ReplyError, InvalidResponseError) as exc:
            # Paid for, so its cost is kept; the reply is in the error (and the line).
            return BatchResult(rid, error=exc, duration=elapsed, attempts=1, cost=cost)
        return BatchResult(
            rid, response=response, duration=elapsed, attempts=1, cost=cost, parsed=parsed
        )

    async def _end_unsent(self, record: ChunkRecord, message: str) -> AsyncIterator[BatchResult]:
        assert self.ledger is not None
        error = BatchAPIError(message, code="batch_failed")
        written = 0
        for rid in self.ledger.ids(record):
            if not self._done(rid):
                written += 1
                yield BatchResult(rid, error=error, attempts=1)
        self._flush()
        self._settle(record.n, 0.0)  # never created: nothing is billed
        self._checks.pop(record.n, None)
        record.state, record.status, record.note = ENDED, "failed", message
        record.ended_at = self.config.clock()
        self.ledger.save()
        self.ledger.forget_files(record)
        self._emit(BatchEnded(record.n, None, "failed", record.count, written))

    # -- plumbing ---------------------------------------------------------------------------

    async def _call(self, fn: Callable[[], Awaitable[T]]) -> T:
        """`fn()`, retried on transient failures (429, 5xx, connection)."""
        started, attempt = self.config.clock(), 0
        while True:
            attempt += 1
            try:
                return await fn()
            except RetryableError as exc:
                await self._backoff(exc, attempt, started)

    async def _backoff(self, exc: RetryableError, attempt: int, started: float) -> None:
        """Wait before another try of a call that failed transiently (the run's requests'
        building block, `RetryPolicy`: full jitter, Retry-After honoured, bounded in attempts
        and in total time); re-raise `exc` when the policy says it is final."""
        elapsed = self.config.clock() - started
        delay = self.config.retry_policy.next_delay(exc, attempt=attempt, elapsed=elapsed)
        if delay is None:
            raise exc
        log.info("batch API call failed (%s); retrying in %.1fs", exc, delay)
        await self.config.sleep(delay)

    def _emit(self, event: BatchEvent) -> None:
        for listener in self.config.listeners:
            try:
                listener(event)
            except Exception:
                log.exception("batch event listener %r failed", listener)


def _tokens(record: ChunkRecord) -> int:
    """A chunk's estimated input tokens (0 for a chunk recorded before they were kept)."""
    tokens = record.extra.get("tokens")
    return tokens if isinstance(tokens, int) else 0


def _tag(ledger: Ledger, record: ChunkRecord) -> str:
    """The metadata tag of `record`'s next create: the run key and chunk, and the try after
    a refusal for the enqueued-token limit (so the refused batch is never taken for it)."""
    tries = len(record.extra.get("refused", ()))
    return f"{ledger.run_key}:{record.n}" + (f"/{tries}" if tries else "")


def _drop(chunk: Chunk) -> None:
    """Remove the files of a chunk that will not be submitted (the runner was halted)."""
    for path in (chunk.input_path, chunk.ids_path):
        path.unlink(missing_ok=True)


_PLAIN = CompletionRequest()  # how an answer is checked when its request is not known
_UNSET: Any = object()


class _Checks:
    """How the answers of one chunk are checked: one request shape for all of its ids (the
    usual case: memory does not grow with the chunk), plus the ids that differ."""

    __slots__ = ("common", "other")

    def __init__(self) -> None:
        self.common: CompletionRequest = _UNSET
        self.other: dict[str, CompletionRequest] = {}

    def add(self, rid: str, spec: CompletionRequest) -> None:
        if self.common is _UNSET:
            self.common = spec
        elif spec is not self.common:
            self.other[rid] = spec
        else:
            self.other.pop(rid, None)

    def get(self, rid: str) -> CompletionRequest:
        spec = self.other.get(rid, self.common)
        return _PLAIN if spec is _UNSET else spec


def _missing_error(info: BatchInfo, ids: list[str]) -> BatchAPIError:
    """Why lines of an ended batch have no result line."""
    if info.outcome == "expired":
        return BatchAPIError(
            f"batch {info.id} expired (its completion window passed) before this request ran",
            code="batch_expired",
        )
    if info.outcome == "cancelled":
        return BatchAPIError(
            f"batch {info.id} was cancelled before this request ran", code="batch_cancelled"
        )
    if info.outcome == "failed" and info.refused is not None:
        return BatchAPIError(
            f"batch {info.id} was refused for the provider's enqueued-token limit "
            f"({info.refused}) and cannot wait for room (a request alone over the limit, or "
            "held 24 h); this request was not run (nothing billed): a rerun with retry_failed "
            "tries again",
            code="batch_failed",
        )
    if info.outcome == "failed":
        reasons = "; ".join(_line_reason(line, text, ids) for line, text in info.errors[:5])
        more = f" (and {len(info.errors) - 5} more)" if len(info.errors) > 5 else ""
        return BatchAPIError(
            f"batch {info.id} failed as a whole: {reasons or 'no reason given'}{more}; "
            "this request was not run",
            code="batch_failed",
        )
    return BatchAPIError(
        f"batch {info.id} ended ({info.status}) without a result for this request",
        code="batch_failed",
    )


def _line_reason(line: int | None, text: str, ids: list[str]) -> str:
    """A provider's error about input line `line` (1-based), naming the request's id."""
    if line is not None and 1 <= line <= len(ids):
        return f"line {line} of the batch (id {ids[line - 1]!r}): {text}"
    return text


def _name_lines(message: str, ids: list[str]) -> str:
    """A refused create's message, with "requests.N" (0-based) followed by the id it names."""

    def name(match: re.Match[str]) -> str:
        i = int(match.group(1))
        return f"{match.group(0)} (id {ids[i]!r})" if 0 <= i < len(ids) else match.group(0)

    return "the batch was refused: " + _REQUEST_INDEX.sub(name, message, count=3)
