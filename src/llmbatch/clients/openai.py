"""A client for OpenAI and every OpenAI-compatible server (vLLM, Ollama, llama.cpp server,
LM Studio, Together, Groq...), on aiohttp.

    async with OpenAIClient(model="gpt-4o-mini") as client:          # OPENAI_API_KEY
        resp = await client.complete(CompletionRequest(prompt="Hi", max_tokens=20))

    OpenAIClient(base_url="http://localhost:8000/v1", model="Qwen/Qwen2.5-7B", api_key="-")

`CompletionRequest.endpoint` picks the route: "chat" (/chat/completions), "responses"
(/responses, OpenAI's Responses API: `llmbatch.responses_api`), "completions" (/completions)
or "embeddings" (/embeddings; the response's `raw` holds the vectors).

A request's `schema` is sent as `response_format={"type": "json_schema", "json_schema":
{"name", "schema", "strict"}}` (strict only when the schema qualifies, see `llmbatch.schema`),
or in prompt mode as JSON mode plus the schema in the system prompt. A refusal
(`message.refusal`) is read into `CompletionResponse.refusal`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from .. import responses_api
from ..errors import UnsupportedRequestError
from ..schema import Schema
from ..types import CompletionRequest, CompletionResponse, Usage, conversational
from ._http import rate_limit_info
from .provider import ClientOptions, ProviderClient

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["OpenAIClient"]

DEFAULT_BASE_URL = "https://api.openai.com/v1"
_PATHS = {
    "chat": "/chat/completions",
    "responses": "/responses",
    "completions": "/completions",
    "embeddings": "/embeddings",
}


class OpenAIClient(ProviderClient):
    """`LLMClient` for the OpenAI HTTP API. The key comes from `api_key` or `OPENAI_API_KEY`,
    the base URL from `base_url` or `OPENAI_BASE_URL`; sent as `Authorization: Bearer KEY`.
    Options (pool, timeouts, body cap, injected session) are those of `ProviderClient`.
    """

    name: ClassVar[str] = "openai"
    key_env: ClassVar[str] = "OPENAI_API_KEY"
    base_url_env: ClassVar[str] = "OPENAI_BASE_URL"
    default_base_url: ClassVar[str] = DEFAULT_BASE_URL

    def __init__(
        self, *, organization: str | None = None, **options: Unpack[ClientOptions]
    ) -> None:
        self.organization = organization
        super().__init__(**options)

    def auth_headers(self, key: str) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {key}"}
        if self.organization:
            headers["OpenAI-Organization"] = self.organization
        return headers

    def body_for(self, request: CompletionRequest) -> dict[str, Any]:
        """The JSON body this client sends for `request` (also the cache key's basis)."""
        model = request.model or self.model
        if request.endpoint == "responses":
            return responses_api.request_body(request, model)
        body: dict[str, Any] = {}
        if model:
            body["model"] = model
        if request.endpoint == "embeddings":
            body["input"] = request.prompt
        elif request.endpoint == "completions":
            body["prompt"] = request.prompt
        else:
            messages: list[Any] = []
            system = request.system
            if request.schema is not None and request.schema.mode == "prompt":
                system = "\n\n".join(filter(None, [system, request.schema.instruction()]))
            if system:
                messages.append({"role": "system", "content": system})
            if request.messages:
                messages.extend(request.messages)
            if request.prompt:
                messages.append({"role": "user", "content": request.prompt})
            body["messages"] = messages
            if request.schema is not None:
                body["response_format"] = response_format(request.schema)
            elif request.response_format == "json":
                body["response_format"] = {"type": "json_object"}
        if request.schema is not None and not conversational(request):
            raise UnsupportedRequestError(
                f"a schema needs a chat or responses request; this one is for {request.endpoint!r}"
            )
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


def response_format(schema: Schema) -> dict[str, Any]:
    """The chat `response_format` for `schema`: native json_schema, or JSON mode."""
    if schema.mode == "prompt":
        return {"type": "json_object"}
    spec: dict[str, Any] = {"name": schema.name, "schema": schema.json_schema}
    if schema.description:
        spec["description"] = schema.description
    spec["strict"] = schema.strict
    return {"type": "json_schema", "json_schema": spec}


def _parse(
    request: CompletionRequest, status: int, headers: Mapping[str, str], body: Any
) -> CompletionResponse:
    refusal = None
    if request.endpoint == "responses":
        content, finish, refusal, usage = responses_api.read_reply(status, body)
    else:
        usage = _usage(body.get("usage") or {})
    if request.endpoint == "embeddings":
        content = ""
        body["data"][0]["embedding"]
        finish = None
    elif request.endpoint == "completions":
        choice = body["choices"][0]
        content, finish = choice["text"], choice.get("finish_reason")
    elif request.endpoint != "responses":
        choice = body["choices"][0]
        content, finish = choice["message"]["content"] or "", choice.get("finish_reason")
        refusal = choice["message"].get("refusal") or None
    if not isinstance(content, str):
        raise TypeError("content is not a string")
    return CompletionResponse(
        content=content,
        model=body.get("model", ""),
        usage=usage,
        request_id=headers.get("x-request-id") or body.get("id"),
        finish_reason=finish,
        raw=body,
        status_code=status,
        rate_limit=rate_limit_info(headers),
        refusal=refusal,
    )


def _usage(usage: Mapping[str, Any]) -> Usage:
    details = usage.get("prompt_tokens_details")
    cached = None
    # A dict (what orjson decodes) or None is told apart without `Mapping`'s ABC check, a
    # Python-level call on every reply.
    if details is not None and (type(details) is dict or isinstance(details, Mapping)):
        cached = details.get("cached_tokens")
    return Usage(
        int(usage.get("prompt_tokens") or 0),
        int(usage.get("completion_tokens") or 0),
        cached_tokens=int(cached or 0),
    )
