"""A client for OpenAI and every OpenAI-compatible server (vLLM, Ollama, llama.cpp server,
LM Studio, Together, Groq...), on aiohttp.

    async with OpenAIClient(model="gpt-4o-mini") as client:          # OPENAI_API_KEY
        resp = await client.complete(CompletionRequest(prompt="Hi", max_tokens=20))

    OpenAIClient(base_url="http://localhost:8000/v1", model="Qwen/Qwen2.5-7B", api_key="-")

`CompletionRequest.endpoint` picks the route: "chat" (/chat/completions), "completions"
(/completions) or "embeddings" (/embeddings; the response's `raw` holds the vectors).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from ..errors import AuthenticationError
from ..types import CompletionRequest, CompletionResponse, Usage
from ._http import DEFAULT_MAX_CONNECTIONS, HTTPClient, ProviderClient, rate_limit_info

__all__ = ["OpenAIClient"]

DEFAULT_BASE_URL = "https://api.openai.com/v1"
_PATHS = {"chat": "/chat/completions", "completions": "/completions", "embeddings": "/embeddings"}


class OpenAIClient(ProviderClient):
    """`LLMClient` for the OpenAI HTTP API. The key comes from `api_key` or `OPENAI_API_KEY`,
    the base URL from `base_url` or `OPENAI_BASE_URL`. One connection pool of
    `max_connections`, reused across requests; close it with `aclose()` or `async with`.
    """

    def __init__(
        self,
        *,
        model: str | None = None,
        base_url: str | None = None,
        api_key: str | None = None,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        organization: str | None = None,
        extra_headers: Mapping[str, str] | None = None,
        require_api_key: bool = False,
    ) -> None:
        key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        if require_api_key and not key:
            raise AuthenticationError("no API key: pass api_key= or set OPENAI_API_KEY")
        self.model = model
        url = base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL
        headers = {"Accept": "application/json", **(extra_headers or {})}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        if organization:
            headers["OpenAI-Organization"] = organization
        self.http = HTTPClient(url, headers, max_connections=max_connections)

    def body_for(self, request: CompletionRequest) -> dict[str, Any]:
        """The JSON body this client sends for `request` (also the cache key's basis)."""
        model = request.model or self.model
        body: dict[str, Any] = {}
        if model:
            body["model"] = model
        if request.endpoint == "embeddings":
            body["input"] = request.prompt
        elif request.endpoint == "completions":
            body["prompt"] = request.prompt
        else:
            messages: list[Any] = []
            if request.system:
                messages.append({"role": "system", "content": request.system})
            if request.messages:
                messages.extend(request.messages)
            if request.prompt:
                messages.append({"role": "user", "content": request.prompt})
            body["messages"] = messages
            if request.response_format == "json":
                body["response_format"] = {"type": "json_object"}
        if request.endpoint != "embeddings":
            if request.temperature is not None:
                body["temperature"] = request.temperature
            if request.max_tokens is not None:
                body["max_tokens"] = request.max_tokens
        if request.extra:
            body.update(request.extra)
        return body

    def path_for(self, request: CompletionRequest) -> str:
        return _PATHS[request.endpoint]

    def parse(
        self, request: CompletionRequest, status: int, headers: Mapping[str, str], body: Any
    ) -> CompletionResponse:
        return _parse(request, status, headers, body)


def _parse(
    request: CompletionRequest, status: int, headers: Mapping[str, str], body: Any
) -> CompletionResponse:
    usage = body.get("usage") or {}
    if request.endpoint == "embeddings":
        content = ""
        body["data"][0]["embedding"]
        finish = None
    elif request.endpoint == "completions":
        choice = body["choices"][0]
        content, finish = choice["text"], choice.get("finish_reason")
    else:
        choice = body["choices"][0]
        content, finish = choice["message"]["content"] or "", choice.get("finish_reason")
    if not isinstance(content, str):
        raise TypeError("content is not a string")
    return CompletionResponse(
        content=content,
        model=body.get("model", ""),
        usage=Usage(int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))),
        request_id=headers.get("x-request-id") or body.get("id"),
        finish_reason=finish,
        raw=body,
        status_code=status,
        rate_limit=rate_limit_info(headers),
    )
