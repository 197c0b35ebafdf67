"""`RunConfig`: everything a run is told, one field per `llmbatch run` flag.

    config = RunConfig(input="in.jsonl", output="out.jsonl", model="gpt-4o-mini", rpm=500)
    config = RunConfig(requests=[BatchRequest("q1", CompletionRequest(prompt="Hi"))],
                       output="out.jsonl", base_url="http://127.0.0.1:8080/v1", model="m")
    summary = llmbatch.run(config)

Each field is the flag's name with underscores (`--batch-max-requests` is
`batch_max_requests`) and has the flag's default, so a command line and a `RunConfig` say
the same thing. Beyond the flags, Python can pass the requests themselves (a list, or a
function returning a fresh iterable each call: the input is read twice, once to check it
and once to send it), `rows` as a table object (a `pyarrow.Table`, `datasets.Dataset` or
pandas `DataFrame`), a client object, and listeners that hear the run's events.

Values are checked when the config is made: a bad one raises `ConfigError` naming its field.
API keys are never fields: they come from the environment (`api_key_env`), as in the CLI.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from ..batch_api.runner import DEFAULT_POLL_INTERVAL
from ..breaker import DEFAULT_MAX_OUTAGE
from ..clients.provider import ProviderClient
from ..deadline import Prefer, parse_deadline
from ..engine import DEFAULT_CONCURRENCY, Concurrency
from ..replies import DEFAULT_MAX_INVALID_RETRIES
from ..schema import SCHEMA_MODES, Schema, SchemaMode
from ..tiers import SERVICE_TIERS
from ..types import BatchRequest
from .errors import ConfigError

__all__ = ["DEFAULT_REQUEST_TIMEOUT", "RequestsArg", "RunConfig"]

DEFAULT_REQUEST_TIMEOUT = 600.0

# Requests from Python: a collection read again for each pass, or a function giving them.
RequestsArg = Sequence[BatchRequest] | Callable[[], Iterable[BatchRequest]]


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """A run, as `llmbatch run`'s flags describe it. See the CLI's `--help` for each."""

    # -- what to read and where to write
    input: str | None = None
    output: str = ""
    requests: RequestsArg | None = None  # Python only: instead of `input`/`template`
    # -- provider
    provider: str = "openai"
    base_url: str | None = None
    model: str | None = None
    api_key_env: str | None = None
    client: ProviderClient | None = None  # Python only: instead of building one
    # -- pace and limits
    concurrency: Concurrency = DEFAULT_CONCURRENCY
    rpm: float | None = None
    tpm: float | None = None
    itpm: float | None = None
    otpm: float | None = None
    max_outage: float = DEFAULT_MAX_OUTAGE
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT
    timeout: float | None = None
    max_retries: int = 5
    max_input_tokens: int | None = None
    # "flex" | "default" | "priority" | "auto" (flex, then standard for what flex refuses)
    service_tier: str | None = None
    # the OpenAI route of simple lines and template requests: "chat" (/v1/chat/completions)
    # or "responses" (/v1/responses); a batch line's `url` names its own
    endpoint: Literal["chat", "responses"] = "chat"
    # -- templates
    template: str | None = None
    files: str | None = None
    # a CSV, JSONL, Parquet (file or folder), Arrow IPC/Feather or Hugging Face dataset folder;
    # from Python also a pyarrow.Table, a datasets.Dataset or a pandas.DataFrame
    rows: str | os.PathLike[str] | object | None = None
    id_field: str = "id"
    system: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    json: bool = False
    missing_field: Literal["error", "empty"] = "error"
    # -- output and bookkeeping
    resume: bool = True
    retry_failed: bool = False
    on_bad_line: Literal["fail", "skip"] = "fail"
    cache: str | None = None
    prompt_cache: Literal["auto", "off"] = "auto"  # see `llmbatch.pipeline.prompt_cache`
    error_log: str | None = None
    prompt_section: str = ""
    stats_json: str | None = None
    no_progress: bool = False  # for displays (the CLI's bar); the library never draws
    # -- structured output
    # a file; from Python also a JSON Schema dict, a `Schema` or a pydantic model class
    schema: str | Mapping[str, Any] | Schema | type[Any] | None = None
    schema_mode: SchemaMode = "native"
    max_invalid_retries: int = DEFAULT_MAX_INVALID_RETRIES
    max_tokens_on_truncation: int | None = None
    # -- Ray
    ray: bool = False
    ray_address: str | None = None
    workers: int = 2
    # -- observability
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    watch: int | None = None  # a port for the live page on 127.0.0.1 (0: any free port)
    report: str | None = None
    # -- cost
    max_cost: float | None = None
    price_in: float | None = None
    price_out: float | None = None
    price_cached_in: float | None = None
    # -- provider batch API
    batch_api: bool = False
    batch_max_requests: int | None = None
    batch_max_tokens: int | None = None
    batch_enqueued_tokens: int | None = None
    poll_interval: float = DEFAULT_POLL_INTERVAL
    keep_files: bool = False
    expired: Literal["fail", "realtime"] = "fail"
    # -- deadline: a time.time() value, a datetime, a timedelta from now, or text ("6h")
    finish_by: float | datetime | timedelta | str | None = None
    prefer: Prefer = "cost"
    # -- Python only: callables that hear the run's events (`llmbatch.run.events`)
    listeners: Sequence[Callable[[Any], None]] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        for name in ("rpm", "tpm", "itpm", "otpm", "timeout", "poll_interval"):
            _positive(name, getattr(self, name))
        _positive("request_timeout", self.request_timeout)
        for name in ("max_input_tokens", "max_tokens", "max_tokens_on_truncation"):
            _positive(name, getattr(self, name), integer=True)
        for name in ("batch_max_requests", "batch_max_tokens", "batch_enqueued_tokens", "workers"):
            _positive(name, getattr(self, name), integer=True)
        for name in ("max_outage", "max_cost", "price_in", "price_out", "price_cached_in"):
            _non_negative(name, getattr(self, name))
        for name in ("max_retries", "max_invalid_retries"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(name, f"`{name}` must be an integer >= 0, got {value!r}")
        if self.concurrency != "auto":
            _positive("concurrency", self.concurrency, integer=True)
        for name in ("metrics_port", "watch"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535
            ):
                raise ConfigError(name, f"`{name}` must be between 0 and 65535, got {value!r}")
        if self.rows is not None and not isinstance(self.rows, str | os.PathLike):
            from ..io.tables import is_table

            if not is_table(self.rows):
                from .rows import not_a_table

                raise ConfigError("rows", not_a_table(self.rows))
        _choice("missing_field", self.missing_field, ("error", "empty"))
        _choice("on_bad_line", self.on_bad_line, ("fail", "skip"))
        _choice("expired", self.expired, ("fail", "realtime"))
        _choice("prefer", self.prefer, ("cost", "speed"))
        _choice("prompt_cache", self.prompt_cache, ("auto", "off"))
        _choice("schema_mode", self.schema_mode, SCHEMA_MODES)
        _choice("endpoint", self.endpoint, ("chat", "responses"))
        if self.service_tier is not None:
            _choice("service_tier", self.service_tier, SERVICE_TIERS)
        if self.finish_by is not None and not isinstance(self.finish_by, float | int):
            # Fixed once, when the config is made: a duration counts from now.
            object.__setattr__(self, "finish_by", _deadline(self.finish_by))
        if self.finish_by is not None and not self.batch_api:
            object.__setattr__(self, "batch_api", True)  # a deadline mixes batch and realtime

    @property
    def deadline(self) -> float | None:
        """`finish_by` as a `time.time()` value."""
        return None if self.finish_by is None else float(self.finish_by)  # type: ignore[arg-type]

    def replace(self, **changes: Any) -> RunConfig:
        """A copy with `changes` (checked again)."""
        return dataclasses.replace(self, **changes)


def _deadline(value: datetime | timedelta | str) -> float:
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, timedelta):
        return time.time() + value.total_seconds()
    try:
        return parse_deadline(value, now=time.time())
    except ValueError as exc:
        raise ConfigError("finish_by", f"`finish_by`: {exc}") from None


def _positive(name: str, value: Any, *, integer: bool = False) -> None:
    if value is None:
        return
    kind = "integer" if integer else "number"
    if isinstance(value, bool) or not isinstance(value, int if integer else int | float):
        raise ConfigError(name, f"`{name}` must be a positive {kind}, got {value!r}")
    # nan passes `<= 0` and inf has no use: both broke timers far from the setting.
    if not value > 0 or value == math.inf:
        raise ConfigError(name, f"`{name}` must be a positive {kind}, got {value!r}")


def _non_negative(name: str, value: Any) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(name, f"`{name}` must be a number >= 0, got {value!r}")
    if not value >= 0 or value == math.inf:
        raise ConfigError(name, f"`{name}` must be a number >= 0, got {value!r}")


def _choice(name: str, value: object, choices: Iterable[str]) -> None:
    options = tuple(choices)
    if value not in options:
        raise ConfigError(name, f"`{name}` must be one of {', '.join(options)}, got {value!r}")
