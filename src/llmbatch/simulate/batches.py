"""Simulated provider batches: a scaled clock, lines answered progressively, faults.

    store = BatchStore(config, counters, answer)     # answer: one line, as realtime would
    batch = store.create_anthropic([("req-1", params_json_bytes)])
    await store.refresh(batch)                       # brought up to the clock, on each GET
    batch.anthropic_status()                         # "in_progress" ... "ended"

A batch is a timeline fixed at creation, read from the clock whenever a client looks; no
background task moves it (a refresh answers the lines due in slices, yielding between).
With `S = batch_seconds` (plus a random lognormal delay when `batch_delay_median` is set):

    OpenAI:    validating [0, 0.1 S) -> in_progress (lines finish evenly over 0.8 S)
               -> finalizing (0.1 S) -> completed, with output and error files
    Anthropic: in_progress (lines finish evenly over 0.9 S) -> ended after 0.05 S

The window (OpenAI's "24h", Anthropic's 24 h) is `batch_expire_seconds` (default 5 S):
a batch not done by then is `expired` / ended, its finished lines kept and the rest marked
`batch_expired` (OpenAI error file) / `expired` (Anthropic). `batch_expire_after F` ends
the window as soon as a fraction F of the lines has finished (so expiry tests take
seconds), `batch_stall_rate` makes a share of batches finish nothing until cancelled or
expired, `batch_error_rate` answers a share of lines with a 500 (`server_error`) /
`errored` (`api_error`); a line the API refuses (`max_tokens` below 1, or what the
realtime route refuses) is answered 400 `invalid_request_error`. A cancel freezes the
lines finished so far; after 0.1 S the batch is `cancelled` / ended, the rest
`batch_cancelled` (error file; the real API writes only finished lines to the output file
and documents `batch_cancelled` for the others) / `canceled`. Anthropic results are
written in a shuffled order, as the real API promises no order.

Each line is answered by the `answer` callable with the realtime routes' logic (same body,
same usage), but outside the realtime limits, latency and faults: batch pools are
separate. Inputs are kept as bytes (one `(custom_id, body bytes)` pair per line) and
outputs as bytes, so a 50,000-line batch costs little more than its file.
"""

from __future__ import annotations

import asyncio
import math
import random
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from .config import SimulatorConfig
from .counters import Counters
from .dialects import ANTHROPIC, OPENAI, Dialect

__all__ = [
    "Answer",
    "BatchStore",
    "SimBatch",
    "StoredFile",
    "Timeline",
    "dumps",
    "new_id",
]

# A line answered by the realtime logic: (HTTP status, body bytes, request id).
Answer = Callable[[str, Dialect, dict[str, Any]], tuple[int, bytes, str]]
Item = tuple[str, bytes]  # (custom_id, the request body as JSON bytes)
Provider = Literal["openai", "anthropic"]
EndState = Literal["completed", "expired", "cancelled", "failed"]

_VALIDATE_SHARE = 0.1  # OpenAI: share of S spent validating
_FINALIZE_SHARE = 0.1  # OpenAI: share of S spent finalizing (and cancelling)
_ANTHROPIC_END_SHARE = 0.05  # Anthropic: from the last line to `ended`
_LINES_PER_SLICE = 2000  # lines answered between two yields to the event loop


def dumps(obj: Any) -> bytes:
    """`orjson.dumps` into a right-sized bytes object. orjson's own result keeps its whole
    growth buffer (4 KiB for a short line), which for 50,000 kept lines is 200 MB."""
    return bytes(memoryview(orjson.dumps(obj)))


def new_id(prefix: str) -> str:
    return prefix + secrets.token_hex(12)


def _rfc3339(wall: float | None) -> str | None:
    if wall is None:
        return None
    micros = int((wall % 1) * 1_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(wall)) + f".{micros:06d}Z"


@dataclass(slots=True)
class StoredFile:
    """An uploaded or generated file (OpenAI Files API); `data` is the content as bytes."""

    id: str
    filename: str
    purpose: str
    data: bytes
    created_at: int

    def obj(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": len(self.data),
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "expires_at": None,
            "status_details": None,
        }


class CreateFaults:
    """Which batch create the config fails (`batch_lose_create`, `batch_refuse_create`: the
    Nth create asked for): `next()` counts one create and says "lose", "refuse" or None."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self.creates = 0

    def next(self) -> str | None:
        self.creates += 1
        if self.creates == self.config.batch_lose_create:
            return "lose"
        if self.creates == self.config.batch_refuse_create:
            return "refuse"
        return None


@dataclass(slots=True)
class Timeline:
    """When each line of a batch finishes, on the monotonic clock.

    Lines finish in input order, evenly over `span` seconds from `start`; at most `cap`
    of them finish at all (fewer than `n` when the batch is to expire part-way) and none
    after `deadline` (the end of the completion window). A stalled batch has an
    infinite span.
    """

    t0: float
    start: float
    span: float
    n: int
    cap: int
    deadline: float

    def done_by(self, t: float) -> int:
        t = min(t, self.deadline)
        if t < self.start or math.isinf(self.span):
            return 0
        if self.span <= 0:
            return self.cap
        return min(self.cap, int(self.n * (t - self.start) / self.span))

    @property
    def all_done_at(self) -> float:
        """When the last line finishes (infinity if it never does)."""
        if self.cap < self.n or math.isinf(self.span):
            return math.inf
        end = self.start + self.span
        return end if end <= self.deadline else math.inf

    def due(self, now: float, cancel_at: float | None) -> int:
        """Lines finished by `now`; none after a cancel."""
        return self.done_by(now if cancel_at is None else min(now, cancel_at))

    def ending(
        self,
        now: float,
        answered: int,
        cancel_at: float | None,
        stop_grace: float,
        finalize: float,
    ) -> tuple[EndState, float] | None:
        """How a batch whose due lines are answered ends, and when, if it has by `now`:
        cancelled `stop_grace` after its cancel, completed `finalize` after its last line,
        expired at the deadline; None while it runs on (every provider's batches alike)."""
        if cancel_at is not None:
            end = cancel_at + stop_grace
            return ("cancelled", end) if now >= end else None
        if answered == self.n:
            end = min(self.all_done_at, now) + finalize
            return ("completed", end) if now >= end else None
        return ("expired", self.deadline) if now >= self.deadline else None


class SimBatch:
    """One batch of either provider: its lines, its timeline and what it answered so far."""

    def __init__(
        self,
        provider: Provider,
        batch_id: str,
        kind: str,
        items: list[Item],
        timeline: Timeline,
        wall0: float,
        *,
        endpoint: str = "",
        input_file_id: str = "",
        metadata: dict[str, Any] | None = None,
        errors: list[dict[str, Any]] | None = None,
        finalize: float = 0.0,
        stop_grace: float = 0.0,
    ) -> None:
        self.provider: Provider = provider
        self.id = batch_id
        self.kind = kind
        self.dialect: Dialect = OPENAI if provider == "openai" else ANTHROPIC
        self.items: list[Item] | None = items
        self.n = len(items)
        self.timeline = timeline
        self.wall0 = wall0  # wall clock at creation; events are wall0 + (mono - t0)
        self.endpoint = endpoint
        self.input_file_id = input_file_id
        self.metadata = metadata
        self.errors = errors  # OpenAI validation errors: the batch will be `failed`
        self.model: str | None = None  # OpenAI: the model and input tokens (`enqueued`)
        self.tokens = 0
        self.finalize = finalize
        self.stop_grace = stop_grace
        self.cancel_at: float | None = None
        self.answered = 0
        self.succeeded = 0
        self.errored = 0
        self.ok_lines: list[bytes] = []  # OpenAI output file / Anthropic results
        self.err_lines: list[bytes] = []  # OpenAI error file
        self.end: EndState | None = None
        self.ended_at: float | None = None  # monotonic
        self.unfinished = 0  # lines expired or cancelled at the end
        self.output_file_id: str | None = None
        self.error_file_id: str | None = None
        self.results: bytes | None = None  # Anthropic: the results JSONL once ended
        self.lock = asyncio.Lock()  # one refresh at a time: lines are answered once
        self._line_ids = secrets.token_hex(6)
        self._next_line = 0

    def line_id(self) -> str:
        """A unique `batch_req_...` id (cheaper than fresh randomness per line)."""
        self._next_line += 1
        return f"batch_req_{self._line_ids}{self._next_line:012x}"

    # -- clock -----------------------------------------------------------------------------

    def wall(self, mono: float | None) -> float | None:
        return None if mono is None else self.wall0 + (mono - self.timeline.t0)

    def cancellable(self) -> bool:
        """Still running and not yet being cancelled (what a cancel may act on)."""
        return self.end is None and self.cancel_at is None and self.errors is None

    # -- what a poll sees ------------------------------------------------------------------

    def openai_status(self, now: float) -> str:
        if self.end is not None:
            return self.end
        if self.cancel_at is not None:
            return "cancelling"
        if now < self.timeline.start or self.errors is not None:
            return "validating"
        if self.answered == self.n:
            return "finalizing"
        return "in_progress"

    def anthropic_status(self) -> str:
        if self.end is not None:
            return "ended"
        return "canceling" if self.cancel_at is not None else "in_progress"

    def openai_obj(self, now: float) -> dict[str, Any]:
        tl = self.timeline
        status = self.openai_status(now)

        def ts(mono: float | None) -> int | None:
            wall = self.wall(mono)
            return None if wall is None else int(wall)

        started = now >= tl.start and self.errors is None
        done_at = min(tl.all_done_at, now)
        finalizing = status in ("finalizing", "completed")
        if self.end == "failed" or status == "validating":
            counts = {"total": 0, "completed": 0, "failed": 0}
        else:
            failed = self.errored + (self.unfinished if self.end is not None else 0)
            counts = {"total": self.n, "completed": self.succeeded, "failed": failed}
        return {
            "id": self.id,
            "object": "batch",
            "endpoint": self.endpoint,
            "errors": ({"object": "list", "data": self.errors} if self.end == "failed" else None),
            "input_file_id": self.input_file_id,
            "completion_window": "24h",
            "status": status,
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "created_at": int(self.wall0),
            "in_progress_at": ts(tl.start) if started else None,
            "expires_at": math.ceil(self.wall0 + (tl.deadline - tl.t0))
            if not math.isinf(tl.deadline)
            else None,
            "finalizing_at": ts(done_at) if finalizing else None,
            "completed_at": ts(self.ended_at) if self.end == "completed" else None,
            "failed_at": ts(self.ended_at) if self.end == "failed" else None,
            "expired_at": ts(self.ended_at) if self.end == "expired" else None,
            "cancelling_at": ts(self.cancel_at),
            "cancelled_at": ts(self.ended_at) if self.end == "cancelled" else None,
            "request_counts": counts,
            "metadata": self.metadata,
        }

    def anthropic_obj(self, base_url: str) -> dict[str, Any]:
        tl = self.timeline
        unfinished = self.n - self.answered
        ended = self.end is not None
        return {
            "id": self.id,
            "type": "message_batch",
            "processing_status": self.anthropic_status(),
            "request_counts": {
                "processing": 0 if ended else unfinished,
                "succeeded": self.succeeded,
                "errored": self.errored,
                "canceled": unfinished if self.end == "cancelled" else 0,
                "expired": unfinished if self.end == "expired" else 0,
            },
            "ended_at": _rfc3339(self.wall(self.ended_at)),
            "created_at": _rfc3339(self.wall0),
            "expires_at": _rfc3339(self.wall(tl.deadline) if not math.isinf(tl.deadline) else None),
            "cancel_initiated_at": _rfc3339(self.wall(self.cancel_at)),
            "archived_at": None,
            "results_url": f"{base_url}/v1/messages/batches/{self.id}/results" if ended else None,
        }


class BatchStore:
    """Every file and batch of one simulator, both providers; advanced lazily on reads."""

    def __init__(
        self,
        config: SimulatorConfig,
        counters: Counters,
        answer: Answer,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.counters = counters
        self.answer = answer
        self.clock = clock
        self.rng = random.Random(config.seed)
        self.files: dict[str, StoredFile] = {}
        self.batches: dict[str, SimBatch] = {}  # both providers, in creation order

    # -- files -----------------------------------------------------------------------------

    def add_file(self, filename: str, purpose: str, data: bytes) -> StoredFile:
        f = StoredFile(new_id("file-"), filename, purpose, data, int(time.time()))
        self.files[f.id] = f
        return f

    def delete_file(self, file_id: str) -> bool:
        return self.files.pop(file_id, None) is not None

    # -- creation --------------------------------------------------------------------------

    def _timeline(self, now: float, n: int, provider: Provider) -> Timeline:
        c = self.config
        s = c.batch_seconds
        delay = 0.0
        if c.batch_delay_median > 0:
            delay = c.batch_delay_median * math.exp(self.rng.gauss(0.0, c.batch_delay_sigma))
        if provider == "openai":
            start, span = now + _VALIDATE_SHARE * s, (1 - _VALIDATE_SHARE - _FINALIZE_SHARE) * s
        else:
            start, span = now, (1 - _ANTHROPIC_END_SHARE) * s
        span += delay
        deadline = now + c.expire_seconds
        cap = n
        if c.batch_stall_rate and self.rng.random() < c.batch_stall_rate:
            span = math.inf
        elif c.batch_expire_after is not None:
            cap = int(n * c.batch_expire_after)
            # The window closes just after the last line that may finish has finished.
            closes = start + span * (cap / n if n else 0.0) + 0.01 * s
            deadline = min(deadline, closes)
        return Timeline(now, start, span, n, cap, deadline)

    def create_openai(
        self,
        input_file_id: str,
        endpoint: str,
        metadata: dict[str, Any] | None,
        kind: str,
        items: list[Item],
        errors: list[dict[str, Any]] | None,
    ) -> SimBatch:
        now = self.clock()
        s = self.config.batch_seconds
        batch = SimBatch(
            "openai",
            new_id("batch_"),
            kind,
            items,
            self._timeline(now, len(items), "openai"),
            time.time(),
            endpoint=endpoint,
            input_file_id=input_file_id,
            metadata=metadata,
            errors=errors,
            finalize=_FINALIZE_SHARE * s,
            stop_grace=_FINALIZE_SHARE * s,
        )
        self._register(batch)
        return batch

    def create_anthropic(self, items: list[Item]) -> SimBatch:
        now = self.clock()
        s = self.config.batch_seconds
        batch = SimBatch(
            "anthropic",
            new_id("msgbatch_"),
            "messages",
            items,
            self._timeline(now, len(items), "anthropic"),
            time.time(),
            finalize=_ANTHROPIC_END_SHARE * s,
            stop_grace=_FINALIZE_SHARE * s,
        )
        self._register(batch)
        return batch

    def _register(self, batch: SimBatch) -> None:
        self.batches[batch.id] = batch
        self.counters.batches_created += 1
        self.counters.batch_lines += batch.n

    async def get(self, batch_id: str, provider: Provider) -> SimBatch | None:
        batch = self.batches.get(batch_id)
        if batch is None or batch.provider != provider:
            return None
        await self.refresh(batch)
        return batch

    async def listing(self, provider: Provider) -> list[SimBatch]:
        """This provider's batches, newest first, each brought up to now."""
        found = [b for b in reversed(self.batches.values()) if b.provider == provider]
        for b in found:
            await self.refresh(b)
        return found

    async def cancel(self, batch: SimBatch) -> bool:
        """Start cancelling; False if the batch can no longer be cancelled."""
        await self.refresh(batch)
        now = self.clock()
        if not batch.cancellable():
            return False
        if batch.provider == "openai" and batch.answered == batch.n and now >= batch.timeline.start:
            return False  # finalizing: too late to cancel
        batch.cancel_at = now
        self.counters.batches_cancelled += 1
        return True

    # -- the state machine -----------------------------------------------------------------

    async def refresh(self, batch: SimBatch) -> None:
        """`advance` in slices, letting other requests in between: answering 50,000 lines
        at once would hold the event loop for seconds."""
        async with batch.lock:
            while True:
                if self.advance(batch, _LINES_PER_SLICE):
                    return
                await asyncio.sleep(0)

    def advance(self, batch: SimBatch, most: int | None = None) -> bool:
        """Bring `batch` up to the clock: answer the lines due (at most `most` of them),
        then end it if it is time. False if lines due are left for another call."""
        if batch.end is not None:
            return True
        now = self.clock()
        tl = batch.timeline
        if batch.errors is not None:
            if now >= tl.start:
                self._finish(batch, "failed", tl.start)
            return True
        due = tl.due(now, batch.cancel_at)
        upto = due if most is None else min(due, batch.answered + most)
        self._answer_lines(batch, upto)
        if upto < due:
            return False
        ending = tl.ending(now, batch.answered, batch.cancel_at, batch.stop_grace, batch.finalize)
        if ending is not None:
            self._finish(batch, *ending)
        return True

    def _answer_lines(self, batch: SimBatch, upto: int) -> None:
        items = batch.items
        if items is None or upto <= batch.answered:
            return
        rate = self.config.batch_error_rate
        for i in range(batch.answered, upto):
            custom_id, raw = items[i]
            body = orjson.loads(raw)
            problem = _line_problem(batch.dialect, body)
            if problem is not None:
                status, payload = batch.dialect.bad_request(problem)
                body_bytes, rid = orjson.dumps(payload), "req_" + secrets.token_hex(8)
            elif rate and self.rng.random() < rate:
                status, rid = 500, "req_" + secrets.token_hex(8)
                body_bytes = orjson.dumps(_line_failure(batch.provider))
            else:
                status, body_bytes, _rid = self.answer(batch.kind, batch.dialect, body)
                rid = "req_" + batch.line_id()[10:]  # unique per line, as real ids are
            ok = status == 200
            if ok:
                batch.succeeded += 1
            else:
                batch.errored += 1
            if batch.provider == "openai":
                line = {
                    "id": batch.line_id(),
                    "custom_id": custom_id,
                    "response": {
                        "status_code": status,
                        "request_id": rid,
                        "body": orjson.Fragment(body_bytes),
                    },
                    "error": None,
                }
                (batch.ok_lines if ok else batch.err_lines).append(dumps(line))
            else:
                if ok:
                    result: dict[str, Any] = {
                        "type": "succeeded",
                        "message": orjson.Fragment(body_bytes),
                    }
                else:
                    result = {"type": "errored", "error": orjson.Fragment(body_bytes)}
                batch.ok_lines.append(dumps({"custom_id": custom_id, "result": result}))
        self.counters.batch_lines_answered += upto - batch.answered
        batch.answered = upto

    def _finish(self, batch: SimBatch, end: EndState, at: float) -> None:
        batch.end = end
        batch.ended_at = at
        items = batch.items or []
        rest = items[batch.answered :]
        batch.unfinished = len(rest) if end != "failed" else 0
        if end == "expired":
            self.counters.batches_expired += 1
        elif end == "failed":
            self.counters.batches_failed += 1
        if batch.provider == "openai":
            if end in ("expired", "cancelled"):
                code, message = (
                    (
                        "batch_expired",
                        "This request could not be executed before the completion window expired.",
                    )
                    if end == "expired"
                    else (
                        "batch_cancelled",
                        "The batch was cancelled before this request was executed.",
                    )
                )
                for custom_id, _ in rest:
                    batch.err_lines.append(
                        dumps(
                            {
                                "id": batch.line_id(),
                                "custom_id": custom_id,
                                "response": None,
                                "error": {"code": code, "message": message},
                            }
                        )
                    )
            if batch.ok_lines:
                f = self.add_file(
                    f"{batch.id}_output.jsonl", "batch_output", _jsonl(batch.ok_lines)
                )
                batch.output_file_id = f.id
            if batch.err_lines:
                f = self.add_file(
                    f"{batch.id}_error.jsonl", "batch_output", _jsonl(batch.err_lines)
                )
                batch.error_file_id = f.id
        else:
            kind = "expired" if end == "expired" else "canceled"
            for custom_id, _ in rest:
                batch.ok_lines.append(dumps({"custom_id": custom_id, "result": {"type": kind}}))
            # The real API promises no order; a client that relies on one breaks here.
            self.rng.shuffle(batch.ok_lines)
            batch.results = _jsonl(batch.ok_lines)
        batch.ok_lines = []
        batch.err_lines = []
        batch.items = None  # the input is no longer needed


def _line_problem(dialect: Dialect, body: dict[str, Any]) -> str | None:
    """Why one line is answered 400 although its batch was accepted: what the realtime
    route refuses, and `max_tokens` below 1 (not allowed in a batch)."""
    max_tokens = body.get("max_tokens")
    if isinstance(max_tokens, int) and max_tokens < 1:
        return f"max_tokens: must be at least 1, got {max_tokens}"
    return dialect.invalid(body)


def _line_failure(provider: Provider) -> dict[str, Any]:
    if provider == "openai":
        return OPENAI.error("server_error", "The server had an error processing your request.")
    return ANTHROPIC.error("api_error", "Internal server error")


def _jsonl(lines: list[bytes]) -> bytes:
    return b"\n".join(lines) + b"\n" if lines else b""
