"""A client for Anthropic's Messages API, on aiohttp.

    async with AnthropicClient(model="claude-sonnet-4-5") as client:   # ANTHROPIC_API_KEY
        resp = await client.complete(CompletionRequest(prompt="Hi", max_tokens=200))

`max_tokens` is required by the API: requests without one get `default_max_tokens`.
Anthropic has no JSON mode; for `response_format="json"` the system prompt asks for JSON and
the engine checks the reply (retrying once if it does not parse).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from ..errors import AuthenticationError, UnsupportedRequestError
from ..types import CompletionRequest, CompletionResponse, Usage
from ._http import DEFAULT_MAX_CONNECTIONS, HTTPClient, ProviderClient, rate_limit_info

__all__ = ["AnthropicClient"]

DEFAULT_BASE_URL = "https://api.anthropic.com"
API_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 1024
_JSON_INSTRUCTION = "Respond with a single valid JSON object and nothing else."


class AnthropicClient(ProviderClient):
    """`LLMClient` for Anthropic. The key comes from `api_key` or `ANTHROPIC_API_KEY`, the
    base URL from `base_url` or `ANTHROPIC_BASE_URL`."""

    def __init__(
        self,
        *,
        model: str | None = None,
        base_url: str | None = None,
        api_key: str | None = None,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        default_max_tokens: int = DEFAULT_MAX_TOKENS,
        api_version: str = API_VERSION,
        require_api_key: bool = False,
    ) -> None:
        key = api_key if api_key is not None else os.environ.get("ANTHROPIC_API_KEY")
        if require_api_key and not key:
            raise AuthenticationError("no API key: pass api_key= or set ANTHROPIC_API_KEY")
        self.model = model
        self.default_max_tokens = default_max_tokens
        url = base_url or os.environ.get("ANTHROPIC_BASE_URL") or DEFAULT_BASE_URL
        headers = {"anthropic-version": api_version, "Accept": "application/json"}
        if key:
            headers["x-api-key"] = key
        self.http = HTTPClient(url, headers, max_connections=max_connections)

    def body_for(self, request: CompletionRequest) -> dict[str, Any]:
        if request.endpoint != "chat":
            raise UnsupportedRequestError(
                f"Anthropic has no {request.endpoint!r} endpoint; use chat requests"
            )
        messages: list[Any] = []
        system = request.system
        for m in request.messages or ():
            if m.get("role") == "system":  # OpenAI-style system message -> top-level field
                system = "\n\n".join(filter(None, [system, str(m.get("content", ""))]))
            else:
                messages.append(dict(m))
        if request.prompt:
            messages.append({"role": "user", "content": request.prompt})
        if request.response_format == "json":
            system = "\n\n".join(filter(None, [system, _JSON_INSTRUCTION]))
        body: dict[str, Any] = {
            "model": request.model or self.model,
            "max_tokens": request.max_tokens or self.default_max_tokens,
            "messages": messages,
        }
        if system:
            body["system"] = system
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.extra:
            body.update(request.extra)
        return body

    def path_for(self, request: CompletionRequest) -> str:
        return "/v1/messages"

    def parse(
        self, request: CompletionRequest, status: int, headers: Mapping[str, str], body: Any
    ) -> CompletionResponse:
        return _parse(status, headers, body)


def _parse(status: int, headers: Mapping[str, str], body: Any) -> CompletionResponse:
    text = "".join(block["text"] for block in body["content"] if block.get("type") == "text")
    usage = body["usage"]
    return CompletionResponse(
        content=text,
        model=body.get("model", ""),
        usage=Usage(int(usage.get("input_tokens", 0)), int(usage.get("output_tokens", 0))),
        request_id=headers.get("request-id") or body.get("id"),
        finish_reason=body.get("stop_reason"),
        raw=body,
        status_code=status,
        rate_limit=rate_limit_info(headers),
    )
