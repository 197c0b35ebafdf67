"""A provider's prompt-cache settings put on a request: OpenAI's key, Anthropic's breakpoint.

    transform = CacheTransform(client, provider="anthropic", model="claude-sonnet-4-5")
    sent = transform.apply(request, prefix, ttl="5m")    # a copy; `request` is untouched

- **OpenAI** caches on its own; `prompt_cache_key` (sent in the body, as `extra`) routes the
  requests of one prefix to the machines that hold it. A line's own key is kept. It is sent
  to OpenAI's API and to servers on this machine or a private network (vLLM, Ollama,
  llama.cpp, LM Studio, the simulator: they ignore a field they do not know); other
  OpenAI-compatible APIs (Mistral, Groq, ...) may refuse an unknown field, so they get none
  (their requests are still grouped and warmed up, which helps their own prefix caches).
- **Anthropic** caches only what a `cache_control` breakpoint marks: one is added on the last
  block of the shared prefix (the system prompt, or the last leading message), with the
  given TTL ("5m" or "1h"). A line's own breakpoints are kept and counted: none is added when
  the line already has the API's limit of 4, when the prefix's last block is already marked,
  or when its TTL would break the API's order (a "1h" entry must come before a "5m" one:
  the TTL is matched to the line's own breakpoints instead, or none is added).
- A prefix under the model's minimum cacheable length (`limits`) is left alone: the provider
  would not cache it, and Anthropic would bill nothing extra but nothing would be saved.
- Other clients (custom ones, other providers) get the request unchanged.

The request changes only in `messages` (a string content becomes one text block with the
breakpoint) and in `extra` (OpenAI's key; Anthropic's `system` as text blocks, built from the
system text the client would send): both survive re-asks (`llmbatch.replies`), which append
to `messages`.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import urllib.parse
from collections.abc import Mapping
from typing import Any, Literal

from ..types import CompletionRequest
from .limits import ANTHROPIC_MAX_BREAKPOINTS, min_cacheable_tokens
from .prefix import Prefix, label_of

__all__ = ["TTL", "CacheTransform", "count_breakpoints", "takes_cache_key"]

TTL = Literal["5m", "1h"]


class CacheTransform:
    """Cache settings for one run's requests (see the module docstring)."""

    def __init__(self, client: Any, *, provider: str, model: str | None = None) -> None:
        self.client = client
        kind = getattr(client, "name", None)
        # Only our own clients build bodies we know how to mark.
        self.provider = kind if kind in ("openai", "anthropic") else None
        self.model = model if model is not None else getattr(client, "model", None)
        self.requested = provider
        self.keyed = self.provider == "openai" and takes_cache_key(
            getattr(client, "base_url", None)
        )

    def minimum(self, request: CompletionRequest) -> int:
        return min_cacheable_tokens(self.provider or "", request.model or self.model)

    def apply(self, request: CompletionRequest, prefix: Prefix, *, ttl: TTL) -> CompletionRequest:
        """`request` with the cache settings of its provider for `prefix`."""
        if self.provider is None or prefix.tokens < self.minimum(request):
            return request
        if self.provider == "openai":
            extra = request.extra or {}
            if "prompt_cache_key" in extra or not self.keyed:
                return request
            label = label_of(request, self.model)
            if label is None:
                return request
            return dataclasses.replace(request, extra={**extra, "prompt_cache_key": label})
        return self._anthropic(request, prefix, ttl)

    def _anthropic(self, request: CompletionRequest, prefix: Prefix, ttl: TTL) -> CompletionRequest:
        body = self.client.body_for(request)
        marks = _marks(body)
        if len(marks) >= ANTHROPIC_MAX_BREAKPOINTS:
            return request
        messages = list(request.messages or ())
        # The last message of the prefix that is not folded into the system prompt.
        target = next(
            (i for i in range(prefix.messages - 1, -1, -1) if messages[i].get("role") != "system"),
            None,
        )
        if target is None:
            system = body.get("system")
            if not system:
                return request
            blocks: list[dict[str, Any]] = (
                [{"type": "text", "text": system}]
                if isinstance(system, str)
                else [dict(b) for b in system]
            )
            position = _position_of_system_end(body)
            chosen = _fitting_ttl(marks, position, ttl)
            if chosen is None or "cache_control" in blocks[-1]:
                return request
            blocks[-1]["cache_control"] = _control(chosen)
            return dataclasses.replace(request, extra={**(request.extra or {}), "system": blocks})
        message = dict(messages[target])
        content = message.get("content")
        if isinstance(content, str):
            parts: list[Any] = [{"type": "text", "text": content}]
        elif isinstance(content, list) and content and isinstance(content[-1], Mapping):
            parts = [*content[:-1], dict(content[-1])]
        else:
            return request
        if "cache_control" in parts[-1]:
            return request  # the line marked it itself
        position = _position_of_message_end(body, messages, target)
        chosen = _fitting_ttl(marks, position, ttl)
        if chosen is None:
            return request
        parts[-1]["cache_control"] = _control(chosen)
        message["content"] = parts
        messages[target] = message
        return dataclasses.replace(request, messages=messages)


def takes_cache_key(base_url: str | None) -> bool:
    """Whether an OpenAI-style server at `base_url` may be sent `prompt_cache_key`: OpenAI's
    own API, or a server on a loopback or private address (see the module docstring)."""
    if not base_url:
        return True  # the client's default: OpenAI
    host = urllib.parse.urlsplit(base_url).hostname or ""
    if host == "api.openai.com" or host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or address.is_private


def _control(ttl: TTL) -> dict[str, str]:
    # "5m" is the API's default; writing it out is allowed, leaving it out is the usual form.
    return {"type": "ephemeral"} if ttl == "5m" else {"type": "ephemeral", "ttl": ttl}


def _fitting_ttl(marks: list[tuple[int, str]], position: int, wanted: TTL) -> TTL | None:
    """The TTL a new breakpoint at `position` may have among the line's own (`marks`, as
    (position, ttl)): "1h" ones must all come before "5m" ones. None: no TTL fits."""
    five_before = any(p < position and t == "5m" for p, t in marks)
    hour_after = any(p > position and t == "1h" for p, t in marks)
    if five_before and hour_after:
        return None
    if five_before:
        return "5m"
    if hour_after:
        return "1h"
    return wanted


def _blocks(body: Mapping[str, Any]) -> list[Mapping[str, Any] | None]:
    """The body's blocks in Anthropic's cache order (tools, system, messages); None stands
    for a string system or message content, which cannot carry a breakpoint."""
    out: list[Mapping[str, Any] | None] = []
    out.extend(t for t in body.get("tools") or () if isinstance(t, Mapping))
    system = body.get("system")
    if isinstance(system, list):
        out.extend(b for b in system if isinstance(b, Mapping))
    elif system:
        out.append(None)
    for m in body.get("messages") or ():
        content = m.get("content") if isinstance(m, Mapping) else None
        if isinstance(content, list):
            out.extend(b for b in content if isinstance(b, Mapping))
        else:
            out.append(None)
    return out


def _marks(body: Mapping[str, Any]) -> list[tuple[int, str]]:
    marks = []
    for i, block in enumerate(_blocks(body)):
        control = block.get("cache_control") if block is not None else None
        if isinstance(control, Mapping):
            marks.append((i, str(control.get("ttl") or "5m")))
    return marks


def count_breakpoints(body: Mapping[str, Any]) -> int:
    """The `cache_control` breakpoints of an Anthropic body (the API allows 4)."""
    return len(_marks(body))


def _position_of_system_end(body: Mapping[str, Any]) -> int:
    """The block position of the system prompt's end (tools come first; -1: neither)."""
    tools = sum(1 for t in body.get("tools") or () if isinstance(t, Mapping))
    system = body.get("system")
    n = len(system) if isinstance(system, list) else (1 if system else 0)
    return tools + n - 1


def _position_of_message_end(
    body: Mapping[str, Any], messages: list[Mapping[str, Any]], target: int
) -> int:
    """The block position, in the body's cache order, of the last block of `messages[target]`
    (system-role messages are folded into the system prompt by the client)."""
    position = _position_of_system_end(body)
    for m in messages[: target + 1]:
        if m.get("role") == "system":
            continue
        content = m.get("content")
        position += len(content) if isinstance(content, list) and content else 1
    return position
