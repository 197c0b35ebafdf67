"""A client for Google's Gemini API (the native `generateContent`), on aiohttp.

    async with GeminiClient(model="gemini-2.5-flash") as client:     # GEMINI_API_KEY
        resp = await client.complete(CompletionRequest(prompt="Hi", max_tokens=200))

The key comes from `api_key`, `GEMINI_API_KEY` or `GOOGLE_API_KEY` (in that order, as the
google-genai SDK reads them) and is sent in the `x-goog-api-key` header, never as the `?key=`
query parameter, which would put it in every logged URL.

Routes (under the base URL, default https://generativelanguage.googleapis.com): `POST
/v1beta/models/{model}:generateContent` for chat requests, `:embedContent` for embeddings
(`:batchEmbedContents` for an `input` list). A request becomes `contents` (user and `model`
turns; OpenAI-style assistant turns are renamed), `systemInstruction` (the request's `system`
and any system messages) and `generationConfig` (`temperature`, `maxOutputTokens`, and for
JSON mode `responseMimeType: application/json`). A schema goes natively as
`responseJsonSchema` (the field that takes JSON Schema as is; `responseSchema` takes only an
OpenAPI subset), or in prompt mode into the system instruction. `request.extra` is merged into
the body, its `generationConfig` into ours key by key.

The reply: the first candidate's text parts (thought summaries left out); usage from
`usageMetadata` (`promptTokenCount` counts cached tokens too, as our `prompt_tokens` does;
thinking tokens are billed as output, so `completion_tokens` = candidates + thoughts).
`finishReason: MAX_TOKENS` is a truncated reply (`llmbatch.replies`); SAFETY, RECITATION and
the other blocking reasons, and a prompt blocked outright (`promptFeedback.blockReason`, no
candidates), are refusals. Errors map onto the tree by HTTP status in `_http.error_for_status`,
which also reads the `google.rpc.RetryInfo` detail of a 429 RESOURCE_EXHAUSTED. Gemini sends
no rate-limit headers: the pace is learned from its refusals.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import quote

from ..errors import UnsupportedRequestError
from ..text import content_text
from ..types import CompletionRequest, CompletionResponse, Usage
from .provider import ClientOptions, ProviderClient

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["API_VERSION", "BLOCKED_REASONS", "GeminiClient", "model_name"]

DEFAULT_BASE_URL = "https://generativelanguage.googleapis.com"
API_VERSION = "v1beta"
# finishReason / blockReason values meaning the model (or its filters) declined to answer.
BLOCKED_REASONS = frozenset(
    {
        "SAFETY",
        "RECITATION",
        "BLOCKLIST",
        "PROHIBITED_CONTENT",
        "SPII",
        "IMAGE_SAFETY",
        "IMAGE_PROHIBITED_CONTENT",
        "IMAGE_RECITATION",
    }
)
_ROLES = {"assistant": "model", "model": "model", "user": "user"}
# OpenAI-style sampling fields (as an OpenAI Batch input line carries them in its body) and
# their generationConfig names, so such a line runs on Gemini unchanged.
_GENERATION = {
    "top_p": "topP",
    "top_k": "topK",
    "seed": "seed",
    "presence_penalty": "presencePenalty",
    "frequency_penalty": "frequencyPenalty",
    "n": "candidateCount",
    "max_completion_tokens": "maxOutputTokens",
    "stop": "stopSequences",
}


def model_name(model: str | None) -> str:
    """The model's resource name as it goes in a path: "models/gemini-2.5-flash" (the prefix
    added where missing), or a tuned model's "tunedModels/...". `UnsupportedRequestError`
    without one: Gemini's routes name the model."""
    if not model:
        raise UnsupportedRequestError("Gemini needs a model (the route names it): set `model`")
    collection, _, name = model.rpartition("/")
    if collection not in ("", "models", "tunedModels"):
        raise UnsupportedRequestError(
            f"model {model!r}: give a model name, or models/NAME or tunedModels/NAME"
        )
    return f"{collection or 'models'}/{quote(name, safe='-._~')}"


class GeminiClient(ProviderClient):
    """`LLMClient` for the Gemini API. Options are those of `ProviderClient`; the base URL
    comes from `base_url`, `GEMINI_BASE_URL` or Google's."""

    name: ClassVar[str] = "gemini"
    key_env: ClassVar[str] = "GEMINI_API_KEY"
    other_key_envs: ClassVar[tuple[str, ...]] = ("GOOGLE_API_KEY",)
    base_url_env: ClassVar[str] = "GEMINI_BASE_URL"
    default_base_url: ClassVar[str] = DEFAULT_BASE_URL

    def __init__(self, **options: Unpack[ClientOptions]) -> None:
        if options.get("api_key") is None and not os.environ.get(self.key_env):
            # The SDK's fallback, so a key set for google-genai works here too.
            fallback = os.environ.get(self.other_key_envs[0])
            if fallback:
                options["api_key"] = fallback
        super().__init__(**options)

    def auth_headers(self, key: str) -> dict[str, str]:
        return {"x-goog-api-key": key}

    def path_for(self, request: CompletionRequest) -> str:
        verb = "generateContent"
        if request.endpoint == "embeddings":
            verb = "batchEmbedContents" if _texts(request) is not None else "embedContent"
        return f"/{API_VERSION}/{model_name(request.model or self.model)}:{verb}"

    def body_for(self, request: CompletionRequest) -> dict[str, Any]:
        """The JSON body of `request` (a batch line's `request` too)."""
        if request.endpoint == "embeddings":
            if request.schema is not None:
                raise UnsupportedRequestError("a schema needs a chat request, not embeddings")
            texts = _texts(request)
            if texts is None:
                return {"content": {"parts": [{"text": request.prompt}]}}
            model = model_name(request.model or self.model)
            return {
                "requests": [{"model": model, "content": {"parts": [{"text": t}]}} for t in texts]
            }
        if request.endpoint != "chat":
            raise UnsupportedRequestError(
                f"Gemini has no {request.endpoint!r} endpoint; use chat requests"
            )
        contents: list[dict[str, Any]] = []
        system = request.system
        for i, m in enumerate(request.messages or ()):
            role = m.get("role")
            text = _text_only(m.get("content"), i)
            if role == "system":
                system = "\n\n".join(filter(None, [system, text]))
            else:
                contents.append({"role": _ROLES.get(str(role), "user"), "parts": [{"text": text}]})
        if request.prompt:
            contents.append({"role": "user", "parts": [{"text": request.prompt}]})
        schema = request.schema
        if schema is not None and schema.mode == "prompt":
            system = "\n\n".join(filter(None, [system, schema.instruction()]))
        config: dict[str, Any] = {}
        if request.temperature is not None:
            config["temperature"] = request.temperature
        if request.max_tokens is not None:
            config["maxOutputTokens"] = request.max_tokens
        if schema is not None or request.response_format == "json":
            config["responseMimeType"] = "application/json"
        if schema is not None and schema.mode == "native":
            config["responseJsonSchema"] = dict(schema.json_schema)
        body: dict[str, Any] = {"contents": contents}
        if system:
            body["systemInstruction"] = {"parts": [{"text": system}]}
        if config:
            body["generationConfig"] = config
        if request.extra:
            extra = dict(request.extra)
            for name, field in _GENERATION.items():
                if name in extra:
                    value = extra.pop(name)
                    config[field] = [value] if name == "stop" and isinstance(value, str) else value
            more = extra.pop("generationConfig", None)
            body.update(extra)
            if isinstance(more, Mapping):
                config.update(more)
            if config:
                body["generationConfig"] = config
        return body

    def parse(
        self, request: CompletionRequest, status: int, headers: Mapping[str, str], body: Any
    ) -> CompletionResponse:
        return parse_reply(request, status, body)


def parse_reply(request: CompletionRequest, status: int, body: Any) -> CompletionResponse:
    """A `generateContent` (or `embedContent`) answer as a `CompletionResponse`; a missing
    field raises KeyError/TypeError, which the caller turns into `InvalidResponseError`."""
    if request.endpoint == "embeddings":
        vectors = body["embeddings"] if "embeddings" in body else [body["embedding"]]
        vectors[0]["values"]
        return CompletionResponse(content="", raw=body, status_code=status)
    usage = _usage(body.get("usageMetadata") or {})
    candidates = body.get("candidates") or []
    common: dict[str, Any] = {
        "model": body.get("modelVersion") or "",
        "usage": usage,
        "request_id": body.get("responseId"),
        "raw": body,
        "status_code": status,
    }
    if not candidates:
        # The prompt itself was blocked: no candidate, only the reason.
        feedback = body.get("promptFeedback") or {}
        reason = feedback.get("blockReason")
        if reason is None:
            raise KeyError("candidates")
        return CompletionResponse(
            content="",
            finish_reason=str(reason),
            refusal=f"the prompt was blocked (blockReason: {reason})",
            **common,
        )
    candidate = candidates[0]
    parts = (candidate.get("content") or {}).get("parts") or []
    text = "".join(
        p["text"] for p in parts if isinstance(p.get("text"), str) and not p.get("thought")
    )
    finish = candidate.get("finishReason")
    refusal = None
    if finish in BLOCKED_REASONS:
        refusal = text or f"blocked (finishReason: {finish})"
    return CompletionResponse(content=text, finish_reason=finish, refusal=refusal, **common)


def _texts(request: CompletionRequest) -> list[str] | None:
    """The texts of an embeddings request with an `input` list (an OpenAI embeddings line),
    sent as one `batchEmbedContents`; None for a single text (`prompt`)."""
    listed = request.extra.get("input") if request.extra else None
    if listed is None:
        return None
    if not isinstance(listed, list) or not all(isinstance(t, str) for t in listed):
        raise UnsupportedRequestError("Gemini embeds texts: `input` must be a list of strings")
    return listed


def _text_only(content: Any, index: int) -> str:
    """A message's text; `UnsupportedRequestError` for a part that is not text (an image in
    OpenAI's `image_url` form cannot be sent as is): dropping it would change the question."""
    if isinstance(content, list):
        for part in content:
            kind = part.get("type", "text") if isinstance(part, Mapping) else None
            if kind != "text":
                raise UnsupportedRequestError(
                    f"messages[{index}] has a {kind!r} part: only text parts are sent to Gemini"
                )
    return content_text(content)


def _usage(meta: Mapping[str, Any]) -> Usage:
    # promptTokenCount already includes cachedContentTokenCount; tool-use prompt tokens are
    # input too. Thinking tokens are billed at the output price.
    prompt = int(meta.get("promptTokenCount") or 0) + int(meta.get("toolUsePromptTokenCount") or 0)
    output = int(meta.get("candidatesTokenCount") or 0) + int(meta.get("thoughtsTokenCount") or 0)
    return Usage(prompt, output, cached_tokens=int(meta.get("cachedContentTokenCount") or 0))
