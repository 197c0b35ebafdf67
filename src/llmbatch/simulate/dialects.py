"""The two wire formats the simulator speaks: OpenAI's and Anthropic's.

    dialect = ANTHROPIC                       # /v1/messages; OPENAI for every other route
    dialect.api_key(request.headers)          # x-api-key here, Authorization: Bearer there
    status, body = dialect.overloaded()       # (529, {"type": "error", "error": {...}})

A dialect knows everything that differs between providers on the wire and nothing else:
where the key is, how an error body is shaped and what its types are called, the names
and formats of the rate-limit headers, how a prompt is read from a request and how a reply
is shaped. Routing, limits, faults and counters are the server's (`server.py`); whether
rate-limit headers are sent at all is the limit style's (`styles.py`).
"""

from __future__ import annotations

import hashlib
import random
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar

import orjson

from ..text import chars_to_tokens
from .limits import BucketState

__all__ = [
    "ANTHROPIC",
    "OPENAI",
    "AnthropicDialect",
    "Dialect",
    "OpenAIDialect",
    "max_output",
    "reply_text",
    "response_object",
    "token_count",
]

_WORDS = tuple(
    "module function returns data value parser request client server batch result error "
    "config cache token limit retry stream file summary handler engine worker queue state "
    "records index schema input output process metric report user session graph node".split()
)

Body = dict[str, Any]


def token_count(text: str) -> int:
    """About one token per four characters, as the simulator counts usage and limits."""
    return max(1, chars_to_tokens(text))


def reply_text(prompt: str, max_tokens: int | None, json_mode: bool) -> str:
    """A short reply derived from the prompt: the same prompt always gets the same text."""
    digest = hashlib.blake2b(prompt.encode(), digest_size=16).digest()
    n = min(max_tokens or 24, 24)
    words = [_WORDS[digest[i % 16] % len(_WORDS)] for i in range(max(3, n // 2))]
    text = " ".join(words)
    if json_mode:
        return orjson.dumps(
            {"summary": text, "label": words[0], "confidence": round(digest[0] / 255, 3)}
        ).decode()
    return text.capitalize() + "."


def max_output(kind: str, body: Body) -> int | None:
    """The output cap a request body sets (`max_output_tokens` on the Responses route)."""
    value = body.get("max_output_tokens" if kind == "responses" else "max_tokens")
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value)


def response_object(
    body: Body,
    model: str,
    rid: str,
    text: str,
    prompt_tokens: int,
    output_tokens: int,
    *,
    refusal: bool = False,
    cut: bool = False,
) -> Body:
    """A Responses API reply (`object: "response"`, openai-python's `Response`): one message
    item holding `text` as an `output_text` part (or a `refusal` part); `cut`: stopped at
    `max_output_tokens`, status "incomplete". Echoes the request's settings, as the API does."""
    part: Body = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
    if refusal:
        part = {"type": "refusal", "refusal": text}
    status = "incomplete" if cut else "completed"
    message = {
        "type": "message",
        "id": "msg_" + rid,
        "status": status,
        "role": "assistant",
        "content": [part],
    }
    created = int(time.time())
    text_config = body.get("text") if isinstance(body.get("text"), dict) else None
    return {
        "id": "resp_" + rid,
        "object": "response",
        "created_at": created,
        "status": status,
        "completed_at": None if cut else created,
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if cut else None,
        "instructions": body.get("instructions"),
        "max_output_tokens": max_output("responses", body),
        "metadata": body.get("metadata") or {},
        "model": model,
        "output": [message],
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "reasoning": {"effort": None, "summary": None},
        "store": bool(body.get("store", True)),
        "temperature": body.get("temperature", 1.0),
        "text": text_config or {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": body.get("top_p", 1.0),
        "truncation": "disabled",
        "usage": {
            "input_tokens": prompt_tokens,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": prompt_tokens + output_tokens,
        },
        "user": None,
    }


def _fmt_duration(seconds: float) -> str:
    # OpenAI writes resets as Go-style durations: "120ms", "1.5s".
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    return f"{seconds:.3f}s"


def _rfc3339(seconds_from_now: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + seconds_from_now))


class Dialect(ABC):
    """What every wire format answers; subclasses fill in the provider-specific parts."""

    name: ClassVar[str]
    request_id_header: ClassVar[str]
    overloaded_status: ClassVar[int]
    _auth_error: ClassVar[str]
    _rate_limit_error: ClassVar[str]

    @abstractmethod
    def api_key(self, headers: Mapping[str, str]) -> str | None: ...

    @abstractmethod
    def error(self, kind: str, message: str) -> Body: ...

    @abstractmethod
    def overloaded_body(self) -> Body: ...

    @abstractmethod
    def json_mode(self, body: Body) -> bool: ...

    @abstractmethod
    def limit_headers(self, states: list[BucketState]) -> dict[str, str]: ...

    @abstractmethod
    def reply(
        self,
        kind: str,
        model: str,
        rid: str,
        text: str,
        prompt_tokens: int,
        output_tokens: int,
        body: Body | None = None,
    ) -> Body:
        """A success body; for embeddings `text` is the prompt the vector is derived from.
        `body` is the request (the Responses API echoes its settings)."""

    def unauthorized(self) -> tuple[int, Body]:
        # Like real providers, never echo the key that was sent.
        return 401, self.error(self._auth_error, "Invalid API key")

    def bad_request(self, message: str) -> tuple[int, Body]:
        return 400, self.error("invalid_request_error", message)

    def refusal(self, status: int) -> Body:
        """The body of an over-limit answer: a rate-limit error for 429, else "overloaded"."""
        if status == 429:
            return self.error(self._rate_limit_error, "Rate limit reached")
        return self.overloaded_body()

    def overloaded(self) -> tuple[int, Body]:
        return self.overloaded_status, self.overloaded_body()

    def server_failure(self, rng: random.Random) -> tuple[int, Body]:
        return 500, self.error("server_error", "The server had an error")

    def gateway_timeout(self) -> tuple[int, Body]:
        return 504, self.error("timeout", "gateway timeout")

    def invalid(self, body: Body) -> str | None:
        """Why the request body is refused (400), or None."""
        return None

    def request_body(self, kind: str, body: Body) -> Body:
        """The body as the routes read it (Gemini's is read as a chat body); ValueError
        says why the API would refuse it."""
        return body

    def prompt(self, kind: str, body: Body) -> str:
        if kind == "embeddings":
            raw = body.get("input", "")
            return raw if isinstance(raw, str) else orjson.dumps(raw).decode()
        if kind == "completions":
            return str(body.get("prompt", ""))
        if kind == "responses":
            return _responses_prompt(body)
        parts: list[str] = []
        system = body.get("system")
        if isinstance(system, str):
            parts.append(system)
        elif isinstance(system, list):  # text blocks (with cache_control breakpoints)
            parts.extend(str(p.get("text", "")) for p in system if isinstance(p, dict))
        for m in body.get("messages") or ():
            content = m.get("content") if isinstance(m, dict) else None
            if isinstance(content, str):
                parts.append(content)
            elif isinstance(content, list):
                parts.extend(str(p.get("text", "")) for p in content if isinstance(p, dict))
        return "\n".join(parts)


class OpenAIDialect(Dialect):
    """OpenAI's API (chat, completions, embeddings): Bearer key, `x-ratelimit-*` headers."""

    name = "openai"
    request_id_header = "x-request-id"
    overloaded_status = 503
    _auth_error = "invalid_api_key"
    _rate_limit_error = "rate_limit_exceeded"

    def api_key(self, headers: Mapping[str, str]) -> str | None:
        auth = headers.get("Authorization")
        return auth.removeprefix("Bearer ") if auth is not None else None

    def error(self, kind: str, message: str) -> Body:
        return {"error": {"message": message, "type": kind, "param": None, "code": kind}}

    def overloaded_body(self) -> Body:
        return {
            "error": {
                "message": "The server is overloaded. Please try again later.",
                "type": "server_error",
                "param": None,
                "code": "overloaded",
            }
        }

    def json_mode(self, body: Body) -> bool:
        rf = body.get("response_format")
        text = body.get("text")
        if rf is None and isinstance(text, dict):
            rf = text.get("format")  # the Responses API's
        return isinstance(rf, dict) and rf.get("type") in ("json_object", "json_schema")

    def limit_headers(self, states: list[BucketState]) -> dict[str, str]:
        # OpenAI reports requests and (combined) tokens only.
        h: dict[str, str] = {}
        for s in states:
            if s.name in ("requests", "tokens"):
                h[f"x-ratelimit-limit-{s.name}"] = str(s.limit)
                h[f"x-ratelimit-remaining-{s.name}"] = str(s.remaining)
                h[f"x-ratelimit-reset-{s.name}"] = _fmt_duration(s.reset_seconds)
        return h

    def reply(
        self,
        kind: str,
        model: str,
        rid: str,
        text: str,
        prompt_tokens: int,
        output_tokens: int,
        body: Body | None = None,
    ) -> Body:
        if kind == "responses":
            return response_object(body or {}, model, rid, text, prompt_tokens, output_tokens)
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": output_tokens,
            "total_tokens": prompt_tokens + output_tokens,
        }
        created = int(time.time())
        if kind == "embeddings":
            digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
            return {
                "object": "list",
                "data": [
                    {
                        "object": "embedding",
                        "index": 0,
                        "embedding": [round(b / 255.0 - 0.5, 4) for b in digest],
                    }
                ],
                "model": model,
                "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
            }
        if kind == "completions":
            return {
                "id": "cmpl-" + rid,
                "object": "text_completion",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "text": text, "finish_reason": "stop"}],
                "usage": usage,
            }
        return {
            "id": "chatcmpl-" + rid,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                }
            ],
            "usage": usage,
        }


class AnthropicDialect(Dialect):
    """Anthropic's Messages API: `x-api-key`, typed error bodies, RFC 3339 limit resets."""

    name = "anthropic"
    request_id_header = "request-id"
    overloaded_status = 529
    _auth_error = "authentication_error"
    _rate_limit_error = "rate_limit_error"

    def api_key(self, headers: Mapping[str, str]) -> str | None:
        return headers.get("x-api-key")

    def error(self, kind: str, message: str) -> Body:
        return {"type": "error", "error": {"type": kind, "message": message}}

    def overloaded_body(self) -> Body:
        return self.error("overloaded_error", "Overloaded")

    def server_failure(self, rng: random.Random) -> tuple[int, Body]:
        # Anthropic's transient failures are about as often 529 "overloaded" as 500.
        if rng.random() < 0.5:
            return self.overloaded()
        return 500, self.error("api_error", "Internal server error")

    def invalid(self, body: Body) -> str | None:
        return None if "max_tokens" in body else "max_tokens: Field required"

    def json_mode(self, body: Body) -> bool:
        # The Messages API has no JSON mode; clients ask for JSON in the system prompt.
        return "JSON" in str(body.get("system", ""))

    def limit_headers(self, states: list[BucketState]) -> dict[str, str]:
        # Anthropic reports every limit, input and output tokens separately; the combined
        # `tokens` family is sent only when a combined limit exists (`tpm`).
        h: dict[str, str] = {}
        for s in states:
            prefix = f"anthropic-ratelimit-{s.name}"
            h[f"{prefix}-limit"] = str(s.limit)
            h[f"{prefix}-remaining"] = str(s.remaining)
            h[f"{prefix}-reset"] = _rfc3339(s.reset_seconds)
        return h

    def reply(
        self,
        kind: str,
        model: str,
        rid: str,
        text: str,
        prompt_tokens: int,
        output_tokens: int,
        body: Body | None = None,
    ) -> Body:
        return {
            "id": "msg_" + rid,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": text}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": prompt_tokens, "output_tokens": output_tokens},
        }


def _responses_prompt(body: Body) -> str:
    """The text of a Responses request: `instructions`, then `input` (a string, or items
    whose `content` is a string or a list of parts with text)."""
    parts: list[str] = []
    instructions = body.get("instructions")
    if isinstance(instructions, str):
        parts.append(instructions)
    raw = body.get("input")
    if isinstance(raw, str):
        parts.append(raw)
    for item in raw if isinstance(raw, list) else ():
        content = item.get("content") if isinstance(item, dict) else None
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts.extend(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return "\n".join(parts)


OPENAI = OpenAIDialect()
ANTHROPIC = AnthropicDialect()
