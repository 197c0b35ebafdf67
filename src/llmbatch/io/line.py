"""The output line, typed: encoded and decoded here and nowhere else.

    data = ResultLine.of(result).encode()        # the bytes the journal appends, newline included
    line = ResultLine.decode(data)               # None if it is not a result line
    line.custom_id, line.ok, line.money, line.model, line.parsed

One line per final result, in the OpenAI Batch output format with an `llmbatch` block:

    {"id": "batch_req_...", "custom_id": "...", "response": {"status_code", "request_id",
     "body"}, "error": null | {"code", "message"}, "llmbatch": {"duration", "attempts",
     "cached", "usage", and where they apply "batch_api", "cost" (USD), "extra_cost" (USD
     paid for lines of the id that compaction removed), "parsed", and the
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
from dataclasses import dataclass
from typing import Any

import orjson

from ..errorlog import redact
from ..errors import error_code
from ..types import BatchResult, Timing

__all__ = ["ResultLine", "timing_fields", "with_money"]


@dataclass(frozen=True, slots=True)
class ResultLine:
    """One result line. `code` is None for an answer, the error code for a failure."""

    custom_id: str
    code: str | None = None
    message: str = ""
    response: dict[str, Any] | None = None  # {"status_code", "request_id", "body"}
    duration: float = 0.0
    attempts: int = 0
    cached: bool = False
    batch_api: bool = False
    prompt_tokens: int | None = None  # None: the line has no usage
    completion_tokens: int | None = None
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    cost: float | None = None
    extra_cost: float | None = None
    parsed: Any = None
    started_at: float | None = None
    finished_at: float | None = None
    wait: float | None = None
    provider: float | None = None
    backoff: float | None = None
    attempt_log: tuple[tuple[Any, ...], ...] | None = None
    line_id: str = ""

    # -- what readers ask -----------------------------------------------------------------

    @property
    def ok(self) -> bool:
        return self.code is None

    @property
    def money(self) -> float | None:
        """USD the line stands for: its own `cost` plus `extra_cost`, what the lines compaction
        removed for its id had cost (superseded attempts, an answer bought twice)."""
        if self.extra_cost is None:
            return self.cost
        return (self.cost or 0.0) + self.extra_cost

    @property
    def body(self) -> Any:
        """The provider's reply body (an object, or text), if the line has one."""
        return None if self.response is None else self.response.get("body")

    @property
    def model(self) -> str:
        """The model that answered, as its body says (OpenAI and Anthropic bodies name it)."""
        body = self.body
        model = body.get("model") if isinstance(body, dict) else None
        return model if isinstance(model, str) else ""

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
        t = result.timing
        timing: dict[str, Any] = {}
        if t is not None:
            timing = {
                "started_at": round(t.started_at, 3),
                "finished_at": round(t.finished_at, 3),
                "wait": round(t.wait, 6),
                "provider": round(t.provider, 6),
                "backoff": round(t.backoff, 6),
                "attempt_log": tuple((round(w, 6), round(p, 6), o) for w, p, o in t.attempts),
            }
        common: dict[str, Any] = {
            "duration": round(result.duration, 6),
            "attempts": result.attempts,
            "cost": None if result.cost is None else round(result.cost, 10),
            "line_id": f"batch_req_{uuid.uuid4().hex}",
            **timing,
        }
        if err is None and resp is not None:
            usage = resp.usage
            return cls(
                result.id,
                response={
                    "status_code": resp.status_code,
                    "request_id": resp.request_id,
                    "body": resp.raw if resp.raw is not None else {"content": resp.content},
                },
                cached=bool(resp.cached),
                batch_api=bool(resp.batch_api),
                prompt_tokens=usage.prompt_tokens,
                completion_tokens=usage.completion_tokens,
                cached_tokens=usage.cached_tokens,
                cache_write_tokens=usage.cache_write_tokens,
                parsed=None if result.parsed is None else _plain(result.parsed),
                **common,
            )
        status = getattr(err, "status_code", None)
        response = None
        if status is not None:
            # A ReplyError carries the reply: its line keeps the raw (or partial) body.
            response = {
                "status_code": status,
                "request_id": getattr(err, "request_id", None),
                "body": _safe_body(getattr(err, "body", None)),
            }
        return cls(
            result.id,
            code=error_code(err),
            message=redact(f"{type(err).__name__}: {err}"),
            response=response,
            cached=bool(resp is not None and resp.cached),
            **common,
        )

    def encode(self) -> bytes:
        """The line's bytes, newline included."""
        meta: dict[str, Any] = {
            "duration": self.duration,
            "attempts": self.attempts,
            "cached": self.cached,
        }
        if self.prompt_tokens is not None or self.completion_tokens is not None:
            usage: dict[str, int] = {
                "prompt_tokens": self.prompt_tokens or 0,
                "completion_tokens": self.completion_tokens or 0,
            }
            if self.cached_tokens:
                usage["cached_tokens"] = self.cached_tokens
            if self.cache_write_tokens:
                usage["cache_write_tokens"] = self.cache_write_tokens
            meta["usage"] = usage
        if self.batch_api:
            meta["batch_api"] = True
        if self.parsed is not None:
            meta["parsed"] = self.parsed
        if self.cost is not None:
            meta["cost"] = self.cost
        if self.extra_cost is not None:
            meta["extra_cost"] = self.extra_cost
        if self.started_at is not None:
            meta["started_at"] = self.started_at
            meta["finished_at"] = self.finished_at
            meta["wait"] = self.wait
            meta["provider"] = self.provider
            meta["backoff"] = self.backoff
            meta["attempt_log"] = self.attempt_log or ()
        error = None if self.code is None else {"code": self.code, "message": self.message}
        line = {
            "id": self.line_id or f"batch_req_{uuid.uuid4().hex}",
            "custom_id": self.custom_id,
            "response": self.response,
            "error": error,
            "llmbatch": meta,
        }
        return orjson.dumps(line) + b"\n"

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
        """A decoded JSON value as a result line, or None if it is not one."""
        if not isinstance(obj, dict):
            return None
        cid, err, meta = obj.get("custom_id"), obj.get("error"), obj.get("llmbatch")
        if not isinstance(cid, str) or not cid:
            return None
        if meta is None:
            meta = {}
        if not isinstance(meta, dict) or not (err is None or isinstance(err, dict)):
            return None
        response = obj.get("response")
        usage = meta.get("usage")
        if not isinstance(usage, dict):
            usage = None
        log = meta.get("attempt_log")
        start, end = _number(meta.get("started_at")), _number(meta.get("finished_at"))
        line_id = obj.get("id")
        return cls(
            cid,
            code=None if err is None else str(err.get("code") or "unknown"),
            message="" if err is None else str(err.get("message") or ""),
            response=response if isinstance(response, dict) else None,
            duration=_number(meta.get("duration")) or 0.0,
            attempts=int(_number(meta.get("attempts")) or 0),
            cached=bool(meta.get("cached", False)),
            batch_api=bool(meta.get("batch_api", False)),
            prompt_tokens=None if usage is None else _count(usage.get("prompt_tokens")),
            completion_tokens=None if usage is None else _count(usage.get("completion_tokens")),
            cached_tokens=0 if usage is None else _count(usage.get("cached_tokens")) or 0,
            cache_write_tokens=0 if usage is None else _count(usage.get("cache_write_tokens")) or 0,
            cost=_number(meta.get("cost")),
            extra_cost=_number(meta.get("extra_cost")),
            parsed=meta.get("parsed"),
            started_at=start,
            finished_at=end,
            wait=_number(meta.get("wait")),
            provider=_number(meta.get("provider")),
            backoff=_number(meta.get("backoff")),
            attempt_log=(
                tuple(tuple(e) for e in log if isinstance(e, list) and len(e) >= 3)
                if isinstance(log, list)
                else None
            ),
            line_id=line_id if isinstance(line_id, str) else "",
        )


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


def _count(value: Any) -> int | None:
    number = _number(value)
    return None if number is None else int(number)


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
