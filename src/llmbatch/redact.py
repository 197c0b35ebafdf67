"""Masking secrets in text that may reach a file or a terminal.

    redactor = Redactor(["local-SECRET123"])
    redactor("HTTP 401: bad key local-SECRET123")   # 'HTTP 401: bad key ***'

Three rules, applied in this order:

1. **By value.** A `Redactor` holds the exact secrets a client sent (its API key, the password
   of a `http://user:pass@host` base URL and the Basic credentials made from it) and replaces
   every occurrence, whatever the key looks like (`local-SECRET123`, `gsk_...`, keys holding
   regex metacharacters). Secrets shorter than `MIN_SECRET_CHARS` are *not* masked by value:
   such "keys" are placeholders for local servers (`-`, `x`, `EMPTY`), and masking every `x`
   or `-` would destroy the text while protecting nothing.
2. **Header values.** The whole value of an `Authorization`, `Proxy-Authorization`,
   `x-api-key` or `api-key` header, in `Name: value` text or as a quoted JSON / Python-repr
   pair, so `Authorization: Bearer local-SECRET123` loses both words, of any length.
3. **By shape**, for keys from elsewhere: `sk-...` / `sk-ant-...` and the word after `Bearer`.

`redact(text)` applies rules 2 and 3 (no known values); the clients scrub every error they
raise with their own `Redactor` before it leaves them (`scrub_error`), so the journal, the
error log, stderr and tracebacks never see the key.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import unquote, urlsplit

__all__ = ["MASK", "MIN_SECRET_CHARS", "Redactor", "redact", "scrub_error", "url_secrets"]

MASK = "***"
MIN_SECRET_CHARS = 6

_HEADER_NAMES = r"(?:proxy-authorization|authorization|x-api-key|api[-_]?key)"
# A header name, an optional closing quote, the separator, then the value: quoted values run
# to the matching quote, bare ones to the end of the line (a header value has no newline).
_HEADER = re.compile(
    rf"(?i)(\b{_HEADER_NAMES}[\"']?\s*[:=]\s*)"
    r"(?:\"((?:[^\"\\\r\n]|\\.)*)\"|'([^'\r\n]*)'|([^\s\"',;}\]][^\r\n\"',;}\]]*))"
)
_SHAPE = re.compile(r"(?i)(bearer\s+)[^\s\"',]+|\b(sk-(?:ant-)?)[A-Za-z0-9_\-]{6,}")
_HEADER_KEY = re.compile(rf"(?i)^{_HEADER_NAMES}$")


def _mask_header(m: re.Match[str]) -> str:
    if m.group(2) is not None:
        return f'{m.group(1)}"{MASK}"'
    if m.group(3) is not None:
        return f"{m.group(1)}'{MASK}'"
    return m.group(1) + MASK


def _mask_shape(m: re.Match[str]) -> str:
    return (m.group(1) or m.group(2) or "") + MASK


def url_secrets(url: str | None) -> list[str]:
    """The credentials embedded in a URL: password, `user:pass`, and its Basic encoding."""
    if not url:
        return []
    try:
        parts = urlsplit(url)
    except ValueError:
        return []
    user, password = parts.username, parts.password
    found: list[str] = []
    if password:
        found += [password, unquote(password)]
        pair = f"{unquote(user or '')}:{unquote(password)}"
        found += [pair, base64.b64encode(pair.encode()).decode()]
    elif user:  # a token passed as the user name (`https://TOKEN@host`)
        found += [user, unquote(user)]
    return found


class Redactor:
    """Masks known secret values, then header values, then key-shaped strings.

    Call it on text; `scrub` walks decoded JSON (dicts, lists, strings) and masks header
    values found as dict keys. Immutable after construction, so safe to share across threads.
    """

    __slots__ = ("_values",)

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        unique = {s for s in secrets if s and len(s) >= MIN_SECRET_CHARS}
        # Longest first, so a secret containing another is masked whole.
        ordered = sorted(unique, key=len, reverse=True)
        self._values = re.compile("|".join(map(re.escape, ordered))) if ordered else None

    def __repr__(self) -> str:  # never the secrets
        return "Redactor(...)"

    def __call__(self, text: str) -> str:
        if self._values is not None:
            text = self._values.sub(MASK, text)
        return _SHAPE.sub(_mask_shape, _HEADER.sub(_mask_header, text))

    def scrub(self, value: Any) -> Any:
        """A copy of decoded JSON (or any value) with every string masked."""
        if isinstance(value, str):
            return self(value)
        if isinstance(value, dict):
            return {
                self(str(k)) if isinstance(k, str) else k: (
                    MASK
                    if isinstance(k, str) and _HEADER_KEY.match(k) and isinstance(v, str)
                    else self.scrub(v)
                )
                for k, v in value.items()
            }
        if isinstance(value, list | tuple):
            return type(value)(self.scrub(v) for v in value)
        if isinstance(value, bytes):
            return self(value.decode("utf-8", "replace"))
        return value


_DEFAULT = Redactor()


def redact(text: str) -> str:
    """Mask Authorization / x-api-key header values and key-shaped strings in `text`."""
    return _DEFAULT(text)


def scrub_error(error: BaseException, redactor: Redactor) -> BaseException:
    """Mask secrets in an error's message, args and `body`, in place; returns the error."""
    error.args = tuple(redactor(a) if isinstance(a, str) else a for a in error.args)
    for attr in ("message", "body"):
        if hasattr(error, attr):
            setattr(error, attr, redactor.scrub(getattr(error, attr)))
    return error
