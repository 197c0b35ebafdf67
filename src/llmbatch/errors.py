"""The exception tree. Clients map provider failures onto it once, at their boundary.

    if isinstance(result.error, llmbatch.RateLimitError): ...
    if isinstance(result.error, TimeoutError): ...   # per-attempt and batch deadlines alike

    LLMBatchError
    ├── RetryableError                   retried under the RetryPolicy
    │   ├── RateLimitError               429; carries retry_after and rate-limit headers
    │   ├── ServerError                  5xx, 408, 409
    │   │   └── OverloadedError          529 (Anthropic) / 503 overloaded
    │   ├── RequestTimeoutError          one attempt took too long      (also a TimeoutError)
    │   ├── APIConnectionError           refused, reset, DNS            (also a ConnectionError)
    │   └── InvalidResponseError         body not the expected JSON, or JSON mode reply not JSON
    ├── FatalError                       never retried
    │   ├── AuthenticationError          401, 403
    │   ├── BadRequestError              400, 404, 422
    │   │   └── TokenLimitError          one request needs more tokens than a minute allows
    │   ├── UnsupportedRequestError      the client cannot express this request
    │   ├── ClientContractError          the client raised a cancel or GeneratorExit of its own
    │   ├── ReplyError                   the reply came but is no answer (kept on the error)
    │   │   ├── InvalidOutputError       it broke the schema after every re-ask allowed
    │   │   ├── RefusalError             the model refused (OpenAI `refusal`, stop_reason)
    │   │   └── TruncatedReplyError      cut off at max_tokens (finish/stop_reason)
    │   ├── ProviderOutageError          the server stayed down past max_outage (a ConnectionError)
    │   └── BatchAPIError                a provider batch left this line unanswered: its
    │                                    `code` is batch_expired, batch_cancelled or batch_failed
    ├── BatchTimeoutError                the batch deadline passed first (also a TimeoutError)
    └── BatchCancelledError              the batch was cancelled or interrupted first

`InvalidResponseError` is retryable because providers do send truncated or non-JSON bodies
under load, and a JSON-mode reply that does not parse often parses on the second try; the
RetryPolicy bounds those retries separately (`json_retries`).

A `ReplyError` is never retried by the RetryPolicy: asking the same thing again rarely helps.
The engine's reply policy (`llmbatch.replies`) decides instead: an invalid reply is re-asked
with the validator's message added to the conversation, a truncated one retried once with
more room if allowed. Its `response` holds the reply, so the output line keeps it.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .types import CompletionResponse, RateLimitInfo

__all__ = [
    "APIConnectionError",
    "AuthenticationError",
    "BadRequestError",
    "BatchAPIError",
    "BatchCancelledError",
    "BatchTimeoutError",
    "ClientContractError",
    "FatalError",
    "InvalidOutputError",
    "InvalidResponseError",
    "LLMBatchError",
    "OverloadedError",
    "ProviderOutageError",
    "RateLimitError",
    "RefusalError",
    "ReplyError",
    "RequestTimeoutError",
    "RetryableError",
    "ServerError",
    "TokenLimitError",
    "TruncatedReplyError",
    "UnsupportedRequestError",
    "error_code",
    "may_be_billed",
]


class LLMBatchError(Exception):
    """Base of every error llmbatch raises or records. `status_code` is the HTTP status, if any."""

    status_code: int | None = None
    # The setting that may cure this error, when one is known (e.g. "schema_mode"); the
    # message says how in the library's words, a CLI names its own flag instead.
    setting: str | None = None

    def __init__(self, message: str = "", *, status_code: int | None = None, body: object = None):
        super().__init__(message)
        self.message = message
        if status_code is not None:
            self.status_code = status_code
        self.body = body


class RetryableError(LLMBatchError):
    """A failure that may succeed if tried again."""


class FatalError(LLMBatchError):
    """A failure that will fail again: retrying would only burn quota."""


class RateLimitError(RetryableError):
    """HTTP 429. `retry_after` is the server's wait in seconds, already capped, or None."""

    status_code = 429

    def __init__(
        self,
        message: str = "rate limited",
        *,
        retry_after: float | None = None,
        rate_limit: RateLimitInfo | None = None,
        status_code: int | None = None,
        body: object = None,
    ):
        super().__init__(message, status_code=status_code, body=body)
        self.retry_after = retry_after
        self.rate_limit = rate_limit


class ServerError(RetryableError):
    """HTTP 5xx, 408 or 409."""

    status_code = 500


class OverloadedError(ServerError):
    """The provider says it is overloaded (Anthropic's 529)."""

    status_code = 529


class RequestTimeoutError(RetryableError, TimeoutError):
    """One attempt exceeded the per-request timeout."""


class APIConnectionError(RetryableError, ConnectionError):
    """The connection could not be made or was lost mid-request."""


class InvalidResponseError(RetryableError):
    """The body was not what the API promises, or a JSON-mode reply did not parse."""


class AuthenticationError(FatalError):
    """HTTP 401/403: the key is missing, wrong, or not allowed this model."""

    status_code = 401


class BadRequestError(FatalError):
    """HTTP 400/404/422: the request itself is wrong."""

    status_code = 400


class TokenLimitError(BadRequestError):
    """A single request needs more tokens than the per-minute limit allows: it can never run."""


class UnsupportedRequestError(FatalError):
    """The client cannot express this request (e.g. embeddings on Anthropic)."""


class ClientContractError(FatalError):
    """The client's `complete()` raised `raised`, a `BaseException` that is not a result: an
    `asyncio.CancelledError` that was no cancel of the engine's, or `GeneratorExit`.

    Recorded on the request's result (never retried) instead of unwinding the worker, which
    would leave the requests it held without a result.
    """

    def __init__(self, raised: BaseException) -> None:
        super().__init__(f"the client raised {type(raised).__name__} {raised!s}".rstrip())
        self.raised = raised


class ReplyError(FatalError):
    """The provider answered, but the reply is not a usable answer.

    `response` is the reply as parsed (its `raw` body is what the output line keeps, with
    `status_code` and `body` set from it); `request_id` the provider's id for it.
    """

    def __init__(self, message: str = "", *, response: CompletionResponse | None = None):
        super().__init__(
            message,
            status_code=response.status_code if response is not None else None,
            body=(response.raw if response.raw is not None else response.content)
            if response is not None
            else None,
        )
        self.response = response
        self.request_id = response.request_id if response is not None else None


class InvalidOutputError(ReplyError):
    """The reply did not fit the schema (or was not JSON), after every re-ask allowed."""


class RefusalError(ReplyError):
    """The model refused to answer (OpenAI's `message.refusal`, Anthropic's
    `stop_reason: "refusal"`, Gemini's SAFETY / RECITATION ... finish or a blocked prompt)."""


class TruncatedReplyError(ReplyError):
    """The reply was cut off by max_tokens (`finish_reason: "length"`,
    `stop_reason: "max_tokens"`, `finishReason: MAX_TOKENS`); the partial reply is kept."""


class ProviderOutageError(FatalError, ConnectionError):
    """The server was unreachable (refused, reset, 5xx on everything) for longer than the
    outage tolerance (`max_outage`), or kept answering errors; requests still waiting then
    fail with this. `last_answer` is the last error the server itself answered, if any."""

    def __init__(self, message: str = "", *, last_answer: LLMBatchError | None = None):
        super().__init__(message)
        self.last_answer = last_answer


class BatchAPIError(FatalError):
    """A provider batch (`--batch-api`) left this line unanswered. `code` says why:
    batch_expired (the completion window passed first), batch_cancelled (the batch was
    cancelled), batch_failed (the batch failed as a whole, e.g. validation; the message
    names the provider's reason and line)."""

    def __init__(self, message: str, *, code: str, status_code: int | None = None) -> None:
        super().__init__(message, status_code=status_code)
        self.code = code


class BatchTimeoutError(LLMBatchError, TimeoutError):
    """The whole batch's deadline passed before this request finished."""


class BatchCancelledError(LLMBatchError):
    """The batch was cancelled (Ctrl-C, task cancellation) before this request finished.

    Deliberately not a subclass of `asyncio.CancelledError`: it is a value recorded on a
    result, not a signal, and must not unwind the caller.
    """


_CODES: tuple[tuple[type[BaseException], str], ...] = (
    (InvalidOutputError, "invalid_output"),
    (RefusalError, "refused"),
    (TruncatedReplyError, "truncated"),
    (RateLimitError, "rate_limit"),
    (TimeoutError, "timeout"),
    (InvalidResponseError, "parse_failed"),
    (ServerError, "server_error"),
    (AuthenticationError, "auth"),
    (BadRequestError, "bad_request"),
    (UnsupportedRequestError, "bad_request"),
    (ConnectionError, "connection"),
    (BatchCancelledError, "cancelled"),
)


def error_code(error: BaseException | None) -> str:
    """The short error type used in logs, stats and output files.

    One of rate_limit, timeout, parse_failed, server_error, auth, bad_request, connection,
    cancelled, invalid_output, refused, truncated, unknown; for `BatchAPIError` its own code
    (batch_expired, batch_cancelled, batch_failed).
    """
    if error is None:
        return ""
    if isinstance(error, BatchAPIError):
        return error.code
    for cls, code in _CODES:
        if isinstance(error, cls):
            return code
    return "unknown"


def may_be_billed(error: BaseException | None) -> bool:
    """True when an attempt that ended with `error` was sent but its reply never read: our
    timeout, a reply we could not decode, or a cancel while the call was in flight (the run
    stopped). The server may have answered and billed it, so the budget and the request's
    line count it at its worst case."""
    return isinstance(error, RequestTimeoutError | InvalidResponseError | asyncio.CancelledError)
