"""The values that flow through a batch: requests, responses, results and progress.

    req = BatchRequest("a.py", CompletionRequest(prompt="Summarize: ...", max_tokens=400))
    result = processor.process_batch([req])[0]   # BatchResult(id="a.py", response=..., ...)

All are slotted dataclasses: the hot path creates one of each per request, so they stay small
and free of validation frameworks.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from .durations import format_duration
from .schema import Schema
from .text import DEFAULT_CHARS_PER_TOKEN, text_length

__all__ = [
    "BatchProgress",
    "BatchRequest",
    "BatchResult",
    "CompletionRequest",
    "CompletionResponse",
    "Message",
    "PromptSection",
    "RateLimitInfo",
    "ResponseFormat",
    "Timing",
    "Usage",
]

ResponseFormat = Literal["text", "json"]
Message = Mapping[str, Any]
# Output caps a request body may set instead of `max_tokens`: OpenAI's chat name for reasoning
# models, and the Responses API's. Sent as they are (in `extra`); they bound the output too.
OUTPUT_LIMIT_FIELDS = ("max_completion_tokens", "max_output_tokens")


class PromptSection(enum.StrEnum):
    """Label recorded with every error-log line; any other string is accepted too."""

    FILE_SUMMARY = "file_summary"
    CHUNK_SUMMARY = "chunk_summary"
    DOMAIN_CLASSIFICATION = "domain_classification"

    def __str__(self) -> str:
        return self.value


@dataclass(slots=True)
class CompletionRequest:
    """One call to a model: a prompt or a list of chat messages.

        CompletionRequest(prompt="Classify: ...", temperature=0.0, max_tokens=150,
                          response_format="json")

    `extra` is merged into the provider's request body as is (e.g. `{"top_p": 0.9}`).
    `endpoint` selects the route for OpenAI-compatible servers: "chat", "responses" (OpenAI's
    Responses API: `system` is sent as `instructions`, `messages` and `prompt` as `input`),
    "completions" or "embeddings" (for embeddings, `prompt` is the input text).
    `schema` (a `llmbatch.Schema`, or a pydantic model class or JSON Schema dict made into
    one; chat and responses only) is the shape the reply must have: sent the provider's
    native way (or in the system prompt), every reply validated against it, `result.parsed`
    the decoded reply.
    """

    prompt: str = ""
    temperature: float | None = None
    max_tokens: int | None = None
    response_format: ResponseFormat = "text"
    model: str | None = None
    messages: Sequence[Message] | None = None
    system: str | None = None
    extra: Mapping[str, Any] | None = None
    endpoint: Literal["chat", "responses", "completions", "embeddings"] = "chat"
    schema: Schema | None = None

    def __post_init__(self) -> None:
        if self.schema is not None and not isinstance(self.schema, Schema):
            # A pydantic model class or a JSON Schema dict (a model class: once per class).
            self.schema = Schema.of(self.schema)

    def text_length(self) -> int:
        """Characters of input text, the basis of the token estimate (`llmbatch.text`); a
        schema is sent too (as a response format, a tool or in the system prompt)."""
        chars = text_length(self.messages, system=self.system, prompt=self.prompt)
        if self.extra and isinstance(listed := self.extra.get("input"), list):
            chars += _listed_length(listed)  # embeddings of several inputs
        return chars + (self.schema.text_length() if self.schema is not None else 0)

    def output_limit(self) -> int | None:
        """The most output tokens this request can be answered with: `max_tokens` or a body's
        `max_completion_tokens` / `max_output_tokens` (the largest, where several are set);
        0 for embeddings, which have no output; None when nothing bounds it."""
        if self.endpoint == "embeddings":
            return 0
        if not self.extra:  # the common case, on the hot path of every admission
            cap = self.max_tokens
            if type(cap) is int:
                return cap if cap > 0 else None
            return int(cap) if cap is not None and _is_count(cap) else None
        limits: list[Any] = [self.max_tokens]
        if self.extra:
            limits += [self.extra.get(name) for name in OUTPUT_LIMIT_FIELDS]
        found = [int(v) for v in limits if _is_count(v)]
        return max(found) if found else None


CONVERSATIONAL_ENDPOINTS = frozenset({"chat", "responses"})


def conversational(request: CompletionRequest) -> bool:
    """True for a conversation (chat or responses): it may carry a schema, be re-asked and
    share a cached prefix; completions and embeddings may not."""
    return request.endpoint in CONVERSATIONAL_ENDPOINTS


def _listed_length(inputs: list[Any]) -> int:
    """Characters of an embeddings `input` list: its strings, and a token id as the
    characters of one token (`DEFAULT_CHARS_PER_TOKEN`), so the estimate counts it once."""
    chars = 0
    for element in inputs:
        if isinstance(element, str):
            chars += len(element)
        elif isinstance(element, list):
            chars += _listed_length(element)
        else:
            chars += math.ceil(DEFAULT_CHARS_PER_TOKEN)
    return chars


def _is_count(value: Any) -> bool:
    """A positive whole number (JSON may write one as 20000.0)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return value > 0 and float(value).is_integer()


@dataclass(slots=True, frozen=True)
class Usage:
    """Tokens the provider says it used.

    `prompt_tokens` counts every input token; `cached_tokens` of them were read from the
    provider's prompt cache (billed lower) and `cache_write_tokens` were written to it
    (Anthropic bills those higher); `cache_write_1h_tokens` of the writes went to Anthropic's
    1-hour cache (billed at twice the input price, where a 5-minute write is 1.25 times).
    """

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    cache_write_1h_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(slots=True, frozen=True)
class RateLimitInfo:
    """What a provider's rate-limit headers said; `None` where a header was absent.

    Reset values are seconds from the moment the response was received.
    """

    limit_requests: int | None = None
    remaining_requests: int | None = None
    reset_requests: float | None = None
    limit_tokens: int | None = None
    remaining_tokens: int | None = None
    reset_tokens: float | None = None
    # Anthropic limits input and output tokens per minute apart.
    limit_input_tokens: int | None = None
    remaining_input_tokens: int | None = None
    limit_output_tokens: int | None = None
    remaining_output_tokens: int | None = None


@dataclass(slots=True)
class CompletionResponse:
    """A model's answer. `raw` is the provider's decoded body, kept for the output file.

    `refusal` is set when the model declined (OpenAI's `message.refusal` text; for
    Anthropic's `stop_reason: "refusal"`, whatever text came with it).
    """

    content: str
    model: str = ""
    usage: Usage = field(default_factory=Usage)
    request_id: str | None = None
    finish_reason: str | None = None
    raw: Any = None
    status_code: int = 200
    rate_limit: RateLimitInfo | None = None
    cached: bool = False
    # Answered through a provider's batch API (billed at the batch price), not realtime.
    batch_api: bool = False
    refusal: str | None = None

    @property
    def tokens_used(self) -> int:
        """The seed's `TokensUsed`."""
        return self.usage.total_tokens


@dataclass(slots=True)
class BatchRequest:
    """A request with the caller's id, which comes back on its result."""

    id: str
    request: CompletionRequest


Outcome = int | str  # an attempt's HTTP status, or an error code when there was none


@dataclass(slots=True, frozen=True)
class Timing:
    """Where a request's time went, in seconds (see `BatchResult.timing`).

    `started_at`/`finished_at` are wall-clock (Unix) times of the request's start and final
    outcome. `wait` is the time spent waiting for admission (rate limiter, outage breaker,
    concurrency gate), `provider` the time inside provider calls and `backoff` the sleeps
    between retries, each summed over attempts. `attempts` holds one `(wait, provider,
    outcome)` per call: the outcome is the HTTP status (200, 429, ...) or, without one, the
    error code ("timeout", "connection", "cancelled", ...).
    """

    started_at: float = 0.0
    finished_at: float = 0.0
    wait: float = 0.0
    provider: float = 0.0
    backoff: float = 0.0
    attempts: tuple[tuple[float, float, Outcome], ...] = ()


# The slots' own setters: a frozen dataclass's `__init__` goes through `object.__setattr__`
# once per field, twice as slow, and the engine makes one `Timing` per request.
_TIMING_SETTERS = tuple(
    Timing.__dict__[name].__set__
    for name in ("started_at", "finished_at", "wait", "provider", "backoff", "attempts")
)


def make_timing(
    started_at: float,
    finished_at: float,
    wait: float,
    provider: float,
    backoff: float,
    attempts: tuple[tuple[float, float, Outcome], ...],
) -> Timing:
    """`Timing(...)` for the engine's hot path: the same frozen object, built faster."""
    timing: Timing = object.__new__(Timing)
    s0, s1, s2, s3, s4, s5 = _TIMING_SETTERS
    s0(timing, started_at)
    s1(timing, finished_at)
    s2(timing, wait)
    s3(timing, provider)
    s4(timing, backoff)
    s5(timing, attempts)
    return timing


@dataclass(slots=True)
class BatchResult:
    """The outcome of one request: exactly one of `response` and `error` is set.

    `duration` is seconds from first admission to the final outcome, retries included;
    `attempts` counts calls made to the client (0 if the request never started).
    `cost` is in USD, set where prices are known; `parsed` is the reply decoded and validated
    against the request's schema, when it had one. `timing` says where the time went
    (admission wait, provider calls, backoff), when the engine ran the request.
    `cache_saved` is what the provider's prompt cache saved on it (USD, where priced).
    `maybe_billed` counts the attempts sent whose reply was never read (`errors.may_be_billed`:
    our timeout, an unreadable reply): the server may have billed them, so `cost` includes
    each at its worst case. `paid_replies`: the replies that were no answer (off-schema,
    refused, cut off: re-asked, retried, or the last of a failed request), each paid for and
    counted in `cost`. `refused`: the admission error (a `BudgetExceededError`) that
    refused the retry of a request whose attempts may have been billed; it then ends with its
    last attempt's error, not as unfinished, so its line keeps that cost.
    """

    id: str
    response: CompletionResponse | None = None
    error: BaseException | None = None
    duration: float = 0.0
    attempts: int = 0
    index: int = -1
    cost: float | None = None
    parsed: Any = None
    timing: Timing | None = None
    maybe_billed: int = 0
    paid_replies: tuple[CompletionResponse, ...] = ()
    refused: BaseException | None = None
    # USD the answer cost less thanks to the provider's prompt cache (negative: a cache
    # write cost more than it saved), set where prices are known.
    cache_saved: float | None = None
    # The price list that priced a flex or priority answer (`Pricer.price_list`): "flex" or
    # "batch", "priority" or "standard"; None for the others (their lane says it).
    price_list: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(slots=True, frozen=True)
class BatchProgress:
    """A snapshot of a batch, passed to progress callbacks.

        str(progress)  # 'Progress: 40/100 (40.0%) | Failed: 2 | Elapsed: 3s | ETA: 5s'

    `total` is None when the source's length is unknown (a generator).
    """

    total: int | None
    completed: int
    failed: int
    elapsed_time: float
    estimated_time_remaining: float | None

    @property
    def percent(self) -> float | None:
        if not self.total:
            return None
        return 100.0 * self.completed / self.total

    @property
    def rate(self) -> float:
        """Completed requests per second so far."""
        return self.completed / self.elapsed_time if self.elapsed_time > 0 else 0.0

    def __str__(self) -> str:
        if self.total is None:
            head = f"Progress: {self.completed}"
        else:
            head = f"Progress: {self.completed}/{self.total} ({self.percent or 0.0:.1f}%)"
        eta = (
            "?"
            if self.estimated_time_remaining is None
            else format_duration(self.estimated_time_remaining)
        )
        return (
            f"{head} | Failed: {self.failed} | Elapsed: {format_duration(self.elapsed_time)}"
            f" | ETA: {eta}"
        )
