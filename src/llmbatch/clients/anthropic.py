"""A client for Anthropic's Messages API, on aiohttp.

    async with AnthropicClient(model="claude-sonnet-4-5") as client:   # ANTHROPIC_API_KEY
        resp = await client.complete(CompletionRequest(prompt="Hi", max_tokens=200))

`max_tokens` is required by the API: requests without one get `default_max_tokens`.
Anthropic has no JSON mode; for `response_format="json"` the system prompt asks for JSON and
the engine checks the reply (retrying once if it does not parse).

A request's `schema` becomes a forced tool (`tools=[{name, description, input_schema}]`,
`tool_choice={"type": "tool", "name": ...}`) and the reply is that tool call's `input`,
re-encoded as JSON text; in prompt mode the schema goes into the system prompt instead.
`stop_reason: "refusal"` is read into `CompletionResponse.refusal`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import orjson

from ..errors import UnsupportedRequestError
from ..text import content_text
from ..types import CompletionRequest, CompletionResponse, Usage
from ._http import rate_limit_info
from .provider import ClientOptions, ProviderClient

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["AnthropicClient"]

DEFAULT_BASE_URL = "https://api.anthropic.com"
API_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 1024
_JSON_INSTRUCTION = "Respond with a single valid JSON object and nothing else."


class AnthropicClient(ProviderClient):
    """`LLMClient` for Anthropic. The key comes from `api_key` or `ANTHROPIC_API_KEY`, the
    base URL from `base_url` or `ANTHROPIC_BASE_URL`; sent as `x-api-key` with the
    `anthropic-version` header. Other options are those of `ProviderClient`."""

    name: ClassVar[str] = "anthropic"
    key_env: ClassVar[str] = "ANTHROPIC_API_KEY"
    base_url_env: ClassVar[str] = "ANTHROPIC_BASE_URL"
    default_base_url: ClassVar[str] = DEFAULT_BASE_URL

    def __init__(
        self,
        *,
        default_max_tokens: int = DEFAULT_MAX_TOKENS,
        api_version: str = API_VERSION,
        **options: Unpack[ClientOptions],
    ) -> None:
        self.default_max_tokens = default_max_tokens
        self.api_version = api_version
        options["extra_headers"] = {
            "anthropic-version": api_version,
            **(options.get("extra_headers") or {}),
        }
        super().__init__(**options)

    def auth_headers(self, key: str) -> dict[str, str]:
        return {"x-api-key": key}

    def body_for(self, request: CompletionRequest) -> dict[str, Any]:
        if request.endpoint != "chat":
            raise UnsupportedRequestError(
                f"Anthropic has no {request.endpoint!r} endpoint; use chat requests"
            )
        messages: list[Any] = []
        system = request.system
        for m in request.messages or ():
            if m.get("role") == "system":  # OpenAI-style system message -> top-level field
                system = "\n\n".join(filter(None, [system, content_text(m.get("content"))]))
            else:
                messages.append(dict(m))
        if request.prompt:
            messages.append({"role": "user", "content": request.prompt})
        schema = request.schema
        if schema is not None and schema.mode == "prompt":
            system = "\n\n".join(filter(None, [system, schema.instruction()]))
        elif request.response_format == "json" and schema is None:
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
        if schema is not None and schema.mode == "native":
            tool: dict[str, Any] = {"name": schema.name, "input_schema": schema.json_schema}
            tool["description"] = schema.description or "Record the answer in this structure."
            body["tools"] = [tool]
            body["tool_choice"] = {"type": "tool", "name": schema.name}
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
    blocks = body["content"]
    text = "".join(block["text"] for block in blocks if block.get("type") == "text")
    # A forced tool's answer is its input; the text (if any) is the model's preamble.
    tool_input = next((b["input"] for b in blocks if b.get("type") == "tool_use"), None)
    if tool_input is not None:
        text = orjson.dumps(tool_input).decode()
    stop = body.get("stop_reason")
    usage = body["usage"]
    return CompletionResponse(
        content=text,
        model=body.get("model", ""),
        usage=_usage(usage),
        request_id=headers.get("request-id") or body.get("id"),
        finish_reason=stop,
        raw=body,
        status_code=status,
        rate_limit=rate_limit_info(headers),
        refusal=(text or "refused (stop_reason: refusal)") if stop == "refusal" else None,
    )


def _usage(usage: Mapping[str, Any]) -> Usage:
    # Anthropic's input_tokens leaves out the tokens read from or written to the prompt
    # cache; our prompt_tokens counts every input token, as OpenAI's does.
    read = int(usage.get("cache_read_input_tokens") or 0)
    written = int(usage.get("cache_creation_input_tokens") or 0)
    by_ttl = usage.get("cache_creation")
    hour = by_ttl.get("ephemeral_1h_input_tokens") if isinstance(by_ttl, Mapping) else None
    return Usage(
        int(usage.get("input_tokens") or 0) + read + written,
        int(usage.get("output_tokens") or 0),
        cached_tokens=read,
        cache_write_tokens=written,
        cache_write_1h_tokens=min(written, int(hour or 0)),
    )
