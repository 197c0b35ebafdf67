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
from .events import BatchEnded, BatchEvent, BatchPolled, BatchSubmitted
from .ledger import CREATED, ENDED, UPLOADED, ChunkRecord, Ledger, LedgerError
from .providers import backend_for
from .split import Chunk, Splitter, TooLarge, read_ids

__all__ = ["BatchAPIConfig", "BatchAPIRunner", "is_redoable"]

log = logging.getLogger("llmbatch")
T = TypeVar("T")

DEFAULT_POLL_INTERVAL = 30.0
DEFAULT_MAX_POLL_INTERVAL = 600.0
# How far a provider's clock may be behind ours when matching a lost create to its intent.
CLOCK_SKEW = 600.0
_REQUEST_INDEX = re.compile(r"requests\.(\d+)")


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

    # -- steering from outside (a deadline moving work to realtime) ----------------------------

    def halt(self) -> None:
        """Submit no more batches: requests not yet in one get no result from this runner.
        Batches already created are still polled and collected."""
        self.halted = True

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
        self._done, self._flush = done, flush or (lambda: None)
        live = [r for r in ledger.chunks if r.live]
        covered: dict[str, int] = {}
        for record in live:
            covered.update(dict.fromkeys(ledger.ids(record), record.n))
            self._hold(record)
        for record in live:
            if record.batch_id is None:
                async for result in self._create(record, reattach=True):
                    yield result
            else:
                self._emit(BatchSubmitted(record.n, record.batch_id, record.count, True))
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
        splitter = Splitter(
            self.ledger.directory, caps, framing=backend.framing, start=self.ledger.next_n
        )
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

    async def _start(self, chunk: Chunk) -> AsyncIterator[BatchResult]:
        assert self.ledger is not None
        if self.halted:  # halted while earlier chunks were being created: never sent
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
        tag = f"{ledger.run_key}:{record.n}"
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
        assert self.ledger is not None
        pending = [r for r in self.ledger.chunks if r.live]
        interval = self.config.poll_interval
        while pending:
            changed = False
            for record in list(pending):
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
                    record.status, changed = info.status, True
                    self.ledger.save()
                if info.ended:
                    async for result in self._collect(record, info):
                        yield result
                    pending.remove(record)
                    changed = True
            if pending:
                poked = await self._nap(interval)
                interval = (
                    self.config.poll_interval
                    if changed or poked
                    else min(interval * 1.5, self.config.max_poll_interval)
                )

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
