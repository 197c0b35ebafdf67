"""The output line, typed: encoded and decoded here and nowhere else.

    data = ResultLine.of(result).encode()        # the bytes the journal appends, newline included
    line = ResultLine.decode(data)               # None if it is not a result line
    line.custom_id, line.ok, line.money, line.model, line.parsed

One line per final result, in the OpenAI Batch output format with an `llmbatch` block:

    {"id": "batch_req_...", "custom_id": "...", "response": {"status_code", "request_id",
     "body"}, "error": null | {"code", "message"}, "llmbatch": {"duration", "attempts",
     "cached", "usage", and where they apply "batch_api", "service_tier", "cost" (USD),
     "priced_as" (the price list of a flex or priority answer: "flex" or "batch",
     "priority" or "standard"),
     "extra_cost" (USD paid for lines of the id that compaction removed), "cache_saved"
     (USD the provider's prompt cache saved), "parsed", and the
     timing: "started_at", "finished_at" (Unix seconds), "wait", "provider", "backoff"
     (seconds) and "attempt_log": [[wait, provider, status or error code], ...]}}

Decoding is forgiving in one place, so readers never pick at nested dicts: a line that parses
as JSON but is no result line (no string `custom_id`, an `error` that is not an object, an
`llmbatch` block that is not one) is None; inside a result line, a statistic that is not a
number reads as absent (counts as 0), as a hand edit may leave it.

When an id has several lines (a failed one redone, a crash before compaction), the newest
line wins, everywhere: that rule lives in `llmbatch.io.finished` (`FinishedIds`).
"""

from __future__ import annotations

import uuid
from typing import Any

import orjson

from ..errorlog import redact
from ..errors import error_code
from ..tiers import lane_of, served_tier
from ..types import BatchResult, Timing

__all__ = ["ResultLine", "timing_fields", "with_money"]


class ResultLine:
    """One result line: its decoded JSON, read through typed properties. Built by `of` (a
    result) or `decode` (bytes); immutable by contract (nothing sets its fields). Fields are
    coerced when read, not when decoded: a reader that needs three fields of a 700-byte line
    (export: id, status, parsed reply) pays for three."""

    __slots__ = ("_meta", "_obj", "custom_id")

    def __init__(self, obj: dict[str, Any], meta: dict[str, Any]) -> None:
        # Callers are `of` and `from_json`, which checked the shape.
        self._obj = obj
        self._meta = meta
        self.custom_id: str = obj["custom_id"]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ResultLine) and self._obj == other._obj

    def __hash__(self) -> int:
        return hash(self.custom_id)

    def __repr__(self) -> str:
        return f"ResultLine({self._obj!r})"

    # -- what readers ask -----------------------------------------------------------------

    @property
    def ok(self) -> bool:
        return self._obj.get("error") is None

    @property
    def code(self) -> str | None:
        """None for an answer; the error code of a failure ("unknown" if it names none)."""
        err = self._obj.get("error")
        return None if err is None else str(err.get("code") or "unknown")

    @property
    def message(self) -> str:
        err = self._obj.get("error")
        return "" if err is None else str(err.get("message") or "")

    @property
    def response(self) -> dict[str, Any] | None:
        """{"status_code", "request_id", "body"}, if the line has a response."""
        response = self._obj.get("response")
        return response if isinstance(response, dict) else None

    @property
    def body(self) -> Any:
        """The provider's reply body (an object, or text), if the line has one."""
        response = self.response
        return None if response is None else response.get("body")

    @property
    def model(self) -> str:
        """The model that answered, as its body says (OpenAI and Anthropic bodies name it
        `model`, Gemini's `modelVersion`)."""
        body = self.body
        model = (body.get("model") or body.get("modelVersion")) if isinstance(body, dict) else None
        return model if isinstance(model, str) else ""

    @property
    def line_id(self) -> str:
        line_id = self._obj.get("id")
        return line_id if isinstance(line_id, str) else ""

    @property
    def duration(self) -> float:
        return _number(self._meta.get("duration")) or 0.0

    @property
    def attempts(self) -> int:
        return int(_number(self._meta.get("attempts")) or 0)

    @property
    def cached(self) -> bool:
        return bool(self._meta.get("cached", False))

    @property
    def batch_api(self) -> bool:
        return bool(self._meta.get("batch_api", False))

    @property
    def service_tier(self) -> str | None:
        """The service tier the reply says served it (flex, default, ...), if it said."""
        tier = self._meta.get("service_tier")
        return tier if isinstance(tier, str) else None

    @property
    def lane(self) -> str:
        """The lane that answered it (`llmbatch.tiers.lane_of`): batch, flex, standard, ..."""
        return lane_of(self.batch_api, self.service_tier)

    @property
    def priced_as(self) -> str | None:
        """The price list that priced a flex or priority answer ("flex" or "batch";
        "priority" or "standard"), if the line says."""
        found = self._meta.get("priced_as")
        return found if isinstance(found, str) else None

    def _usage(self, key: str) -> int | None:
        usage = self._meta.get("usage")
        if not isinstance(usage, dict):
            return None
        number = _number(usage.get(key))
        return None if number is None else int(number)

    @property
    def prompt_tokens(self) -> int | None:
        """None when the line has no usage (a failure)."""
        return self._usage("prompt_tokens")

    @property
    def completion_tokens(self) -> int | None:
        return self._usage("completion_tokens")

    @property
    def cached_tokens(self) -> int:
        return self._usage("cached_tokens") or 0

    @property
    def cache_write_tokens(self) -> int:
        return self._usage("cache_write_tokens") or 0

    @property
    def cache_write_1h_tokens(self) -> int:
        return self._usage("cache_write_1h_tokens") or 0

    @property
    def cost(self) -> float | None:
        return _number(self._meta.get("cost"))

    @property
    def cache_saved(self) -> float | None:
        """USD the provider's prompt cache saved on this answer (None: not priced)."""
        return _number(self._meta.get("cache_saved"))

    @property
    def extra_cost(self) -> float | None:
        return _number(self._meta.get("extra_cost"))

    @property
    def money(self) -> float | None:
        """USD the line stands for: its own `cost` plus `extra_cost`, what the lines compaction
        removed for its id had cost (superseded attempts, an answer bought twice)."""
        cost, extra = self.cost, self.extra_cost
        if extra is None:
            return cost
        return (cost or 0.0) + extra

    @property
    def parsed(self) -> Any:
        return self._meta.get("parsed")

    @property
    def started_at(self) -> float | None:
        return _number(self._meta.get("started_at"))

    @property
    def finished_at(self) -> float | None:
        return _number(self._meta.get("finished_at"))

    @property
    def wait(self) -> float | None:
        return _number(self._meta.get("wait"))

    @property
    def provider(self) -> float | None:
        return _number(self._meta.get("provider"))

    @property
    def backoff(self) -> float | None:
        return _number(self._meta.get("backoff"))

    @property
    def attempt_log(self) -> tuple[tuple[Any, ...], ...] | None:
        """(wait, provider, status or error code) per attempt; entries of another shape left
        out. None when the line has no timing."""
        log = self._meta.get("attempt_log")
        if not isinstance(log, list):
            return None
        return tuple(tuple(e) for e in log if isinstance(e, list) and len(e) >= 3)

    @property
    def timed(self) -> bool:
        """True if the line carries its admission wait and provider time (lines of older
        versions and of results made elsewhere do not)."""
        return self.wait is not None and self.provider is not None

    # -- encoding ---------------------------------------------------------------------------

    @classmethod
    def of(cls, result: BatchResult) -> ResultLine:
        """The line for one final result (error bodies and messages redacted)."""
        resp, err = result.response, result.error
        meta: dict[str, Any] = {
            "duration": round(result.duration, 6),
            "attempts": result.attempts,
            "cached": bool(resp is not None and resp.cached),
        }
        if err is None and resp is not None:
            body = resp.raw if resp.raw is not None else {"content": resp.content}
            response: dict[str, Any] | None = {
                "status_code": resp.status_code,
                "request_id": resp.request_id,
                "body": body,
            }
            usage = resp.usage
            meta["usage"] = {
                "prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens,
            }
            if usage.cached_tokens:
                meta["usage"]["cached_tokens"] = usage.cached_tokens
            if usage.cache_write_tokens:
                meta["usage"]["cache_write_tokens"] = usage.cache_write_tokens
            if usage.cache_write_1h_tokens:
                meta["usage"]["cache_write_1h_tokens"] = usage.cache_write_1h_tokens
            if resp.batch_api:
                meta["batch_api"] = True
            elif (tier := served_tier(resp)) is not None:
                meta["service_tier"] = tier  # the tier that served it (and priced it)
            if result.parsed is not None:
                meta["parsed"] = _plain(result.parsed)
            error = None
        else:
            status = getattr(err, "status_code", None)
            response = None
            if status is not None:
                # A ReplyError carries the reply: its line keeps the raw (or partial) body.
                body = _safe_body(getattr(err, "body", None))
                rid = getattr(err, "request_id", None)
                response = {"status_code": status, "request_id": rid, "body": body}
            error = {"code": error_code(err), "message": redact(f"{type(err).__name__}: {err}")}
        if result.cost is not None:
            meta["cost"] = round(result.cost, 10)
            if result.price_list is not None:
                meta["priced_as"] = result.price_list
        if result.cache_saved is not None:
            meta["cache_saved"] = round(result.cache_saved, 10)
        if result.timing is not None:
            meta.update(timing_fields(result.timing))
        line = {
            "id": f"batch_req_{uuid.uuid4().hex}",
            "custom_id": result.id,
            "response": response,
            "error": error,
            "llmbatch": meta,
        }
        return cls(line, meta)

    def encode(self) -> bytes:
        """The line's bytes, newline included."""
        return orjson.dumps(self._obj) + b"\n"

    # -- decoding ---------------------------------------------------------------------------

    @classmethod
    def decode(cls, raw: bytes) -> ResultLine | None:
        """One line read back; None if it is not JSON or not a result line."""
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return None
        return cls.from_json(obj)

    @classmethod
    def from_json(cls, obj: Any) -> ResultLine | None:
        """A decoded JSON value as a result line, or None if it is not one: a line this
        journal could have written has a non-empty string `custom_id`, an `error` that is
        null or an object, and an `llmbatch` block that is an object if present."""
        if not isinstance(obj, dict):
            return None
        cid, err, meta = obj.get("custom_id"), obj.get("error"), obj.get("llmbatch")
        if not isinstance(cid, str) or not cid:
            return None
        if meta is None:
            meta = {}
        if not isinstance(meta, dict) or not (err is None or isinstance(err, dict)):
            return None
        return cls(obj, meta)


def with_money(raw: bytes, total: float) -> bytes | None:
    """`raw` (a result line) rewritten so its cost plus extra_cost is `total`; None if it is
    that already. Every other byte of the line's content is kept (fields this version does not
    know included): compaction must not lose what another tool added."""
    obj = orjson.loads(raw)
    meta = obj.get("llmbatch")
    if not isinstance(meta, dict):
        return None
    cost, extra = _number(meta.get("cost")), _number(meta.get("extra_cost"))
    want = total - (cost or 0.0)
    if abs(want - (extra or 0.0)) < 1e-12:
        return None
    meta["extra_cost"] = round(want, 10)
    return orjson.dumps(obj) + b"\n"


def timing_fields(timing: Timing) -> dict[str, Any]:
    """The `llmbatch` block's timing keys: wall times to the millisecond, spans to the µs."""
    return {
        "started_at": round(timing.started_at, 3),
        "finished_at": round(timing.finished_at, 3),
        "wait": round(timing.wait, 6),
        "provider": round(timing.provider, 6),
        "backoff": round(timing.backoff, 6),
        "attempt_log": [[round(w, 6), round(p, 6), o] for w, p, o in timing.attempts],
    }


def _number(value: Any) -> float | None:
    # Hand-edited lines may hold anything: a value that is not a number reads as absent.
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _safe_body(body: Any) -> Any:
    """Error bodies may echo what was sent: mask anything shaped like a key."""
    if body is None:
        return None
    text = body if isinstance(body, str) else orjson.dumps(body).decode()
    masked = redact(text)
    if masked == text:
        return body
    try:
        return orjson.loads(masked) if not isinstance(body, str) else masked
    except orjson.JSONDecodeError:
        return masked


def _plain(parsed: Any) -> Any:
    """A parsed reply as JSON data: a pydantic model instance is dumped."""
    dump = getattr(parsed, "model_dump", None)
    return dump(mode="json") if callable(dump) else parsed
