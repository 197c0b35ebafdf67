"""Structured replies in the simulator: JSON that fits a schema, forced tool calls, and the
ways a real model fails them (invalid, refused, truncated).

    shaper = Shaper(invalid_rate=0.2, refusal_rate=0.01, truncate_rate=0.01, seed=1)
    shaped = shaper.shape(OPENAI, body, prompt, max_tokens)   # None: answer plainly
    payload = shaped.render(OPENAI, model, rid, prompt_tokens, output_tokens)

A request asks for structure by OpenAI's `response_format: {"type": "json_schema"}`,
Anthropic's forced tool (`tool_choice: {"type": "tool", "name"}`), or JSON mode with a JSON
Schema in its system prompt (llmbatch's prompt mode). The answer is generated from the schema
(types, required fields, enums, const, nested objects and arrays, `$ref` to `$defs`, numeric
and length bounds) and is, like every simulator reply, derived from the request: the same
body always gets the same answer.

Faults are drawn from a hash of the body and the seed, not from the server's shared random
stream: which request fails does not depend on arrival order, so a test that reruns a
request, or re-asks it with a longer conversation, sees the same (or a fresh) draw every
time. `invalid_rate`: a reply that parses but breaks the schema (a required field missing or
of the wrong type); `refusal_rate`: a refusal (OpenAI `message.refusal`, Anthropic
`stop_reason: "refusal"`); `truncate_rate`: the reply cut in half with `finish_reason:
"length"` / `stop_reason: "max_tokens"` (on any chat reply). A structured reply longer than
`max_tokens` is cut off too, as a real model's would be.
"""

from __future__ import annotations

import hashlib
import math
import random
import time
from dataclasses import dataclass
from typing import Any

import orjson

from .dialects import ANTHROPIC, Dialect, reply_text, response_object, token_count

__all__ = ["Shaped", "Shaper", "embeddings_reply", "unsupported"]

_REFUSAL = "I'm sorry, but I can't help with that request."
_MARKER = "conforms to this JSON Schema, and nothing else:\n"
_MAX_DEPTH = 6


def unsupported(body: dict[str, Any]) -> str | None:
    """Why the simulator refuses a request it cannot answer faithfully (a 400), or None.

    Streaming is not simulated: a non-stream body to a `stream: true` request reads as zero
    chunks in the official SDKs, so the request is refused instead.
    """
    if body.get("stream") is True:
        return "stream: true is not supported by the llmbatch simulator; send stream: false"
    return None


def embeddings_reply(model: str, inputs: list[Any], prompt_tokens: int) -> dict[str, Any]:
    """OpenAI's embeddings body with one vector per input, in input order."""
    data = []
    for i, item in enumerate(inputs):
        text = item if isinstance(item, str) else orjson.dumps(item).decode()
        digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
        vector = [round(b / 255.0 - 0.5, 4) for b in digest]
        data.append({"object": "embedding", "index": i, "embedding": vector})
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }


@dataclass(slots=True)
class Shaped:
    """One chat reply: `text` (JSON text for a schema), its finish, a refusal, or a tool call."""

    text: str
    finish: str = "stop"  # "stop" or "length"
    refusal: bool = False
    tool: str | None = None  # the forced tool's name (Anthropic)
    tool_input: Any = None

    def render(
        self,
        dialect: Dialect,
        model: str,
        rid: str,
        prompt_tokens: int,
        output_tokens: int,
        body: dict[str, Any] | None = None,
        kind: str = "chat",
    ) -> dict[str, Any]:
        if dialect is ANTHROPIC:
            return self._anthropic(model, rid, prompt_tokens, output_tokens)
        if kind == "responses":
            return response_object(
                body or {}, model, rid, self.text, prompt_tokens, output_tokens,
                refusal=self.refusal, cut=self.finish == "length",
            )  # fmt: skip
        return self._openai(model, rid, prompt_tokens, output_tokens)

    def _openai(
        self, model: str, rid: str, prompt_tokens: int, output_tokens: int
    ) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": self.text, "refusal": None}
        if self.refusal:
            message = {"role": "assistant", "content": None, "refusal": self.text}
        return {
            "id": "chatcmpl-" + rid,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": self.finish}],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": output_tokens,
                "total_tokens": prompt_tokens + output_tokens,
            },
        }

    def _anthropic(
        self, model: str, rid: str, prompt_tokens: int, output_tokens: int
    ) -> dict[str, Any]:
        if self.refusal:
            content: list[Any] = [{"type": "text", "text": self.text}]
            stop = "refusal"
        elif self.tool is not None:
            block = {"type": "tool_use", "id": "toolu_" + rid, "name": self.tool}
            content = [block | {"input": self.tool_input}]
            stop = "tool_use" if self.finish == "stop" else "max_tokens"
        else:
            content = [{"type": "text", "text": self.text}]
            stop = "end_turn" if self.finish == "stop" else "max_tokens"
        return {
            "id": "msg_" + rid,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": content,
            "stop_reason": stop,
            "stop_sequence": None,
            "usage": {"input_tokens": prompt_tokens, "output_tokens": output_tokens},
        }


class Shaper:
    """Decides and builds the structured (or faulty) replies; counts what it did."""

    def __init__(
        self,
        *,
        invalid_rate: float = 0.0,
        refusal_rate: float = 0.0,
        truncate_rate: float = 0.0,
        seed: int | None = None,
    ) -> None:
        self.invalid_rate = invalid_rate
        self.refusal_rate = refusal_rate
        self.truncate_rate = truncate_rate
        self.seed = seed or 0
        self.reset()

    def reset(self) -> None:
        self.structured = 0
        self.invalid = 0
        self.refused = 0
        self.truncated = 0

    def counts(self) -> dict[str, int]:
        return {
            "structured": self.structured,
            "invalid": self.invalid,
            "refused": self.refused,
            "truncated": self.truncated,
        }

    def _draw(self, raw: bytes, fault: str) -> float:
        digest = hashlib.blake2b(raw, digest_size=8, key=f"{self.seed}:{fault}".encode()).digest()
        return int.from_bytes(digest, "big") / 2**64

    def shape(
        self, dialect: Dialect, body: dict[str, Any], prompt: str, max_tokens: int | None
    ) -> Shaped | None:
        """The reply to a chat request, or None when a plain reply (`reply_text`) will do."""
        found = _requested(dialect, body)
        faults = self.refusal_rate or self.truncate_rate or (found and self.invalid_rate)
        if found is None and not faults:
            return None
        raw = orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
        if self.refusal_rate and self._draw(raw, "refusal") < self.refusal_rate:
            self.refused += 1
            return Shaped(_REFUSAL, refusal=True)
        if found is None:
            text = reply_text(prompt, max_tokens, dialect.json_mode(body))
            if self.truncate_rate and self._draw(raw, "truncate") < self.truncate_rate:
                self.truncated += 1
                return Shaped(text[: max(1, len(text) // 2)], finish="length")
            return None
        schema, tool = found
        self.structured += 1
        rng = random.Random(raw)
        value = _instance(schema, schema, rng, 0)
        if self.invalid_rate and self._draw(raw, "invalid") < self.invalid_rate:
            self.invalid += 1
            value = _break(schema, value, rng)
        text = orjson.dumps(value).decode()
        cut = self.truncate_rate and self._draw(raw, "truncate") < self.truncate_rate
        if max_tokens is not None and token_count(text) > max_tokens:
            cut = True
        if cut:
            self.truncated += 1
            keep = min(len(text) // 2, max(1, (max_tokens or len(text)) * 4))
            text = text[:keep]
            partial = _partial(value)
            return Shaped(text, finish="length", tool=tool, tool_input=partial)
        return Shaped(text, tool=tool, tool_input=value)


def _requested(dialect: Dialect, body: dict[str, Any]) -> tuple[dict[str, Any], str | None] | None:
    """(schema, forced tool name or None) if the request asks for structure, else None."""
    if dialect is ANTHROPIC:
        choice = body.get("tool_choice")
        if isinstance(choice, dict) and choice.get("type") == "tool":
            for tool in body.get("tools") or ():
                if isinstance(tool, dict) and tool.get("name") == choice.get("name"):
                    schema = tool.get("input_schema")
                    if isinstance(schema, dict):
                        return schema, str(tool["name"])
        system = body.get("system")
        return _from_prompt(system if isinstance(system, str) else "")
    fmt = body.get("response_format")
    text = body.get("text")
    responses = fmt is None and isinstance(text, dict)
    if responses:
        fmt = text.get("format")  # type: ignore[union-attr]  # the Responses API's, flat
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        spec = fmt if responses else fmt.get("json_schema")
        if isinstance(spec, dict) and isinstance(spec.get("schema"), dict):
            return spec["schema"], None
    if isinstance(fmt, dict) and fmt.get("type") == "json_object":
        if responses:
            return _from_prompt(str(body.get("instructions") or ""))
        for m in body.get("messages") or ():
            if isinstance(m, dict) and m.get("role") == "system":
                found = _from_prompt(str(m.get("content") or ""))
                if found is not None:
                    return found
    return None


def _from_prompt(system: str) -> tuple[dict[str, Any], None] | None:
    """A schema given in the system prompt (prompt mode), as a model would read it."""
    at = system.find(_MARKER)
    if at < 0:
        return None
    tail = system[at + len(_MARKER) :]
    try:
        schema = orjson.loads(tail.split("\n\n", 1)[0])
    except orjson.JSONDecodeError:
        return None
    return (schema, None) if isinstance(schema, dict) else None


def _resolve(node: Any, root: dict[str, Any]) -> Any:
    for _ in range(_MAX_DEPTH):
        ref = node.get("$ref") if isinstance(node, dict) else None
        if not isinstance(ref, str) or not ref.startswith("#/"):
            return node
        target: Any = root
        for part in ref[2:].split("/"):
            target = target.get(part, {}) if isinstance(target, dict) else {}
        node = target
    return node


def _type_of(node: dict[str, Any]) -> str:
    kind = node.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if isinstance(kind, str):
        return kind
    if "properties" in node:
        return "object"
    if "items" in node:
        return "array"
    return "string"


def _instance(node: Any, root: dict[str, Any], rng: random.Random, depth: int) -> Any:
    """A value that fits `node` (the common keywords; see the module docstring)."""
    node = _resolve(node, root)
    if not isinstance(node, dict):
        return None
    if "const" in node:
        return node["const"]
    if isinstance(node.get("enum"), list) and node["enum"]:
        return rng.choice(node["enum"])
    for key in ("anyOf", "oneOf"):
        if isinstance(node.get(key), list) and node[key]:
            options = [o for o in node[key] if _resolve(o, root).get("type") != "null"]
            return _instance((options or node[key])[0], root, rng, depth + 1)
    if isinstance(node.get("allOf"), list) and node["allOf"]:
        merged: dict[str, Any] = {}
        for part in node["allOf"]:
            merged |= _resolve(part, root) if isinstance(part, dict) else {}
        return _instance(merged, root, rng, depth + 1)
    kind = _type_of(node)
    if kind == "object":
        props = node.get("properties") or {}
        required = node.get("required") or list(props)
        if depth >= _MAX_DEPTH:
            required = node.get("required") or []
        return {
            name: _instance(props.get(name, {}), root, rng, depth + 1)
            for name in props
            if name in required
        }
    if kind == "array":
        fewest = int(node.get("minItems", 1 if depth < _MAX_DEPTH else 0))
        most = int(node.get("maxItems", max(fewest, 3)))
        count = rng.randint(fewest, max(fewest, min(most, fewest + 2)))
        items = node.get("items", {})
        return [_instance(items, root, rng, depth + 1) for _ in range(count)]
    if kind == "integer":
        first, last = _bounds(node, 0.0, 100.0)
        return rng.randint(math.ceil(first), max(math.ceil(first), math.floor(last)))
    if kind == "number":
        first, last = _bounds(node, 0.0, 1.0)
        return round(rng.uniform(first, last), 3)
    if kind == "boolean":
        return rng.random() < 0.5
    if kind == "null":
        return None
    return _string(node, rng)


def _bounds(node: dict[str, Any], low: float, high: float) -> tuple[float, float]:
    low = float(node.get("minimum", low))
    high = float(node.get("maximum", max(high, low)))
    if "exclusiveMinimum" in node:
        low = float(node["exclusiveMinimum"]) + 1
    if "exclusiveMaximum" in node:
        high = float(node["exclusiveMaximum"]) - 1
    return low, max(low, high)


def _string(node: dict[str, Any], rng: random.Random) -> str:
    fmt = node.get("format")
    if fmt == "date":
        return f"2026-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
    if fmt == "date-time":
        return f"2026-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}T12:00:00Z"
    if fmt == "email":
        return f"user{rng.randint(1, 999)}@example.com"
    if fmt in ("uri", "url"):
        return f"https://example.com/{rng.randint(1, 999)}"
    text = reply_text(str(rng.random()), 8, False).rstrip(".").lower()
    low = int(node.get("minLength", 0))
    high = int(node.get("maxLength", max(low, len(text))))
    while len(text) < low:
        text += " " + text
    return text[: max(low, high)]


def _break(schema: dict[str, Any], value: Any, rng: random.Random) -> Any:
    """`value` made to break `schema` while staying valid JSON."""
    node = _resolve(schema, schema)
    if isinstance(value, dict) and value:
        required = [k for k in node.get("required") or () if k in value]
        broken = dict(value)
        if required:
            del broken[rng.choice(required)]  # a required field missing
            return broken
        key = rng.choice(sorted(broken))
        broken[key] = [] if not isinstance(broken[key], list) else "not a list"
        return broken
    return {"unexpected": value} if not isinstance(value, dict) else ["not", "an", "object"]


def _partial(value: Any) -> Any:
    """What a tool call cut off mid-way still holds: the object without its last field."""
    if isinstance(value, dict) and value:
        return dict(list(value.items())[:-1])
    return {}
