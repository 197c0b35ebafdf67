"""Whether a reply is an answer, and what to ask next when it is not.

    parsed = check_reply(request, response)       # the decoded reply, or raises
    tries = ReplyTries()
    follow = ReplyPolicy(max_invalid_retries=2).follow_up(request, error, tries)
    # -> the request to send next (a re-ask or more room), or None: the error is final

Every path that gets replies (the engine's attempts, a cache hit, a provider batch) calls
`check_reply` on each `CompletionResponse`, in this order:

1. a refusal (OpenAI's `message.refusal`, Anthropic's `stop_reason: "refusal"`) is a
   `RefusalError`, whatever was asked;
2. a reply cut off by max_tokens (`finish_reason: "length"`, `stop_reason: "max_tokens"`) is
   a `TruncatedReplyError` when it had to be JSON (a schema or JSON mode): a partial JSON
   text is useless, and re-sending it unchanged would be cut at the same place. A truncated
   plain-text reply is an answer (the caller chose the limit);
3. a schema's reply must validate (`InvalidOutputError` with the validator's message); a JSON
   mode reply must parse (`InvalidResponseError`, retried under the RetryPolicy's
   `json_retries` as before).

Each error keeps the response, so the output line keeps the raw (or partial) reply.
`ReplyPolicy.follow_up` turns an invalid reply into a re-ask: the conversation so far, the
reply as the assistant's turn, and a user turn quoting the validator's message, so the model
can correct itself. A truncated reply is retried once with `max_tokens_on_truncation`, if set
and larger than what was asked.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import orjson

from .errors import (
    InvalidOutputError,
    InvalidResponseError,
    RefusalError,
    ReplyError,
    TruncatedReplyError,
)
from .schema import SchemaViolation
from .types import CompletionRequest, CompletionResponse, conversational

__all__ = [
    "DEFAULT_MAX_INVALID_RETRIES",
    "TRUNCATED_REASONS",
    "ReplyPolicy",
    "ReplyTries",
    "check_reply",
    "reask",
]

DEFAULT_MAX_INVALID_RETRIES = 2
# finish_reason (OpenAI and compatible servers) / stop_reason (Anthropic) / finishReason
# of a cut-off reply
# (Gemini), and the Responses API's `incomplete_details.reason`.
TRUNCATED_REASONS = frozenset({"length", "max_tokens", "MAX_TOKENS", "max_output_tokens"})
_SNIPPET = 200


def check_reply(
    request: CompletionRequest, response: CompletionResponse, *, validate_json: bool = True
) -> Any:
    """The reply decoded (a schema's dict or model instance, JSON mode's value) or None for
    text; raises a `ReplyError` or `InvalidResponseError` when it is no answer."""
    if request.endpoint == "embeddings":
        return None
    if response.refusal is not None:
        raise RefusalError(f"the model refused: {response.refusal[:_SNIPPET]!r}", response=response)
    schema = request.schema
    json_mode = validate_json and request.response_format == "json"
    if (schema is not None or json_mode) and response.finish_reason in TRUNCATED_REASONS:
        asked = f"max_tokens={request.max_tokens}" if request.max_tokens else "the token limit"
        raise TruncatedReplyError(
            f"the reply was cut off at {asked} (finish_reason {response.finish_reason!r}): "
            f"{response.content[:_SNIPPET]!r}",
            response=response,
        )
    if schema is not None:
        try:
            return schema.validate(response.content)
        except SchemaViolation as exc:
            raise InvalidOutputError(str(exc), response=response) from None
    if json_mode:
        try:
            return orjson.loads(response.content)
        except orjson.JSONDecodeError:
            raise InvalidResponseError(
                "response_format='json' but the reply is not valid JSON: "
                f"{response.content[:_SNIPPET]!r}",
                status_code=response.status_code,
                body=response.raw if response.raw is not None else response.content,
            ) from None
    return None


def reask(request: CompletionRequest, error: ReplyError) -> CompletionRequest:
    """`request` continued: its reply as the assistant's turn, then the validator's message."""
    messages: list[Any] = list(request.messages or ())
    if request.prompt:
        messages.append({"role": "user", "content": request.prompt})
    reply = error.response.content if error.response is not None else ""
    messages.append({"role": "assistant", "content": reply})
    messages.append(
        {
            "role": "user",
            "content": f"That reply was not accepted: {error}. Answer again with only a "
            "JSON object that fits the required schema.",
        }
    )
    return dataclasses.replace(request, messages=messages, prompt="")


@dataclass(slots=True)
class ReplyTries:
    """What one request has used of its reply policy."""

    reasks: int = 0
    widened: bool = False


@dataclass(slots=True, frozen=True)
class ReplyPolicy:
    """How unusable replies are retried (see the module docstring). Both bounded."""

    max_invalid_retries: int = DEFAULT_MAX_INVALID_RETRIES
    max_tokens_on_truncation: int | None = None

    def __post_init__(self) -> None:
        if self.max_invalid_retries < 0:
            raise ValueError(f"max_invalid_retries must be >= 0, got {self.max_invalid_retries}")
        if self.max_tokens_on_truncation is not None and self.max_tokens_on_truncation < 1:
            raise ValueError(
                f"max_tokens_on_truncation must be >= 1, got {self.max_tokens_on_truncation}"
            )

    def follow_up(
        self, request: CompletionRequest, error: BaseException, tries: ReplyTries
    ) -> CompletionRequest | None:
        """The request to send after `error`, or None when `error` is final."""
        if isinstance(error, InvalidOutputError):
            if tries.reasks >= self.max_invalid_retries or not conversational(request):
                return None
            tries.reasks += 1
            return reask(request, error)
        if isinstance(error, TruncatedReplyError):
            room = self.max_tokens_on_truncation
            if tries.widened or room is None or (request.max_tokens or 0) >= room:
                return None
            tries.widened = True
            return dataclasses.replace(request, max_tokens=room)
        return None
