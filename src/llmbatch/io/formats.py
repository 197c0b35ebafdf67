"""Input formats: JSONL request lines (two shapes) and templates over files or rows.

    for item in read_jsonl("requests.jsonl"):
        if isinstance(item, BadLine): print(item)            # 'line 7: ...'
        else: item.id, item.request

Two line shapes are recognised per line:
- the OpenAI Batch API line `{"custom_id", "method", "url", "body"}` for /v1/chat/completions,
  /v1/embeddings and /v1/completions; unknown `body` fields are passed through to the provider;
- a simple line `{"id", "prompt", "temperature"?, "max_tokens"?, "response_format"?, "model"?,
  "system"?}`; an unknown key here is an error (it is almost always a typo).

Everything streams: one line in memory at a time. Problems come back as `BadLine` values
naming the line (or row, or file) so the caller decides whether to stop or skip.
"""

from __future__ import annotations

import csv
import glob
import string
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from ..types import CompletionRequest, ResponseFormat

__all__ = [
    "BadLine",
    "InputItem",
    "TemplateError",
    "parse_line",
    "read_files",
    "read_jsonl",
    "read_rows",
    "template_fields",
]

URLS = {
    "/v1/chat/completions": "chat",
    "/v1/embeddings": "embeddings",
    "/v1/completions": "completions",
}
SIMPLE_KEYS = frozenset(
    {"id", "prompt", "temperature", "max_tokens", "response_format", "model", "system"}
)
_BODY_FIELDS = frozenset({"model", "messages", "temperature", "max_tokens", "response_format"})


@dataclass(slots=True)
class InputItem:
    line: int
    id: str
    request: CompletionRequest


@dataclass(slots=True)
class BadLine:
    line: int
    message: str
    where: str = "line"

    def __str__(self) -> str:
        return f"{self.where} {self.line}: {self.message}"


class TemplateError(ValueError):
    """The --template itself is unusable (syntax, or a field no source provides)."""


class _Bad(Exception):
    pass


def _response_format(value: Any) -> ResponseFormat:
    if value in (None, "text") or value == {"type": "text"}:
        return "text"
    if value == "json" or value == {"type": "json_object"}:
        return "json"
    raise _Bad(f"response_format {value!r} is not supported (use 'json' or 'text')")


def _number(obj: Mapping[str, Any], key: str, kind: type, where: str) -> Any:
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, kind | int):
        raise _Bad(f"{where}{key} must be a number, got {value!r}")
    if kind is int and (not isinstance(value, int) or value <= 0):
        raise _Bad(f"{where}{key} must be a positive integer, got {value!r}")
    return value


def _batch_line(obj: dict[str, Any]) -> tuple[str, CompletionRequest]:
    custom_id = obj.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        raise _Bad("custom_id must be a non-empty string")
    method = obj.get("method", "POST")
    if method != "POST":
        raise _Bad(f"method {method!r} is not supported (only POST)")
    url = obj.get("url")
    endpoint = URLS.get(url) if isinstance(url, str) else None
    if endpoint is None:
        raise _Bad(f"url {url!r} is not supported (use one of {', '.join(URLS)})")
    body = obj.get("body")
    if not isinstance(body, dict):
        raise _Bad("body must be a JSON object")
    extra = {k: v for k, v in body.items() if k not in _BODY_FIELDS}
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise _Bad(f"body.model must be a string, got {model!r}")
    req = CompletionRequest(
        model=model,
        temperature=_number(body, "temperature", float, "body."),
        max_tokens=_number(body, "max_tokens", int, "body."),
        endpoint=endpoint,  # type: ignore[arg-type]
    )
    if endpoint == "chat":
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise _Bad("body.messages must be a non-empty list")
        if not all(isinstance(m, dict) and "role" in m for m in messages):
            raise _Bad("body.messages must hold objects with a 'role'")
        req.messages = messages
        req.response_format = _response_format(body.get("response_format"))
    elif endpoint == "embeddings":
        value = extra.pop("input", None)
        if isinstance(value, str):
            req.prompt = value
        elif isinstance(value, list) and value:
            extra["input"] = value
        else:
            raise _Bad("body.input must be a string or a non-empty list")
    else:
        value = extra.pop("prompt", None)
        if not isinstance(value, str):
            raise _Bad("body.prompt must be a string")
        req.prompt = value
    req.extra = extra or None
    return custom_id, req


def _simple_line(obj: dict[str, Any]) -> tuple[str, CompletionRequest]:
    unknown = sorted(set(obj) - SIMPLE_KEYS)
    if unknown:
        raise _Bad(
            f"unknown field {unknown[0]!r} (a simple line has {', '.join(sorted(SIMPLE_KEYS))})"
        )
    raw_id = obj.get("id")
    if isinstance(raw_id, bool) or not isinstance(raw_id, str | int) or raw_id == "":
        raise _Bad("id must be a non-empty string or an integer")
    prompt = obj.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        raise _Bad("prompt must be a non-empty string")
    for key in ("model", "system"):
        if obj.get(key) is not None and not isinstance(obj[key], str):
            raise _Bad(f"{key} must be a string")
    return str(raw_id), CompletionRequest(
        prompt=prompt,
        temperature=_number(obj, "temperature", float, ""),
        max_tokens=_number(obj, "max_tokens", int, ""),
        response_format=_response_format(obj.get("response_format")),
        model=obj.get("model"),
        system=obj.get("system"),
    )


def parse_line(raw: bytes, line: int) -> InputItem | BadLine | None:
    """One JSONL line -> an item, a `BadLine`, or None for a blank line."""
    if not raw.strip():
        return None
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as uni:
            return BadLine(line, f"not valid UTF-8 (byte {uni.start})")
        return BadLine(line, f"malformed JSON: {exc}")
    if not isinstance(obj, dict):
        return BadLine(line, f"expected a JSON object, got {type(obj).__name__}")
    try:
        if "custom_id" in obj or "body" in obj or "url" in obj:
            rid, req = _batch_line(obj)
        elif "id" in obj or "prompt" in obj:
            rid, req = _simple_line(obj)
        else:
            return BadLine(line, "no id or custom_id: not a request line")
    except _Bad as exc:
        return BadLine(line, str(exc))
    return InputItem(line, rid, req)


def read_jsonl(path: str | Path) -> Iterator[InputItem | BadLine]:
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            item = parse_line(raw, n)
            if item is not None:
                yield item


def template_fields(template: str) -> list[str]:
    """The placeholders of a --template; raises `TemplateError` on bad syntax."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise TemplateError(f"--template is not a valid format string: {exc}") from None
    fields = [name for _, name, _, _ in parsed if name is not None]
    if any(name == "" or name.isdigit() for name in fields):
        raise TemplateError("--template fields must be named, like {content}")
    if not fields:
        raise TemplateError("--template has no {field}: every request would be the same")
    return fields


def _render(template: str, values: Mapping[str, Any], base: CompletionRequest) -> CompletionRequest:
    try:
        prompt = template.format_map(values)
    except KeyError as exc:
        raise _Bad(f"template field {{{exc.args[0]}}} has no value here") from None
    return CompletionRequest(
        prompt=prompt,
        temperature=base.temperature,
        max_tokens=base.max_tokens,
        response_format=base.response_format,
        model=base.model,
        system=base.system,
    )


def read_files(
    template: str, pattern: str, base: CompletionRequest
) -> Iterator[InputItem | BadLine]:
    """One request per file matched by `pattern` (recursive `**`); id = path."""
    fields = set(template_fields(template))
    if not fields <= {"path", "content"}:
        unknown = sorted(fields - {"path", "content"})[0]
        raise TemplateError(
            f"--template field {{{unknown}}}: with --files only {{path}} and {{content}} exist"
        )
    paths = sorted(p for p in glob.iglob(pattern, recursive=True) if Path(p).is_file())
    for n, path in enumerate(paths, 1):
        try:
            content = Path(path).read_text(encoding="utf-8") if "content" in fields else ""
            yield InputItem(n, path, _render(template, {"path": path, "content": content}, base))
        except UnicodeDecodeError as exc:
            yield BadLine(n, f"{path} is not valid UTF-8 (byte {exc.start})", where="file")
        except OSError as exc:
            yield BadLine(n, f"{path} cannot be read: {exc.strerror}", where="file")


def read_rows(
    template: str, path: str | Path, id_field: str, base: CompletionRequest
) -> Iterator[InputItem | BadLine]:
    """One request per CSV row or JSONL object; fields by name; id from `id_field`."""
    template_fields(template)
    rows = _csv_rows(path) if str(path).endswith(".csv") else _jsonl_rows(path)
    for n, row in rows:
        if isinstance(row, BadLine):
            yield row
            continue
        rid = row.get(id_field)
        if rid is None or rid == "":
            yield BadLine(n, f"no value for the id field {id_field!r}", where="row")
            continue
        try:
            yield InputItem(n, str(rid), _render(template, row, base))
        except _Bad as exc:
            yield BadLine(n, str(exc), where="row")


def _csv_rows(path: str | Path) -> Iterator[tuple[int, dict[str, Any] | BadLine]]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        n = 1
        try:
            for n, row in enumerate(reader, 1):
                yield n, row
        except UnicodeDecodeError as exc:
            yield n + 1, BadLine(n + 1, f"not valid UTF-8 (byte {exc.start})", where="row")
        except csv.Error as exc:
            yield n + 1, BadLine(n + 1, f"malformed CSV: {exc}", where="row")


def _jsonl_rows(path: str | Path) -> Iterator[tuple[int, dict[str, Any] | BadLine]]:
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                obj = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                yield n, BadLine(n, f"malformed JSON: {exc}", where="row")
                continue
            if not isinstance(obj, dict):
                yield n, BadLine(n, "expected a JSON object", where="row")
                continue
            yield n, obj
