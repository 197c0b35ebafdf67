"""OpenAI's Responses API (`POST /v1/responses`) on the wire: the body sent, the reply read.

    body = request_body(CompletionRequest(prompt="Hi", endpoint="responses"), "gpt-4o-mini")
    # {"model": "gpt-4o-mini", "input": "Hi"}
    output_text(reply_body)    # the text of every `output_text` part of the message items

A `CompletionRequest` with `endpoint="responses"` is sent as a Responses request: `system`
becomes `instructions`, `messages` (plus `prompt` as a last user turn) the `input` item list
(`prompt` alone: `input` as a string), `max_tokens` is `max_output_tokens`, and a schema
goes in `text.format` (`{"type": "json_schema", "name", "schema", "strict"}`, flat, not
nested under `json_schema` as in chat). Chat messages are valid Responses input items
(`{"role", "content"}`), so a re-ask (`llmbatch.replies`) appends turns the same way.

A reply (`Response` in openai-python, `object: "response"`) holds `output`, a list of items;
the answer is the `output_text` parts of its `message` items, joined (the SDK's
`Response.output_text`). A `refusal` part is the model declining. `status` is "completed",
or "incomplete" with `incomplete_details.reason` ("max_output_tokens", "content_filter"),
which becomes the response's `finish_reason`; "failed" carries `error: {code, message}`.
Usage is `input_tokens` (cached ones included), `input_tokens_details.cached_tokens` and
`.cache_write_tokens`, `output_tokens` (reasoning tokens included, in
`output_tokens_details.reasoning_tokens`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .errors import BadRequestError, ServerError
from .schema import Schema
from .types import CompletionRequest, Usage

__all__ = [
    "is_response",
    "output_text",
    "read_reply",
    "refusal_of",
    "request_body",
    "text_format",
    "usage_of",
]

# `error.code`s of a failed response worth asking again; the others are the request's fault.
_RETRYABLE_CODES = frozenset({"server_error", "rate_limit_exceeded", "vector_store_timeout"})


def text_format(schema: Schema) -> dict[str, Any]:
    """The Responses `text.format` for `schema`: native json_schema, or JSON mode."""
    if schema.mode == "prompt":
        return {"type": "json_object"}
    spec: dict[str, Any] = {"type": "json_schema", "name": schema.name}
    spec["schema"] = schema.json_schema
    if schema.description:
        spec["description"] = schema.description
    spec["strict"] = schema.strict
    return spec


def request_body(request: CompletionRequest, model: str | None) -> dict[str, Any]:
    """The JSON body of `request` for POST /responses (see the module docstring)."""
    body: dict[str, Any] = {}
    if model:
        body["model"] = model
    instructions = request.system
    schema = request.schema
    if schema is not None and schema.mode == "prompt":
        instructions = "\n\n".join(filter(None, [instructions, schema.instruction()]))
    if instructions:
        body["instructions"] = instructions
    if request.messages:
        items: list[Any] = list(request.messages)
        if request.prompt:
            items.append({"role": "user", "content": request.prompt})
        body["input"] = items
    else:
        body["input"] = request.prompt
    if schema is not None:
        body["text"] = {"format": text_format(schema)}
    elif request.response_format == "json":
        body["text"] = {"format": {"type": "json_object"}}
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if request.max_tokens is not None:
        body["max_output_tokens"] = request.max_tokens
    if request.extra:
        extra = dict(request.extra)
        text = extra.pop("text", None)
        if isinstance(text, Mapping):  # a line's other text options (verbosity) are kept
            body["text"] = {**text, **body.get("text", {})}
        elif text is not None:
            body["text"] = text
        body.update(extra)
    return body


def is_response(body: Any) -> bool:
    """True for a Responses reply body (`object: "response"` with an `output` list)."""
    return (
        isinstance(body, Mapping)
        and body.get("object") == "response"
        and isinstance(body.get("output"), list)
    )


def output_text(body: Mapping[str, Any]) -> str:
    """The `output_text` parts of the reply's `message` items, joined ("" if none)."""
    return _read_output(body)[0]


def refusal_of(body: Mapping[str, Any]) -> str | None:
    """The text of a `refusal` part of the reply's message items, if the model refused."""
    return _read_output(body)[1]


def _read_output(body: Mapping[str, Any]) -> tuple[str, str | None]:
    # One pass, and `dict` checks (a decoded JSON body holds dicts): this runs per reply.
    texts: list[str] = []
    refusal = None
    for item in body.get("output") or ():
        if type(item) is not dict or item.get("type") != "message":
            continue  # reasoning, tool calls...
        for part in item.get("content") or ():
            if type(part) is not dict:
                continue
            kind = part.get("type")
            if kind == "output_text":
                text = part.get("text")
                if type(text) is str:
                    texts.append(text)
            elif kind == "refusal" and refusal is None:
                refusal = str(part.get("refusal") or "refused")
    return "".join(texts), refusal


def read_reply(status: int, body: Any) -> tuple[str, str | None, str | None, Usage]:
    """(text, finish reason, refusal, usage) of a reply; a failed response raises."""
    status_field = body.get("status")
    if status_field == "failed":
        error = body.get("error") or {}
        code = str(error.get("code") or "failed") if isinstance(error, Mapping) else "failed"
        message = error.get("message") if isinstance(error, Mapping) else None
        kind = ServerError if code in _RETRYABLE_CODES else BadRequestError
        raise kind(f"the response failed ({code}): {message or ''}".strip(), body=body)
    if type(body["output"]) is not list:
        raise TypeError("output is not a list")
    finish: str | None = status_field
    if finish == "incomplete":
        details = body.get("incomplete_details")
        reason = details.get("reason") if type(details) is dict else None
        finish = str(reason) if reason else "incomplete"
    text, refusal = _read_output(body)
    return text, finish, refusal, usage_of(body.get("usage") or {})


def usage_of(usage: Mapping[str, Any]) -> Usage:
    """`Usage` of a Responses `usage` object: `input_tokens` counts the cached ones and the
    ones written to the cache (`input_tokens_details.cache_write_tokens`, reported with
    OpenAI's breakpoint caching; priced at the model's cache-write price where one is known,
    else as input)."""
    details = usage.get("input_tokens_details")
    if type(details) is not dict:
        details = {}
    return Usage(
        int(usage.get("input_tokens") or 0),
        int(usage.get("output_tokens") or 0),
        cached_tokens=int(details.get("cached_tokens") or 0),
        cache_write_tokens=int(details.get("cache_write_tokens") or 0),
    )
