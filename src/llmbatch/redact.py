"""Masking secrets in text that may reach a file or a terminal.

    redactor = Redactor(["local-SECRET123"])
    redactor("HTTP 401: bad key local-SECRET123")   # 'HTTP 401: bad key ***'

Three rules, applied in this order:

1. **By value.** A `Redactor` holds the exact secrets a client sent (its API key, the password
   of a `http://user:pass@host` base URL and the Basic credentials made from it) and replaces
   every occurrence, whatever the key looks like (`local-SECRET123`, `gsk_...`, keys holding
   regex metacharacters), in the forms a server may echo: as sent, stripped of surrounding
   whitespace (HTTP parsers drop it), base64- and URL-encoded, and any piece of at least
   `MIN_FRAGMENT_CHARS` characters of those (an echo that cut the first characters off).
   Secrets shorter than `MIN_SECRET_CHARS` are *not* masked by value:
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
from urllib.parse import quote, unquote, urlsplit, urlunsplit

__all__ = [
    "MASK",
    "MIN_FRAGMENT_CHARS",
    "MIN_SECRET_CHARS",
    "Redactor",
    "header_secrets",
    "public_url",
    "redact",
    "scrub_error",
    "url_secrets",
]

MASK = "***"
MIN_SECRET_CHARS = 6
# A piece of a secret this long is masked wherever it appears: 12 characters of a key are
# 60+ bits of it, and no ordinary text repeats 12 characters of a random key by chance.
MIN_FRAGMENT_CHARS = 12

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


def public_url(url: str) -> str:
    """`url` without its credentials, fit to record or show: `http://user:pw@h/v1` becomes
    `http://***@h/v1` (so two URLs differing only in credentials still read as different
    from a URL without any, and nobody wonders why the run authenticates)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return redact(url)
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{MASK}@{host}"))


def _forms(secret: str) -> set[str]:
    """What a server may echo of `secret`: itself, stripped, base64- and URL-encoded."""
    found = {secret, secret.strip()}
    for s in list(found):
        found.add(base64.b64encode(s.encode()).decode())
        found.add(quote(s, safe=""))
    return found


def header_secrets(value: str) -> list[str]:
    """The secrets in an auth header's value: itself, its credentials without the scheme
    word, and for `Basic` the decoded `user:password` and the password."""
    found = [value]
    scheme, _, credentials = value.strip().partition(" ")
    if not credentials:
        return found
    found.append(credentials.strip())
    if scheme.lower() == "basic":
        try:
            pair = base64.b64decode(credentials.strip(), validate=True).decode()
        except (ValueError, UnicodeDecodeError):
            return found
        found += [pair, pair.partition(":")[2]]
    return found


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

    __slots__ = ("_fragments", "_long", "_values")

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        unique: set[str] = set()
        for s in secrets:
            if s:
                unique |= {f for f in _forms(s) if len(f) >= MIN_SECRET_CHARS}
        # Longest first, so a secret containing another is masked whole.
        ordered = sorted(unique, key=len, reverse=True)
        self._values = re.compile("|".join(map(re.escape, ordered))) if ordered else None
        # Every MIN_FRAGMENT_CHARS-long window of the long secrets: a match is then grown
        # to the whole run of the secret's characters around it (`_mask_fragments`).
        self._long = tuple(s for s in ordered if len(s) >= MIN_FRAGMENT_CHARS)
        n = MIN_FRAGMENT_CHARS
        windows = {s[i : i + n] for s in self._long for i in range(len(s) - n + 1)}
        self._fragments = re.compile("|".join(map(re.escape, windows))) if windows else None

    def __repr__(self) -> str:  # never the secrets
        return "Redactor(...)"

    def __call__(self, text: str) -> str:
        if self._values is not None:
            text = self._values.sub(MASK, text)
        if self._fragments is not None:
            text = self._mask_fragments(text, self._fragments)
        return _SHAPE.sub(_mask_shape, _HEADER.sub(_mask_header, text))

    def _mask_fragments(self, text: str, windows: re.Pattern[str]) -> str:
        """Mask each piece of a long secret found in `text`, grown from a matching window
        to as many of the secret's characters as continue on either side."""
        spans: list[tuple[int, int]] = []
        pos = 0
        while (m := windows.search(text, pos)) is not None:
            lo, hi = m.span()
            for secret in self._long:
                k = secret.find(m.group())
                while k != -1:
                    a, b, ka, kb = m.start(), m.end(), k, k + MIN_FRAGMENT_CHARS
                    while a > 0 and ka > 0 and text[a - 1] == secret[ka - 1]:
                        a, ka = a - 1, ka - 1
                    while b < len(text) and kb < len(secret) and text[b] == secret[kb]:
                        b, kb = b + 1, kb + 1
                    lo, hi = min(lo, a), max(hi, b)
                    k = secret.find(m.group(), k + 1)
            if spans and lo <= spans[-1][1]:
                lo = spans.pop()[0]
            spans.append((lo, hi))
            pos = hi
        if not spans:
            return text
        out, last = [], 0
        for lo, hi in spans:
            out += [text[last:lo], MASK]
            last = hi
        out.append(text[last:])
        return "".join(out)

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
