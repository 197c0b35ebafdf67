"""What the simulated server does: latency, limits, the limit style, faults and outages.

    SimulatorConfig(latency_ms=50, rpm=1200, limit_style="retry-after")
    SimulatorConfig(limit_style="queue", slots=2, latency_ms=200)

A config is checked when it is built (`ValueError` names the field), so the CLI and the
library refuse the same nonsense. Limits are per minute and policed per second, as providers
do (see `limits.py`); how a refusal is told to the client is the style's job (`styles.py`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

__all__ = ["LIMIT_STYLES", "OVER_LIMIT_STATUSES", "LimitStyleName", "SimulatorConfig"]

LimitStyleName = Literal["openai", "anthropic", "retry-after", "bare", "queue"]
LIMIT_STYLES: tuple[LimitStyleName, ...] = get_args(LimitStyleName)
# 429 is the standard; 503 is what vLLM, Ollama and many gateways answer when full, 529 is
# Anthropic's "overloaded". A limiter must treat all three as "slow down".
OVER_LIMIT_STATUSES = (429, 503, 529)


@dataclass(slots=True)
class SimulatorConfig:
    """Every knob of the simulator; the defaults are a fast, unlimited, well-behaved server.

    Limits: `rpm` (requests), `tpm` (prompt + max_tokens), `itpm` (prompt tokens) and `otpm`
    (output tokens, charged from `max_tokens` at admission and settled with the real output
    when the reply is sent, as Anthropic does). `limit_style` says how limits are told:
    `openai` (the route's native headers on every reply, `retry-after` and `retry-after-ms`
    on refusals), `anthropic` (`anthropic-ratelimit-*` with split input/output tokens and
    `retry-after`, on every route), `retry-after` (only that header, on refusals), `bare`
    (no header at all), or `queue` (no limits: `slots` requests are served at a time, each
    for `latency_ms`, first come first served; a request whose client has gone when its
    turn comes is skipped and counted `abandoned`, as vLLM does, where llama.cpp may still
    generate it). `over_limit_status` is the status of a refusal (429, or 503/529
    "overloaded"); the style's headers go with it whatever the status.

    Faults, each an independent probability: `fail_rate` (500, or 529 on /v1/messages),
    `overload_rate` (503 on OpenAI routes, 529 on /v1/messages, before any limit is
    charged), `reset_rate`, `hang_rate` (no answer for `hang_seconds`), `malformed_rate`.
    Structured-output faults (`structured.py`, drawn per request body): `invalid_rate`
    (replies that parse but break the requested schema), `refusal_rate`, `truncate_rate`.
    `phantom_share`/`phantom_every`: a key shared with another client, which takes that share
    of every limit in one burst every `phantom_every` seconds (see `limits.py`).
    `outage_at`/`outage_for`: `outage_at` seconds after the first request (counted again
    after a stats reset) the server goes down for `outage_for` seconds.

    Misbehaving servers: `echo_credentials=N` answers every request 401 with a body that
    echoes the credentials it received (the Authorization or x-api-key value, as the HTTP
    parser gave it: trailing whitespace gone) without their first N characters, as some
    gateways do. `reject_json_schema` answers requests asking for `response_format:
    json_schema` with HTTP 500 "Input should be 'text' or 'json_object'", as llama.cpp's
    server (llama-cpp-python 0.3) does.

    Service tiers (`tiers.py`): a request with `service_tier: "flex"` is answered
    `flex_latency_factor` times slower and refused at `flex_refusal_rate` (status
    `flex_refusal_status`: 429 "Resource Unavailable" as OpenAI, or 498 as Groq).
    Prompt caches (`prompt_cache.py`, on unless `prompt_cache=False`): OpenAI's automatic
    cache over `cache_machines` machines of `cache_machine_tokens` tokens each, routed by
    prefix and `prompt_cache_key`, spilling above `cache_spill_rpm` requests a minute per
    route, entries living `cache_ttl` seconds; Anthropic's `cache_control` breakpoints.

    Batch APIs (`batches.py`): a batch takes about `batch_seconds` (+ a lognormal delay of
    median `batch_delay_median`, spread `batch_delay_sigma`), its window is
    `batch_expire_seconds`; `batch_error_rate` (lines answered 500 / errored),
    `batch_expire_after` (expire once this fraction of lines is done),
    `batch_fail_validation` (every OpenAI batch fails validation, every Anthropic create is
    refused), `batch_stall_rate` (batches that finish nothing); `batch_max_requests` and
    `batch_max_bytes` lower the providers' caps; `batch_enqueued_tokens` is OpenAI's
    enqueued-token limit per model (a batch created over it fails, `enqueued.py`). Faults of
    single calls, to test that a client never pays twice nor guesses: `batch_lose_create` N
    carries out the N-th batch create (1-based, both providers counted) but answers it 529
    overloaded (Anthropic) / 500 (OpenAI), as if the answer were lost on the way;
    `batch_refuse_create` N answers the N-th create the same way without creating anything;
    `batch_list_status` (e.g. 403, a key without list permission) answers every listing of
    batches and files with it.
    """

    host: str = "127.0.0.1"
    port: int = 0
    latency_ms: float = 0.0
    latency_jitter_ms: float = 0.0
    rpm: int | None = None
    tpm: int | None = None
    itpm: int | None = None
    otpm: int | None = None
    limit_style: LimitStyleName = "openai"
    over_limit_status: int = 429
    slots: int = 1
    fail_rate: float = 0.0
    overload_rate: float = 0.0
    reset_rate: float = 0.0
    hang_rate: float = 0.0
    malformed_rate: float = 0.0
    phantom_share: float = 0.0
    phantom_every: float = 5.0
    outage_at: float | None = None
    outage_for: float = 0.0
    seed: int | None = None
    api_key: str | None = None  # when set, requests must carry it
    hang_seconds: float = 120.0
    model: str = "sim-1"
    # Batch APIs (see `batches.py`): the time scale, the window and the faults.
    batch_seconds: float = 2.0
    batch_expire_seconds: float | None = None  # the "24h" window; None: 5 x batch_seconds
    batch_error_rate: float = 0.0
    batch_expire_after: float | None = None
    batch_fail_validation: bool = False
    batch_stall_rate: float = 0.0
    batch_delay_median: float = 0.0
    batch_delay_sigma: float = 1.0
    batch_max_requests: int | None = None  # None: the providers' caps (50,000 / 100,000)
    batch_max_bytes: int | None = None  # None: the providers' caps (200 MB / 256 MB)
    batch_enqueued_tokens: int | None = None  # OpenAI's limit per model (`enqueued.py`)
    batch_lose_create: int | None = None
    batch_refuse_create: int | None = None
    batch_list_status: int | None = None
    invalid_rate: float = 0.0
    refusal_rate: float = 0.0
    truncate_rate: float = 0.0
    echo_credentials: int | None = None
    reject_json_schema: bool = False
    # Service tiers (`tiers.py`): flex is slower, and refused at a rate (429 or Groq's 498).
    flex_refusal_rate: float = 0.0
    flex_refusal_status: int = 429
    flex_latency_factor: float = 3.0
    # The providers' prompt caches (`prompt_cache.py`): OpenAI's machines, their size, the
    # per-route rate above which requests spill to other machines, and the entries' TTL.
    prompt_cache: bool = True
    cache_machines: int = 8
    cache_machine_tokens: int = 1_000_000
    cache_spill_rpm: float = 15.0
    cache_ttl: float = 300.0

    def __post_init__(self) -> None:
        if self.limit_style not in LIMIT_STYLES:
            raise ValueError(f"limit_style must be one of {', '.join(LIMIT_STYLES)}")
        if self.over_limit_status not in OVER_LIMIT_STATUSES:
            raise ValueError(f"over_limit_status must be one of {OVER_LIMIT_STATUSES}")
        for name in ("rpm", "tpm", "itpm", "otpm"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        if self.limit_style == "queue" and self.has_limits:
            # A queueing server has no rate limits: it is slow instead of refusing.
            raise ValueError("limit_style 'queue' takes no rpm/tpm/itpm/otpm")
        if self.slots < 1:
            raise ValueError(f"slots must be at least 1, got {self.slots}")
        for name in (
            "fail_rate",
            "overload_rate",
            "reset_rate",
            "hang_rate",
            "malformed_rate",
            "invalid_rate",
            "refusal_rate",
            "truncate_rate",
            "flex_refusal_rate",
            "phantom_share",
        ):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {value}")
        if self.flex_refusal_status not in (429, 498):
            raise ValueError("flex_refusal_status must be 429 or 498")
        if not self.flex_latency_factor > 0:
            raise ValueError("flex_latency_factor must be positive")
        if self.phantom_every <= 0:
            raise ValueError(f"phantom_every must be positive, got {self.phantom_every}")
        if self.outage_at is not None and (self.outage_at < 0 or self.outage_for <= 0):
            raise ValueError("an outage needs outage_at >= 0 and outage_for > 0")
        if self.echo_credentials is not None and self.echo_credentials < 0:
            raise ValueError(f"echo_credentials must be >= 0, got {self.echo_credentials}")
        for name in ("cache_machines", "cache_machine_tokens", "cache_spill_rpm", "cache_ttl"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        self._check_batches()

    def _check_batches(self) -> None:
        if self.batch_seconds <= 0:
            raise ValueError(f"batch_seconds must be positive, got {self.batch_seconds}")
        if self.batch_expire_seconds is not None and self.batch_expire_seconds <= 0:
            raise ValueError("batch_expire_seconds must be positive")
        for name in ("batch_error_rate", "batch_stall_rate", "batch_expire_after"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {value}")
        if self.batch_delay_median < 0 or self.batch_delay_sigma < 0:
            raise ValueError("batch_delay_median and batch_delay_sigma must not be negative")
        if self.batch_list_status is not None and not 400 <= self.batch_list_status <= 599:
            raise ValueError(f"batch_list_status must be 400 to 599, got {self.batch_list_status}")
        for name in (
            "batch_max_requests",
            "batch_max_bytes",
            "batch_enqueued_tokens",
            "batch_lose_create",
            "batch_refuse_create",
        ):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")

    @property
    def expire_seconds(self) -> float:
        """The scaled completion window of a batch."""
        if self.batch_expire_seconds is not None:
            return self.batch_expire_seconds
        return 5.0 * self.batch_seconds

    @property
    def has_limits(self) -> bool:
        return any(v is not None for v in (self.rpm, self.tpm, self.itpm, self.otpm))
