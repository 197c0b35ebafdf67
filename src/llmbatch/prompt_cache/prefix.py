"""What a request shares with others: its prefix (system prompt and leading messages), by hash.

    prefix = prefix_of(request, "gpt-4o-mini")   # Prefix(key=..., tokens=1530, messages=2)
    prefix is None                                # nothing before the last user turn

A chat request is a shared part followed by a unique part: the prefix is everything before
the request's last user turn (its `prompt`, or the last of its `messages`): the system
prompt, the leading messages, and what is sent with them whatever the turn (the model, the
schema, tools in `extra`). Two requests with one prefix key send the same tokens first, so a
provider's prompt cache can serve the second from the first. Tokens are estimated as
everywhere (characters / 4, `llmbatch.text`).

The key is 64 bits of BLAKE2b: a million prefixes collide with odds of about 1 in 3.6e7,
and a collision only groups two prefixes' requests together (sent close, one warm-up): what
is sent to the provider never depends on the key alone.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from ..text import chars_to_tokens, content_text
from ..types import CompletionRequest

__all__ = ["Prefix", "prefix_of"]

# Body fields sent before the conversation (tools, their choice) or shaping all of it.
_SHARED_EXTRA = ("tools", "tool_choice", "response_format", "system")


@dataclass(slots=True, frozen=True)
class Prefix:
    """A request's shared part: `key` (its hash), `tokens` (estimated), and `messages`, how
    many of the request's `messages` it takes in (0: it ends with the system prompt)."""

    key: int
    tokens: int
    messages: int

    @property
    def label(self) -> str:
        """The key as text (OpenAI's `prompt_cache_key`)."""
        return f"llmbatch-{self.key:016x}"


def prefix_of(request: CompletionRequest, model: str | None = None) -> Prefix | None:
    """The prefix of a chat request, or None (no system prompt nor leading message, or not a
    chat request)."""
    if request.endpoint != "chat":
        return None
    messages: Sequence[Mapping[str, Any]] = request.messages or ()
    n = len(messages) if request.prompt else max(0, len(messages) - 1)
    shared = messages[:n]
    system = request.system or ""
    if not system and not shared:
        return None
    h = hashlib.blake2b(digest_size=8)
    chars = len(system)
    head: dict[str, Any] = {"model": request.model or model or ""}
    if request.response_format != "text":
        head["format"] = request.response_format
    if request.schema is not None:
        head["schema"] = [request.schema.mode, request.schema.name, request.schema.json_schema]
        chars += request.schema.text_length()
    extra = request.extra or {}
    for name in _SHARED_EXTRA:
        if name in extra:
            head[name] = extra[name]
    h.update(orjson.dumps(head, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS))
    h.update(b"\x00" + system.encode())
    for message in shared:
        h.update(b"\x00")
        h.update(orjson.dumps(message, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS))
        chars += len(content_text(message.get("content")))
    return Prefix(int.from_bytes(h.digest(), "big"), chars_to_tokens(chars), n)
