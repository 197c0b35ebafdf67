"""The base of the HTTP clients: a provider is its configuration plus three small methods.

    class MistralClient(ProviderClient):
        name, key_env = "mistral", "MISTRAL_API_KEY"
        base_url_env, default_base_url = "MISTRAL_BASE_URL", "https://api.mistral.ai/v1"
        def auth_headers(self, key): return {"Authorization": f"Bearer {key}"}
        ...  # path_for, body_for, parse

The class attributes say where the key and the base URL come from and what the default URL
is; `auth_headers` says how the key is sent. `__init__` is shared: it resolves the key and
URL, builds the `Redactor` that masks them in every error this client raises, and the
`HTTPClient` (one pool per event loop, or the injected `session`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, ClassVar, Self, TypedDict

import aiohttp

from ..errors import (
    AuthenticationError,
    BadRequestError,
    InvalidResponseError,
    LLMBatchError,
    ServerError,
)
from ..redact import Redactor, header_secrets, scrub_error, url_secrets
from ..retry import DEFAULT_MAX_RETRY_AFTER
from ..types import CompletionRequest, CompletionResponse
from ._http import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_RESPONSE_BYTES,
    HTTPClient,
)
from .base import ClientConfigError

__all__ = ["ClientOptions", "ProviderClient"]

_SECRET_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "x-api-key", "api-key", "x-goog-api-key"}
)


def _checked_key(key: str | None, source: str | None) -> str | None:
    """The key as it will be sent: surrounding whitespace (a pasted key's newline, a space)
    removed, as every HTTP server removes it, so that the key masked in echoes is the one
    the server saw. A control character left inside cannot go in a header: one clear error
    now instead of every request failing."""
    if not key:
        return key
    key = key.strip()
    bad = next((i for i, ch in enumerate(key) if ord(ch) < 32 or ord(ch) == 127), None)
    if bad is not None:
        raise ClientConfigError(
            "api_key",
            f"holds a control character (code {ord(key[bad])}) at position {bad}: a key is "
            "one line of printable characters",
            source=source,
        )
    return key


def _schema_hint(request: CompletionRequest, error: LLMBatchError) -> LLMBatchError:
    """A request refused while its schema went the native way names `schema_mode`: servers
    without structured output (llama.cpp answers HTTP 500 "Input should be 'text' or
    'json_object'") take the schema in the prompt."""
    schema = request.schema
    refused = isinstance(error, BadRequestError) or (
        type(error) is ServerError and error.status_code not in (502, 503, 504)
    )
    if schema is None or schema.mode != "native" or not refused:
        return error
    error.setting = "schema_mode"
    error.message = (
        f"{error.message} (sent with its schema as the native response format; a server "
        'without structured output takes it in the prompt: schema_mode="prompt")'
    )
    error.args = (error.message, *error.args[1:])
    return error


def _prompt_cache_hint(request: CompletionRequest, error: LLMBatchError) -> LLMBatchError:
    """A 400 about prompt-cache settings on a request that carries them names `prompt_cache`:
    `prompt_cache="off"` sends the lines as they are, with only their own settings."""
    if not isinstance(error, BadRequestError):
        return error
    text = error.message.lower()
    if not any(word in text for word in ("cache_control", "prompt_cache_key", "cache control")):
        return error
    error.setting = "prompt_cache"
    error.message = (
        f"{error.message} (prompt-cache settings are added to requests that share a prefix "
        'by prompt_cache="auto"; prompt_cache="off" sends each line with only its own)'
    )
    error.args = (error.message, *error.args[1:])
    return error


class ClientOptions(TypedDict, total=False):
    """The keyword options every `ProviderClient` takes (for subclasses' `**options`)."""

    model: str | None
    base_url: str | None
    api_key: str | None
    max_connections: int | None
    connect_timeout: float | None
    max_response_bytes: int
    max_retry_after: float
    extra_headers: Mapping[str, str] | None
    session: aiohttp.ClientSession | None
    require_api_key: bool


class ProviderClient:
    """An `LLMClient` over HTTP: build a body, POST it, parse the reply.

    Subclasses set the class attributes and implement `auth_headers`, `path_for`, `body_for`
    and `parse`; a reply missing the fields `parse` reads becomes an `InvalidResponseError`.

    The key comes from `api_key` or the `key_env` variable, the base URL from `base_url`, the
    `base_url_env` variable or `default_base_url`. `max_connections=None` (default) leaves
    the pool unbounded so the engine's concurrency is the only bound; `session` injects an
    aiohttp session that this client uses but never closes.
    """

    name: ClassVar[str]
    key_env: ClassVar[str]
    # Read when `key_env` is unset (Gemini: GOOGLE_API_KEY, as its SDK does).
    other_key_envs: ClassVar[tuple[str, ...]] = ()
    base_url_env: ClassVar[str]
    default_base_url: ClassVar[str]

    http: HTTPClient
    model: str | None

    def __init__(
        self,
        *,
        model: str | None = None,
        base_url: str | None = None,
        api_key: str | None = None,
        max_connections: int | None = DEFAULT_MAX_CONNECTIONS,
        connect_timeout: float | None = DEFAULT_CONNECT_TIMEOUT,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        max_retry_after: float = DEFAULT_MAX_RETRY_AFTER,
        extra_headers: Mapping[str, str] | None = None,
        session: aiohttp.ClientSession | None = None,
        require_api_key: bool = False,
    ) -> None:
        source = None if api_key is not None else self.key_env
        key = _checked_key(api_key if api_key is not None else os.environ.get(self.key_env), source)
        if require_api_key and not key:
            raise AuthenticationError(f"no API key: pass api_key= or set {self.key_env}")
        self.model = model
        url = base_url or os.environ.get(self.base_url_env) or self.default_base_url
        headers = {"Accept": "application/json", **(extra_headers or {})}
        if key:
            headers.update(self.auth_headers(key))
        secrets = [key, *url_secrets(url)]
        for name, value in headers.items():
            if name.lower() in _SECRET_HEADERS:
                secrets += header_secrets(value)
        self.redactor = Redactor(secrets)
        self.http = HTTPClient(
            url,
            headers,
            max_connections=max_connections,
            connect_timeout=connect_timeout,
            max_retry_after=max_retry_after,
            max_response_bytes=max_response_bytes,
            redactor=self.redactor,
            session=session,
        )

    def auth_headers(self, key: str) -> dict[str, str]:
        """The headers that carry `key` (and any the provider requires with it)."""
        raise NotImplementedError

    @property
    def base_url(self) -> str:
        return self.http.base_url

    def __repr__(self) -> str:  # never the headers: they hold the key
        url = self.http.public_url
        return f"{type(self).__name__}(base_url={url!r}, model={self.model!r})"

    def path_for(self, request: CompletionRequest) -> str:
        raise NotImplementedError

    def body_for(self, request: CompletionRequest) -> dict[str, Any]:
        raise NotImplementedError

    def parse(
        self, request: CompletionRequest, status: int, headers: Mapping[str, str], body: Any
    ) -> CompletionResponse:
        raise NotImplementedError

    async def complete(self, request: CompletionRequest) -> CompletionResponse:
        path, payload = self.path_for(request), self.body_for(request)
        try:
            status, headers, body = await self.http.post_json(path, payload)
        except (BadRequestError, ServerError) as exc:
            raise _schema_hint(request, _prompt_cache_hint(request, exc)) from None
        try:
            return self.parse(request, status, headers, body)
        except (KeyError, IndexError, TypeError, AttributeError) as exc:
            err = InvalidResponseError(
                f"HTTP {status} body lacks the expected fields ({exc!r}): {str(body)[:200]}",
                status_code=status,
                body=body,
            )
            raise scrub_error(err, self.redactor) from None
        except LLMBatchError as exc:
            raise scrub_error(exc, self.redactor) from None

    async def aclose(self) -> None:
        await self.http.aclose()

    async def release_loop_resources(self) -> None:
        """Close what is bound to the current event loop; the client stays usable."""
        await self.http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
