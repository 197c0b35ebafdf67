"""What the HTTP clients share: one aiohttp session per event loop (or one injected),
transport-error mapping, and the parsing of rate-limit headers.

aiohttp rather than httpx: measured on this project's machines it moves several times more
requests per CPU second at 100+ concurrent requests, and the client side is where a batch
runner spends its CPU.

A response is treated as hostile until read: its body is read in chunks up to
`max_response_bytes` (an endless or huge body fails that request, it is never read to
exhaustion), rate-limit headers with impossible values (negative, NaN, infinite, a reset
beyond `MAX_RESET_SECONDS`) are ignored, and every error is passed through the client's
`Redactor` before it leaves, so an error body that echoes the key never carries it further.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import re
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson
from aiohttp import hdrs
from multidict import CIMultiDict

from ..errors import (
    APIConnectionError,
    AuthenticationError,
    BadRequestError,
    CapacityError,
    InvalidResponseError,
    LLMBatchError,
    OverloadedError,
    RateLimitError,
    RequestTimeoutError,
    ServerError,
)
from ..redact import Redactor, public_url, scrub_error
from ..retry import DEFAULT_MAX_RETRY_AFTER, parse_retry_after
from ..types import RateLimitInfo
from .base import ClientConfigError

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_MAX_RESPONSE_BYTES",
    "MAX_RESET_SECONDS",
    "APIRequests",
    "HTTPClient",
    "error_for_status",
    "google_retry_delay",
    "parse_duration",
    "rate_limit_info",
]

# None: the pool never limits concurrency; the engine's `max_concurrency` is the one bound.
DEFAULT_MAX_CONNECTIONS: int | None = None
# Covers the TCP (and TLS) handshake only, not the wait for a pool slot: a host that never
# accepts fails the attempt after this many seconds, instead of after the kernel's ~2 min.
DEFAULT_CONNECT_TIMEOUT = 10.0
# Generous (the largest legitimate answers, long embeddings batches, are a few MiB) but finite.
DEFAULT_MAX_RESPONSE_BYTES = 32 * 1024 * 1024
# A rate-limit reset further away than a day is not a reset, it is a broken header.
MAX_RESET_SECONDS = 86400.0
# No provider's limit or remaining count comes near this; beyond it the header is garbage.
_MAX_COUNT = 10**12
_READ_CHUNK = 64 * 1024

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")


def _seconds(value: float) -> float | None:
    """A reset in seconds, or None if it is impossible (NaN, infinite, negative, absurd)."""
    if not math.isfinite(value) or value < 0 or value > MAX_RESET_SECONDS:
        return None
    return value


def parse_duration(text: str | None) -> float | None:
    """Seconds from OpenAI's reset format ("1s", "6m0s", "20ms", "1h2m3.5s") or a number.

    Impossible values (negative, NaN, infinite, over `MAX_RESET_SECONDS`) give None.
    """
    if not text:
        return None
    try:
        return _seconds(float(text))
    except ValueError:
        pass
    parts = _DURATION.findall(text)
    if not parts:
        return None
    scale = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    return _seconds(sum(float(n) * scale[unit] for n, unit in parts))


def _parse_reset_time(text: str | None, now: float) -> float | None:
    """Seconds until an RFC 3339 timestamp (Anthropic's reset headers), or a duration."""
    if not text:
        return None
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return parse_duration(text)
    if when.tzinfo is None:
        return None
    return _seconds(max(0.0, when.timestamp() - now))


def _count(text: str | None, *, positive: bool = False) -> int | None:
    """A non-negative header count (positive for limits), or None if absent or impossible."""
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    if not math.isfinite(value) or value < (1 if positive else 0) or value > _MAX_COUNT:
        return None
    return int(value)


def rate_limit_info(headers: Mapping[str, str]) -> RateLimitInfo | None:
    """Read OpenAI-style `x-ratelimit-*` or Anthropic's `anthropic-ratelimit-*` headers.

    A field whose header is absent or impossible (a negative remaining count, a limit that
    is zero, negative, NaN or infinite, a reset beyond a day) is None: the limiter then
    ignores it rather than stalling the run on it.
    """
    if "x-ratelimit-limit-requests" in headers or "x-ratelimit-limit-tokens" in headers:
        return RateLimitInfo(
            limit_requests=_count(headers.get("x-ratelimit-limit-requests"), positive=True),
            remaining_requests=_count(headers.get("x-ratelimit-remaining-requests")),
            reset_requests=parse_duration(headers.get("x-ratelimit-reset-requests")),
            limit_tokens=_count(headers.get("x-ratelimit-limit-tokens"), positive=True),
            remaining_tokens=_count(headers.get("x-ratelimit-remaining-tokens")),
            reset_tokens=parse_duration(headers.get("x-ratelimit-reset-tokens")),
        )
    for name in _ANTHROPIC_LIMITS:
        if name in headers:
            return _anthropic_info(headers)
    return None


def _anthropic_info(headers: Mapping[str, str]) -> RateLimitInfo:
    """Anthropic's `anthropic-ratelimit-*` headers (resets are RFC 3339 times)."""
    now = dt.datetime.now(dt.UTC).timestamp()
    return RateLimitInfo(
        limit_requests=_count(headers.get("anthropic-ratelimit-requests-limit"), positive=True),
        remaining_requests=_count(headers.get("anthropic-ratelimit-requests-remaining")),
        reset_requests=_parse_reset_time(headers.get("anthropic-ratelimit-requests-reset"), now),
        limit_tokens=_count(headers.get("anthropic-ratelimit-tokens-limit"), positive=True),
        remaining_tokens=_count(headers.get("anthropic-ratelimit-tokens-remaining")),
        reset_tokens=_parse_reset_time(headers.get("anthropic-ratelimit-tokens-reset"), now),
        # Anthropic limits input and output tokens per minute apart.
        limit_input_tokens=_count(
            headers.get("anthropic-ratelimit-input-tokens-limit"), positive=True
        ),
        remaining_input_tokens=_count(headers.get("anthropic-ratelimit-input-tokens-remaining")),
        limit_output_tokens=_count(
            headers.get("anthropic-ratelimit-output-tokens-limit"), positive=True
        ),
        remaining_output_tokens=_count(headers.get("anthropic-ratelimit-output-tokens-remaining")),
    )


_ANTHROPIC_LIMITS = tuple(
    f"anthropic-ratelimit-{kind}-limit"
    for kind in ("requests", "tokens", "input-tokens", "output-tokens")
)


def _error_message(body: Any, fallback: str) -> str:
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return str(err["message"])
        if isinstance(err, str):
            return err
        if isinstance(body.get("message"), str):
            return str(body["message"])
    return fallback


def _google_status(body: Any) -> str | None:
    """Google's canonical status name ("RESOURCE_EXHAUSTED") of a Gemini error body."""
    err = body.get("error") if isinstance(body, dict) else None
    status = err.get("status") if isinstance(err, dict) else None
    return status if isinstance(status, str) else None


def _google_reason(body: Any) -> str | None:
    """The `reason` of a Google error body's `google.rpc.ErrorInfo` detail, if any."""
    err = body.get("error") if isinstance(body, dict) else None
    details = err.get("details") if isinstance(err, dict) else None
    for detail in details if isinstance(details, list) else ():
        if isinstance(detail, dict) and str(detail.get("@type", "")).endswith("ErrorInfo"):
            reason = detail.get("reason")
            return reason if isinstance(reason, str) else None
    return None


def google_retry_delay(body: Any, *, cap: float = DEFAULT_MAX_RETRY_AFTER) -> float | None:
    """Seconds from the `google.rpc.RetryInfo` detail of a Google error body (Gemini's 429
    RESOURCE_EXHAUSTED: `{"@type": ".../google.rpc.RetryInfo", "retryDelay": "37s"}`, a
    protobuf Duration, or `{"seconds", "nanos"}`), clamped to [0, cap]; None if absent."""
    err = body.get("error") if isinstance(body, dict) else None
    details = err.get("details") if isinstance(err, dict) else None
    for detail in details if isinstance(details, list) else ():
        if not isinstance(detail, dict):
            continue
        if not str(detail.get("@type", "")).endswith("google.rpc.RetryInfo"):
            continue
        delay = detail.get("retryDelay")
        seconds: float | None = None
        if isinstance(delay, str) and delay.endswith("s"):
            try:
                seconds = float(delay[:-1])
            except ValueError:
                seconds = None
        elif isinstance(delay, dict):
            try:
                seconds = float(delay.get("seconds") or 0) + float(delay.get("nanos") or 0) / 1e9
            except (TypeError, ValueError):
                seconds = None
        if seconds is not None and math.isfinite(seconds):
            return min(max(seconds, 0.0), cap)
    return None


def _error_type(body: Any) -> str:
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict):
            return str(err.get("type") or err.get("code") or "")
    return ""


# How a flex tier says it has no room: OpenAI's 429 "Resource Unavailable", Groq's
# `capacity_exceeded` (with status 498, which alone says it).
_CAPACITY_KINDS = frozenset({"resource_unavailable", "capacity_exceeded"})


def _capacity_refusal(body: Any) -> bool:
    """A 429 that refuses for the tier's capacity, not for our rate: by its typed body."""
    if _error_type(body).lower() in _CAPACITY_KINDS:
        return True
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict) and str(err.get("code") or "").lower() in _CAPACITY_KINDS:
        return True
    return _error_message(body, "").lower().startswith("resource unavailable")


def error_for_status(
    status: int,
    headers: Mapping[str, str],
    body: Any,
    *,
    max_retry_after: float = DEFAULT_MAX_RETRY_AFTER,
) -> LLMBatchError:
    """Map a non-2xx response to the error tree: by status first, then by the typed body."""
    message = f"HTTP {status}: {_error_message(body, str(body)[:500])}"
    if (google := _google_status(body)) is not None:
        message = f"HTTP {status} {google}: {_error_message(body, '')}"
    kind = _error_type(body)
    if status == 498 or (status == 429 and _capacity_refusal(body)):
        return CapacityError(
            message,
            retry_after=parse_retry_after(headers, cap=max_retry_after),
            status_code=status,
            body=body,
        )
    if status == 429:
        retry_after = parse_retry_after(headers, cap=max_retry_after)
        if retry_after is None:  # Google says it in the body, not in a header
            retry_after = google_retry_delay(body, cap=max_retry_after)
        return RateLimitError(
            message,
            retry_after=retry_after,
            rate_limit=rate_limit_info(headers),
            status_code=status,
            body=body,
        )
    if status in (401, 403) or _google_reason(body) == "API_KEY_INVALID":
        # Google answers a wrong key with a 400 whose ErrorInfo names the reason.
        return AuthenticationError(message, status_code=status, body=body)
    if status == 529 or kind == "overloaded_error":
        return OverloadedError(message, status_code=status, body=body)
    if status in (408, 409) or status >= 500:
        return ServerError(message, status_code=status, body=body)
    if 400 <= status < 500:
        return BadRequestError(message, status_code=status, body=body)
    return InvalidResponseError(f"unexpected HTTP {status}", status_code=status, body=body)


class _TooLarge(Exception):
    pass


async def _read_capped(resp: aiohttp.ClientResponse, cap: int) -> bytes:
    """The body, read in chunks; raises `_TooLarge` as soon as it passes `cap` bytes."""
    declared = resp.content_length
    if declared is not None and declared > cap:
        raise _TooLarge(f"declared {declared} bytes")
    content = resp.content
    # `read(n)` calls, not `iter_chunked(n)`: the same chunks without an async iterator per
    # response, and a body that arrived whole (most answers) is one call.
    chunk = await content.read(_READ_CHUNK)
    if content.at_eof():
        if len(chunk) > cap:
            raise _TooLarge(f"more than {cap} bytes sent")
        return chunk
    buf = bytearray(chunk)
    while chunk:
        chunk = await content.read(_READ_CHUNK)
        buf += chunk
        if len(buf) > cap:
            raise _TooLarge(f"more than {cap} bytes sent")
    return bytes(buf)


class _NoAgentRequest(aiohttp.ClientRequest):
    """A request without aiohttp's `User-Agent` (it names the library and the Python version).

    The session's `skip_auto_headers=("User-Agent",)` did the same, but aiohttp then builds
    and sorts a header set for every request (several microseconds each); this removes the
    one header after aiohttp's fast path. A User-Agent the caller set is kept.
    """

    def update_auto_headers(self, skip_auto_headers: Iterable[str] | None) -> None:
        agent = self.headers.get(hdrs.USER_AGENT)
        super().update_auto_headers(skip_auto_headers)
        if agent is None:
            self.headers.popall(hdrs.USER_AGENT, None)


class HTTPClient:
    """An aiohttp session per event loop, created on first use and closed by `aclose()`.

        http = HTTPClient("http://127.0.0.1:8000/v1", {"Authorization": "Bearer k"})
        status, headers, body = await http.post_json("/chat/completions", payload)

    A session is bound to the loop it was made on; the sync API runs each batch on a fresh
    loop, so the session is remade when the loop changes. An injected `session` is used as
    is (its own pool and timeouts) and never closed here: its owner closes it.

    `max_connections=None` (the default) leaves the pool unbounded, so the engine's
    concurrency is the only limit; connections are still kept alive and reused.
    """

    def __init__(
        self,
        base_url: str,
        headers: Mapping[str, str],
        *,
        max_connections: int | None = DEFAULT_MAX_CONNECTIONS,
        connect_timeout: float | None = DEFAULT_CONNECT_TIMEOUT,
        max_retry_after: float = DEFAULT_MAX_RETRY_AFTER,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        redactor: Redactor | None = None,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        if max_connections is not None and max_connections < 1:
            raise ValueError(f"max_connections must be >= 1 or None, got {max_connections}")
        if max_response_bytes < 1:
            raise ValueError(f"max_response_bytes must be >= 1, got {max_response_bytes}")
        self.base_url = base_url.rstrip("/")
        self.redactor = redactor or Redactor()
        # The URL as messages and reprs show it: never its user:password@.
        self.public_url = self.redactor(public_url(self.base_url))
        has_credentials = urlsplit(self.base_url).username is not None
        if has_credentials and any(k.lower() == "authorization" for k in headers):
            # aiohttp sends URL credentials as an Authorization header: the two clash.
            raise ClientConfigError(
                "base_url",
                "holds credentials (user:password@) and an Authorization header is set too "
                "(the API key): both cannot be sent, use one of them",
            )
        # A CIMultiDict, which aiohttp takes as it is (a dict is converted on every request).
        self._headers: CIMultiDict[str] = CIMultiDict(
            {**dict(headers), "Content-Type": "application/json"}
        )
        self.max_connections = max_connections
        self._connect_timeout = connect_timeout
        self.max_retry_after = max_retry_after
        self.max_response_bytes = max_response_bytes
        self._injected = session
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:  # never show headers: they hold the key
        return f"{type(self).__name__}(base_url={self.public_url!r})"

    def _get_session(self) -> aiohttp.ClientSession:
        if self._injected is not None:
            return self._injected
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._loop is not loop:
            connector = aiohttp.TCPConnector(
                limit=self.max_connections or 0, limit_per_host=0, ttl_dns_cache=300
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                # sock_connect, not connect: `connect` would also count the wait for a pool
                # slot, failing healthy requests when the user caps the pool.
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self._connect_timeout),
                json_serialize=lambda o: orjson.dumps(o).decode(),
                request_class=_NoAgentRequest,
            )
            self._loop = loop
        return self._session

    async def post_json(
        self, path: str, payload: Mapping[str, Any]
    ) -> tuple[int, Mapping[str, str], Any]:
        """POST and decode; raise the mapped error for non-2xx and transport failures.

        Every error raised here has been through the client's `Redactor`.
        """
        # One coroutine, not a wrapper around another: every resumption of a request in
        # flight passes through each frame of its await chain.
        try:
            session = self._get_session()
            data = orjson.dumps(payload)
            # Transport errors are translated here, once, and without their aiohttp chain
            # (`from None`): the cause's text is kept in the message, where it can be redacted.
            where = self.public_url
            try:
                async with session.post(
                    self.base_url + path, data=data, headers=self._headers
                ) as resp:
                    status, headers = resp.status, resp.headers
                    try:
                        raw = await _read_capped(resp, self.max_response_bytes)
                    except _TooLarge as too_large:
                        resp.close()  # drop the connection: the rest of the body is never read
                        raise InvalidResponseError(
                            f"HTTP {status} response body from {where} exceeds "
                            f"max_response_bytes={self.max_response_bytes} ({too_large}); "
                            "the request failed",
                            status_code=status,
                        ) from None
            except aiohttp.ConnectionTimeoutError:
                raise APIConnectionError(
                    f"connection to {where} not established within {self._connect_timeout}s"
                ) from None
            except aiohttp.ClientConnectionError as exc:
                raise APIConnectionError(f"connection to {where} failed: {exc}") from None
            except aiohttp.ClientPayloadError as exc:
                raise APIConnectionError(f"response from {where} cut short: {exc}") from None
            except aiohttp.ClientResponseError as exc:
                raise APIConnectionError(f"bad response from {where}: {exc}") from None
            except TimeoutError:
                raise RequestTimeoutError(f"request to {where} timed out") from None
            return status, headers, _decoded(status, headers, raw, self.max_retry_after)
        except LLMBatchError as exc:
            raise scrub_error(exc, self.redactor) from None

    async def aclose(self) -> None:
        """Close the session this client made (an injected one is left to its owner)."""
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None


# -- the other verbs: provider batch APIs (files, batches, result downloads) ------------------


def _same_origin(a: str, b: str) -> bool:
    pa, pb = urlsplit(a), urlsplit(b)
    return (pa.scheme, pa.hostname, pa.port) == (pb.scheme, pb.hostname, pb.port)


async def _exchange_json(
    http: HTTPClient,
    method: str,
    url: str,
    *,
    data: Any,
    headers: Mapping[str, str],
    params: Mapping[str, str] | None,
) -> tuple[int, Mapping[str, str], Any]:
    session = http._get_session()
    where = http.public_url
    try:
        async with session.request(method, url, data=data, headers=headers, params=params) as resp:
            status, resp_headers = resp.status, resp.headers
            try:
                raw = await _read_capped(resp, http.max_response_bytes)
            except _TooLarge as too_large:
                resp.close()
                raise InvalidResponseError(
                    f"HTTP {status} response body from {where} exceeds "
                    f"max_response_bytes={http.max_response_bytes} ({too_large})",
                    status_code=status,
                ) from None
    except aiohttp.ClientConnectionError as exc:
        raise APIConnectionError(f"connection to {where} failed: {exc}") from None
    except (aiohttp.ClientPayloadError, aiohttp.ClientResponseError) as exc:
        raise APIConnectionError(f"bad response from {where}: {exc}") from None
    except TimeoutError:
        raise RequestTimeoutError(f"request to {where} timed out") from None
    return status, resp_headers, _decoded(status, resp_headers, raw, http.max_retry_after)


def _decoded(status: int, headers: Mapping[str, str], raw: bytes, max_retry_after: float) -> Any:
    """The JSON body of a 2xx answer; the error it stands for otherwise (a non-JSON error
    body is kept as text, cut to 2,000 characters)."""
    try:
        body: Any = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        if 200 <= status < 300:
            raise InvalidResponseError(
                f"HTTP {status} body is not JSON: {raw[:200]!r}", status_code=status
            ) from None
        body = raw[:2000].decode("utf-8", "replace")
    if not 200 <= status < 300:
        raise error_for_status(status, headers, body, max_retry_after=max_retry_after)
    return body


class APIRequests:
    """GET/POST/DELETE with JSON, multipart and file bodies, and streamed JSONL downloads, on
    a `HTTPClient`'s session and headers (the batch APIs' files, batches and results).

        api = APIRequests(client.http)
        batch = await api.json("GET", "/batches/batch_abc")
        async for line in api.lines("/files/file_abc/content"): ...

    A path is joined to the base URL; a full URL (Anthropic's `results_url`) is accepted only
    on the base URL's scheme, host and port, so the key is never sent elsewhere. Every error
    has been through the client's `Redactor`.
    """

    def __init__(self, http: HTTPClient) -> None:
        self.http = http

    def url(self, path_or_url: str) -> str:
        if "://" not in path_or_url:
            return self.http.base_url + path_or_url
        if not _same_origin(path_or_url, self.http.base_url):
            raise InvalidResponseError(
                f"refusing to send the API key to {self.http.redactor(path_or_url)!r}: not "
                f"the base URL's host ({self.http.public_url!r})"
            )
        return path_or_url

    def _headers(self, content_type: str | None) -> dict[str, str]:
        headers = {k: v for k, v in self.http._headers.items() if k.lower() != "content-type"}
        if content_type:
            headers["Content-Type"] = content_type
        return headers

    async def json(
        self,
        method: str,
        path: str,
        payload: Any = None,
        *,
        params: Mapping[str, str] | None = None,
    ) -> Any:
        """Send `payload` as JSON (if given); return the decoded JSON answer."""
        data = orjson.dumps(payload) if payload is not None else None
        try:
            _, _, body = await _exchange_json(
                self.http,
                method,
                self.url(path),
                data=data,
                headers=self._headers("application/json" if data is not None else None),
                params=params,
            )
        except LLMBatchError as exc:
            raise scrub_error(exc, self.http.redactor) from None
        return body

    async def send(
        self,
        method: str,
        path: str,
        *,
        payload: Any = None,
        file_path: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[Mapping[str, str], Any]:
        """`json` (a JSON `payload`) or `post_file` (the file at `file_path` as the body), with
        `headers` added; returns the answer's headers too (Google's resumable upload names
        its upload URL in one)."""
        content_type = "application/json" if payload is not None else None
        sent = {**self._headers(content_type), **(headers or {})}
        try:
            if file_path is not None:
                # aiohttp reads a file body in its executor; only the open happens here.
                with open(file_path, "rb") as f:  # noqa: ASYNC230
                    _, answer_headers, body = await _exchange_json(
                        self.http, method, self.url(path), data=f, headers=sent, params=None
                    )
            else:
                data = orjson.dumps(payload) if payload is not None else None
                _, answer_headers, body = await _exchange_json(
                    self.http, method, self.url(path), data=data, headers=sent, params=None
                )
        except LLMBatchError as exc:
            raise scrub_error(exc, self.http.redactor) from None
        return answer_headers, body

    async def post_file(self, path: str, file_path: str, content_type: str) -> Any:
        """POST a file as the raw body (streamed from disk); return the decoded answer."""
        try:
            # aiohttp reads a file body in its executor; only the open happens here.
            with open(file_path, "rb") as f:  # noqa: ASYNC230
                _, _, body = await _exchange_json(
                    self.http,
                    "POST",
                    self.url(path),
                    data=f,
                    headers=self._headers(content_type),
                    params=None,
                )
        except LLMBatchError as exc:
            raise scrub_error(exc, self.http.redactor) from None
        return body

    async def post_multipart(
        self, path: str, fields: Mapping[str, str], file_field: str, file_path: str, filename: str
    ) -> Any:
        """POST multipart/form-data: `fields` plus one file streamed from disk."""
        try:
            # aiohttp reads a file body in its executor; only the open happens here.
            with open(file_path, "rb") as f:  # noqa: ASYNC230
                form = aiohttp.FormData()
                for name, value in fields.items():
                    form.add_field(name, value)
                form.add_field(file_field, f, filename=filename, content_type="application/jsonl")
                _, _, body = await _exchange_json(
                    self.http,
                    "POST",
                    self.url(path),
                    data=form,
                    headers=self._headers(None),
                    params=None,
                )
        except LLMBatchError as exc:
            raise scrub_error(exc, self.http.redactor) from None
        return body

    async def lines(self, path: str, *, max_line_bytes: int | None = None) -> AsyncIterator[bytes]:
        """The non-empty lines of a (possibly huge) text body, read in chunks: memory holds one
        line at a time, each at most `max_line_bytes` (default the client's body cap)."""
        cap = max_line_bytes or self.http.max_response_bytes
        url = self.url(path)
        where = self.http.public_url
        session = self.http._get_session()
        try:
            async with session.get(url, headers=self._headers(None)) as resp:
                if not 200 <= resp.status < 300:
                    raw = await _read_capped(resp, 64 * 1024)
                    try:
                        body: Any = orjson.loads(raw)
                    except orjson.JSONDecodeError:
                        body = raw.decode("utf-8", "replace")
                    raise error_for_status(resp.status, resp.headers, body)
                buf = b""
                async for chunk in resp.content.iter_chunked(_READ_CHUNK):
                    buf += chunk
                    *complete, buf = buf.split(b"\n")
                    for line in complete:
                        if line.strip():
                            yield line
                    if len(buf) > cap:
                        raise InvalidResponseError(f"a line of {url} exceeds {cap} bytes")
                if buf.strip():
                    yield buf
        except LLMBatchError as exc:
            raise scrub_error(exc, self.http.redactor) from None
        except _TooLarge:
            raise InvalidResponseError(f"error body from {where} too large") from None
        except aiohttp.ClientConnectionError as exc:
            raise APIConnectionError(f"connection to {where} failed: {exc}") from None
        except (aiohttp.ClientPayloadError, aiohttp.ClientResponseError) as exc:
            raise APIConnectionError(f"download from {where} cut short: {exc}") from None
        except TimeoutError:
            raise RequestTimeoutError(f"download from {where} timed out") from None
