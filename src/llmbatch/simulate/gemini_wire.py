"""Gemini's wire format in the simulator, as a translation to and from the chat shape.

    chat = to_chat("chat", gemini_body)                 # ValueError: a 400 INVALID_ARGUMENT
    reply = from_chat_reply("chat", chat_reply, model)  # a GenerateContentResponse
    err = google_error(429, "Resource exhausted", retry_delay=1.5)

The simulator answers a Gemini request with the same logic as a chat request (limits, faults,
schemas, refusals, truncation), so only the shapes differ: a `generateContent` body
(`contents`, `systemInstruction`, `generationConfig`) is read as a chat body, and the chat
answer is written back as Gemini writes it (`candidates[0].content.parts`, `finishReason`
STOP / MAX_TOKENS / SAFETY, `usageMetadata`, `modelVersion`, `responseId`). Errors are
`google.rpc.Status` bodies (`{"error": {"code", "message", "status", "details"}}`), a 429
carrying its wait in a `google.rpc.RetryInfo` detail (`retryDelay: "1.5s"`) rather than a
Retry-After header, and a wrong key a 400 with `ErrorInfo` reason API_KEY_INVALID, as
Google's API answers. Field names follow Google's API reference and the google-genai SDK;
the API also accepts snake_case field names, so both are read.
"""

from __future__ import annotations

from typing import Any

from .dialects import OpenAIDialect

__all__ = [
    "GEMINI",
    "GRPC_CODES",
    "STATUS_NAMES",
    "GeminiDialect",
    "from_chat_reply",
    "google_error",
    "to_chat",
]

Body = dict[str, Any]

# HTTP status -> google.rpc.Code name, as Google's APIs pair them.
STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    413: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "NOT_IMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
# google.rpc.Code numbers (what a batch line's `error.code` holds) by name.
GRPC_CODES = {
    "CANCELLED": 1,
    "UNKNOWN": 2,
    "INVALID_ARGUMENT": 3,
    "DEADLINE_EXCEEDED": 4,
    "NOT_FOUND": 5,
    "PERMISSION_DENIED": 7,
    "RESOURCE_EXHAUSTED": 8,
    "FAILED_PRECONDITION": 9,
    "ABORTED": 10,
    "INTERNAL": 13,
    "UNAVAILABLE": 14,
    "UNAUTHENTICATED": 16,
}
_TYPE = "type.googleapis.com/google.rpc."
_QUOTA_METRIC = "generativelanguage.googleapis.com/generate_content_requests"
_FINISH = {"stop": "STOP", "length": "MAX_TOKENS", "tool_calls": "STOP"}


def _get(obj: Any, camel: str, snake: str) -> Any:
    if not isinstance(obj, dict):
        return None
    return obj.get(camel, obj.get(snake))


def _text(content: Any, where: str) -> str:
    parts = _get(content, "parts", "parts")
    if not isinstance(parts, list):
        raise ValueError(f"{where}.parts: must be a list of parts")
    texts = []
    for i, part in enumerate(parts):
        if not isinstance(part, dict):
            raise ValueError(f"{where}.parts[{i}]: must be an object")
        if isinstance(part.get("text"), str):
            texts.append(part["text"])
    return "".join(texts)


def to_chat(kind: str, body: Body) -> Body:
    """The chat (or embeddings) body that asks what `body` asks; ValueError naming the field
    the API would refuse."""
    if kind == "embeddings":
        requests = body.get("requests")
        if isinstance(requests, list):  # batchEmbedContents: several texts at once
            if not requests:
                raise ValueError("requests: must not be empty")
            texts = [
                _text(_get(r, "content", "content"), f"requests[{i}].content")
                for i, r in enumerate(requests)
            ]
            return {"input": texts}
        content = body.get("content")
        if not isinstance(content, dict):
            raise ValueError("content: required")
        return {"input": _text(content, "content")}
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        raise ValueError("contents is not specified")
    messages: list[Body] = []
    system = _get(body, "systemInstruction", "system_instruction")
    if system is not None:
        messages.append({"role": "system", "content": _text(system, "system_instruction")})
    for i, content in enumerate(contents):
        role = content.get("role", "user") if isinstance(content, dict) else None
        if role not in ("user", "model"):
            raise ValueError(f"contents[{i}].role: must be 'user' or 'model', got {role!r}")
        text = _text(content, f"contents[{i}]")
        messages.append({"role": "assistant" if role == "model" else "user", "content": text})
    chat: Body = {"messages": messages}
    config = _get(body, "generationConfig", "generation_config") or {}
    if not isinstance(config, dict):
        raise ValueError("generation_config: must be an object")
    limit = _get(config, "maxOutputTokens", "max_output_tokens")
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"generation_config.max_output_tokens: must be >= 1, got {limit!r}")
        chat["max_tokens"] = limit
    temperature = config.get("temperature")
    if temperature is not None:
        chat["temperature"] = temperature
    mime = _get(config, "responseMimeType", "response_mime_type")
    schema = _get(config, "responseJsonSchema", "response_json_schema")
    if schema is None:
        schema = _get(config, "responseSchema", "response_schema")
    if schema is not None and mime != "application/json":
        raise ValueError("response_schema: requires response_mime_type 'application/json'")
    if isinstance(schema, dict):
        chat["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "response", "schema": schema},
        }
    elif mime == "application/json":
        chat["response_format"] = {"type": "json_object"}
    return chat


def from_chat_reply(kind: str, reply: Body, model: str, *, many: bool = False) -> Body:
    """Gemini's answer carrying what the chat (or embeddings) `reply` says; `many`: the
    answer to a `batchEmbedContents`, one vector per text."""
    if kind == "embeddings":
        vectors = [{"values": item["embedding"]} for item in reply["data"]]
        return {"embeddings": vectors} if many else {"embedding": vectors[0]}
    choice = reply["choices"][0]
    message = choice.get("message") or {}
    usage = reply.get("usage") or {}
    prompt, output = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
    candidate: Body
    if message.get("refusal"):
        # Blocked by the safety filters: no parts, the reason, the rating that blocked it.
        candidate = {
            "content": {"role": "model"},
            "finishReason": "SAFETY",
            "index": 0,
            "safetyRatings": [
                {
                    "category": "HARM_CATEGORY_DANGEROUS_CONTENT",
                    "probability": "HIGH",
                    "blocked": True,
                }
            ],
        }
        output = 0
    else:
        candidate = {
            "content": {"parts": [{"text": message.get("content") or ""}], "role": "model"},
            "finishReason": _FINISH.get(str(choice.get("finish_reason")), "STOP"),
            "index": 0,
        }
    rid = str(reply.get("id", "")).removeprefix("chatcmpl-")
    return {
        "candidates": [candidate],
        "usageMetadata": {
            "promptTokenCount": prompt,
            "candidatesTokenCount": output,
            "totalTokenCount": prompt + output,
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt}],
        },
        "modelVersion": model,
        "responseId": rid,
    }


def google_error(
    status: int, message: str, *, retry_delay: float | None = None, reason: str | None = None
) -> Body:
    """A `google.rpc.Status` error body for HTTP `status`."""
    name = STATUS_NAMES.get(status, "UNKNOWN" if status < 500 else "INTERNAL")
    details: list[Body] = []
    if reason is not None:
        details.append(
            {
                "@type": _TYPE + "ErrorInfo",
                "reason": reason,
                "domain": "googleapis.com",
                "metadata": {"service": "generativelanguage.googleapis.com"},
            }
        )
    if status == 429:
        details.append(
            {
                "@type": _TYPE + "QuotaFailure",
                "violations": [
                    {
                        "quotaMetric": _QUOTA_METRIC,
                        "quotaId": "GenerateRequestsPerMinutePerProjectPerModel",
                    }
                ],
            }
        )
        if retry_delay is not None:
            details.append({"@type": _TYPE + "RetryInfo", "retryDelay": f"{retry_delay:g}s"})
    error: Body = {"code": status, "message": message, "status": name}
    if details:
        error["details"] = details
    return {"error": error}


class GeminiDialect(OpenAIDialect):
    """The Gemini routes, served by the chat logic: the key in `x-goog-api-key`, no
    rate-limit headers (Gemini sends none), the body read as a chat body (`to_chat`).
    Answers and errors are rewritten into Gemini's shapes by the routes (`gemini.py`)."""

    name = "gemini"

    def api_key(self, headers: Any) -> str | None:
        key = headers.get("x-goog-api-key")
        return str(key) if key is not None else None

    def limit_headers(self, states: list[Any]) -> dict[str, str]:
        return {}

    def request_body(self, kind: str, body: Body) -> Body:
        return to_chat(kind, body)


GEMINI = GeminiDialect()
