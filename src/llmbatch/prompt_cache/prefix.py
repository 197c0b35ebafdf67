"""What a request shares with others: its prefix (system prompt and leading messages), by hash.

    prefix = prefix_of(request, "gpt-4o-mini")   # Prefix(key=..., tokens=1530, messages=2)
    prefix is None                                # nothing before the last user turn
    label_of(request, "gpt-4o-mini")              # 'llmbatch-3f2a...': the same in every run

A chat request is a shared part followed by a unique part: the prefix is everything before
the request's last user turn (its `prompt`, or the last of its `messages`): the system
prompt, the leading messages, and what is sent with them whatever the turn (the model, the
schema, tools in `extra`). Two requests with one prefix key send the same tokens first, so a
provider's prompt cache can serve the second from the first. Tokens are estimated as
everywhere (characters / 4, `llmbatch.text`).

The key is Python's 64-bit hash of those parts: a million prefixes collide with odds of about
1 in 3.6e7, and a collision only groups two prefixes' requests together (sent close, one
warm-up): what is sent to the provider never depends on the key alone. OpenAI's
`prompt_cache_key` is `label_of`, stable across runs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from ..text import chars_to_tokens, content_text
from ..types import CompletionRequest, conversational

__all__ = ["Prefix", "label_of", "prefix_of"]

# Body fields sent before the conversation (tools, their choice) or shaping all of it.
_SHARED_EXTRA = ("tools", "tool_choice", "response_format", "system")


@dataclass(slots=True, frozen=True)
class Prefix:
    """A request's shared part: `key` (its hash in this process), `tokens` (estimated), and
    `messages`, how many of the request's `messages` it takes in (0: it ends with the system
    prompt)."""

    key: int
    tokens: int
    messages: int


def prefix_of(request: CompletionRequest, model: str | None = None) -> Prefix | None:
    """The prefix of a chat request, or None (no system prompt nor leading message, or not a
    chat request)."""
    parts = _parts(request, model)
    if parts is None:
        return None
    head, system, shared, chars = parts
    # Python's own string hash: computed in C, about 3x the speed of BLAKE2b over the same
    # text (the precheck hashes every line); per process, which is all the census and the
    # schedule need. What leaves the process (OpenAI's key) is `label_of`.
    return Prefix(hash((head, system, *shared)), chars_to_tokens(chars), len(shared))


def label_of(request: CompletionRequest, model: str | None = None) -> str | None:
    """A stable name of the request's prefix (the same in every run and process): 64 bits of
    BLAKE2b, as OpenAI's `prompt_cache_key`."""
    parts = _parts(request, model)
    if parts is None:
        return None
    head, system, shared, _ = parts
    h = hashlib.blake2b(head, digest_size=8)
    h.update(b"\x00" + system.encode())
    for message in shared:
        h.update(b"\x00" + message)
    return f"llmbatch-{h.hexdigest()}"


def _parts(
    request: CompletionRequest, model: str | None
) -> tuple[bytes, str, list[bytes], int] | None:
    """(what is sent around the conversation, the system prompt, the leading messages, and
    the characters of text in them), or None when there is no prefix."""
    if not conversational(request):
        return None
    messages: Sequence[Mapping[str, Any]] = request.messages or ()
    n = len(messages) if request.prompt else max(0, len(messages) - 1)
    system = request.system or ""
    if not system and not n:
        return None
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
    shared = []
    for message in messages[:n]:
        shared.append(orjson.dumps(message, option=_OPTIONS))
        chars += len(content_text(message.get("content")))
    return orjson.dumps(head, option=_OPTIONS), system, shared, chars


_OPTIONS = orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS
