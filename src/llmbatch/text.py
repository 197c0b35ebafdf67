"""The text of a request, and the token estimate made from it: defined once, used everywhere.

    flatten_messages([{"role": "user", "content": "Hi"}], system="Be brief")  # 'Be brief\nHi'
    chars_to_tokens("x" * 400)                                                # 100

A chat message's `content` is a string or a list of parts (OpenAI's `{"type": "text",
"text": ...}` and Anthropic's content blocks); only text parts count. The estimate is
characters / 4, rounded up: no tokenizer is downloaded, and the provider's reported usage
corrects it later.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = [
    "DEFAULT_CHARS_PER_TOKEN",
    "chars_to_tokens",
    "content_text",
    "flatten_messages",
    "text_length",
]

DEFAULT_CHARS_PER_TOKEN = 4.0


def content_text(content: Any) -> str:
    """The text of one message's `content`: a string, or the text parts of a list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            part["text"]
            for part in content
            if isinstance(part, Mapping) and isinstance(part.get("text"), str)
        )
    return ""


def flatten_messages(
    messages: Iterable[Mapping[str, Any]] | None, *, system: str | None = None, prompt: str = ""
) -> str:
    """System text, each message's text, then the prompt, joined by newlines (empty skipped)."""
    parts = [system or ""]
    parts += [content_text(m.get("content")) for m in messages or () if isinstance(m, Mapping)]
    parts.append(prompt)
    return "\n".join(p for p in parts if p)


def text_length(
    messages: Iterable[Mapping[str, Any]] | None, *, system: str | None = None, prompt: str = ""
) -> int:
    """Characters of input text (separators not counted), the basis of the token estimate."""
    n = len(prompt) + (len(system) if system else 0)
    for m in messages or ():
        if isinstance(m, Mapping):
            content = m.get("content")
            if isinstance(content, str):
                n += len(content)
            elif isinstance(content, list):
                n += sum(
                    len(p["text"])
                    for p in content
                    if isinstance(p, Mapping) and isinstance(p.get("text"), str)
                )
    return n


def chars_to_tokens(chars: int | str, chars_per_token: float = DEFAULT_CHARS_PER_TOKEN) -> int:
    """Tokens for `chars` characters (or a string), rounded up: the chars/4 rule."""
    n = len(chars) if isinstance(chars, str) else chars
    return math.ceil(n / chars_per_token)
