"""Input formats: JSONL request lines (two shapes) and templates over files or rows.

    for item in read_jsonl("requests.jsonl"):
        if isinstance(item, BadLine): print(item)            # 'line 7: ...'
        else: item.id, item.request

Two line shapes are recognised per line:
- the OpenAI Batch API line `{"custom_id", "method", "url", "body"}` for /v1/chat/completions,
  /v1/responses, /v1/embeddings and /v1/completions; unknown `body` fields are passed through
  to the provider; a `response_format` (chat) or `text.format` (responses) of type
  `json_schema` becomes the request's `Schema` (checked, validated). A Responses body's
  `input` (a string, or a list of input items) and `instructions` become the request's
  prompt or messages and its system text, `max_output_tokens` its `max_tokens`;
- a simple line `{"id", "prompt", "temperature"?, "max_tokens"?, "response_format"?, "model"?,
  "system"?}`; an unknown key here is an error (it is almost always a typo). It goes to the
  reader's `endpoint` ("chat" unless the run says "responses").

Everything streams: one line in memory at a time. Problems come back as `BadLine` values
naming the line (or row, or file) so the caller decides whether to stop or skip.
"""

from __future__ import annotations

import codecs
import csv
import glob
import io
import re
import string
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

import orjson

from ..schema import SchemaError, schema_of_response_format
from ..types import CompletionRequest, ResponseFormat

__all__ = [
    "MAX_FIELD_CHARS",
    "BadLine",
    "InputItem",
    "MissingField",
    "TemplateError",
    "items_of_rows",
    "parse_line",
    "read_files",
    "read_jsonl",
    "read_rows",
    "template_fields",
]

URLS = {
    "/v1/chat/completions": "chat",
    "/v1/responses": "responses",
    "/v1/embeddings": "embeddings",
    "/v1/completions": "completions",
}
SIMPLE_KEYS = frozenset(
    {"id", "prompt", "temperature", "max_tokens", "response_format", "model", "system"}
)
# The largest CSV field read (the csv module's own default, 128 KiB, drops ordinary long
# abstracts and source files); a larger one is a bad row, not a reason to stop reading.
MAX_FIELD_CHARS = 64 * 1024 * 1024
MissingField = Literal["error", "empty"]
_SURROGATE = re.compile("[\udc80-\udcff]")
_BODY_FIELDS = frozenset({"model", "messages", "temperature", "max_tokens", "response_format"})
# Chat fields a Responses body names otherwise: dropping one would change the request.
_NOT_RESPONSES = {
    "messages": "input",
    "max_tokens": "max_output_tokens",
    "response_format": "text.format",
}
Endpoint = Literal["chat", "responses"]


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
    """The template itself is unusable (syntax, or a field no source provides)."""


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
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Bad(f"{where}{key} must be a number, got {value!r}")
    if kind is int:
        # JSON has one number type, and some writers (pandas, JavaScript) print 1000 as
        # 1000.0: an integral float is that integer, sent as one (APIs refuse 1000.0).
        number = int(value) if isinstance(value, float) and value.is_integer() else value
        if not isinstance(number, int) or number <= 0:
            raise _Bad(f"{where}{key} must be a positive integer, got {value!r}")
        return number
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
    if endpoint == "responses":
        for name, instead in _NOT_RESPONSES.items():
            if name in body:
                raise _Bad(f"body.{name} is a chat field; a /v1/responses body has {instead}")
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
            if "input" in body and "messages" not in body:
                raise _Bad(
                    f"body.messages is missing; a body with input is a Responses request: "
                    f"give url /v1/responses (this line's url is {url})"
                )
            raise _Bad("body.messages must be a non-empty list")
        if not all(isinstance(m, dict) and "role" in m for m in messages):
            raise _Bad("body.messages must hold objects with a 'role'")
        req.messages = messages
        rf = body.get("response_format")
        if isinstance(rf, dict) and rf.get("type") == "json_schema":
            try:  # OpenAI's structured output, as a batch line writes it
                req.schema = schema_of_response_format(rf, where="body.response_format")
            except SchemaError as exc:
                raise _Bad(str(exc)) from None
        else:
            req.response_format = _response_format(rf)
    elif endpoint == "responses":
        _responses_body(req, extra)
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


def _responses_body(req: CompletionRequest, extra: dict[str, Any]) -> None:
    """`req` filled from a /v1/responses body's own fields, taken out of `extra`."""
    value = extra.pop("input", None)
    if isinstance(value, str) and value:
        req.prompt = value
    elif isinstance(value, list) and value:
        if not all(isinstance(item, dict) for item in value):
            raise _Bad("body.input must hold objects (input items)")
        req.messages = value
    else:
        raise _Bad("body.input must be a non-empty string or a non-empty list of input items")
    instructions = extra.pop("instructions", None)
    if instructions is not None and not isinstance(instructions, str):
        raise _Bad(f"body.instructions must be a string, got {instructions!r}")
    req.system = instructions or None
    req.max_tokens = _number(extra, "max_output_tokens", int, "body.")
    extra.pop("max_output_tokens", None)
    text = extra.pop("text", None)
    if text is None:
        return
    if not isinstance(text, dict):
        raise _Bad(f"body.text must be an object, got {text!r}")
    rest = {k: v for k, v in text.items() if k != "format"}
    if rest:  # verbosity and the like are sent as they are
        extra["text"] = rest
    fmt = text.get("format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        try:
            req.schema = schema_of_response_format(fmt, where="body.text.format")
        except SchemaError as exc:
            raise _Bad(str(exc)) from None
        return
    try:
        req.response_format = _response_format(fmt)
    except _Bad:
        raise _Bad(
            f"body.text.format {fmt!r} is not supported (use json_schema, json_object or text)"
        ) from None


def _simple_line(obj: dict[str, Any], endpoint: Endpoint = "chat") -> tuple[str, CompletionRequest]:
    if not SIMPLE_KEYS.issuperset(obj):  # the common case costs one set test, no sort
        unknown = sorted(set(obj) - SIMPLE_KEYS)
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
        endpoint=endpoint,
    )


def parse_line(raw: bytes, line: int, endpoint: Endpoint = "chat") -> InputItem | BadLine | None:
    """One JSONL line -> an item, a `BadLine`, or None for a blank line. A simple line goes
    to `endpoint`; a batch line names its own (`url`)."""
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
            rid, req = _simple_line(obj, endpoint)
        else:
            return BadLine(line, "no id or custom_id: not a request line")
    except _Bad as exc:
        return BadLine(line, str(exc))
    return InputItem(line, rid, req)


def read_jsonl(path: str | Path, *, endpoint: Endpoint = "chat") -> Iterator[InputItem | BadLine]:
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            item = parse_line(raw, n, endpoint)
            if item is not None:
                yield item


def template_fields(template: str) -> list[str]:
    """The placeholders of a template; raises `TemplateError` on bad syntax."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise TemplateError(f"`template` is not a valid format string: {exc}") from None
    fields = [name for _, name, _, _ in parsed if name is not None]
    if any(name == "" or name.isdigit() for name in fields):
        raise TemplateError("`template` fields must be named, like {content}")
    if not fields:
        raise TemplateError("`template` has no {field}: every request would be the same")
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
        endpoint=base.endpoint,
    )


def _fill(row: Mapping[str, Any], fields: list[str], missing: MissingField) -> dict[str, Any]:
    """The template's values from `row`: a field absent, null or empty is a bad row, unless
    `missing="empty"`, which fills it with ""."""
    values: dict[str, Any] = {}
    for name in fields:
        value = row.get(name)
        if value is None or value == "":
            if missing == "error":
                state = "empty" if value == "" else "missing"
                raise _Bad(f"template field {{{name}}} is {state}")
            value = ""
        values[name] = value
    return values


def read_files(
    template: str,
    pattern: str,
    base: CompletionRequest,
    *,
    leave_out: Callable[[str], bool] | None = None,
) -> Iterator[InputItem | BadLine]:
    """One request per file matched by `pattern` (recursive `**`); id = path. Paths for which
    `leave_out` is true are not read at all (the run's own output, lock and index)."""
    fields = set(template_fields(template))
    if not fields <= {"path", "content"}:
        unknown = sorted(fields - {"path", "content"})[0]
        raise TemplateError(
            f"`template` field {{{unknown}}}: with `files` only {{path}} and {{content}} exist"
        )
    paths = sorted(
        p
        for p in glob.iglob(pattern, recursive=True)
        if Path(p).is_file() and not (leave_out is not None and leave_out(p))
    )
    for n, path in enumerate(paths, 1):
        try:
            content = Path(path).read_text(encoding="utf-8") if "content" in fields else ""
            yield InputItem(n, path, _render(template, {"path": path, "content": content}, base))
        except UnicodeDecodeError as exc:
            yield BadLine(n, f"{path} is not valid UTF-8 (byte {exc.start})", where="file")
        except OSError as exc:
            yield BadLine(n, f"{path} cannot be read: {exc.strerror}", where="file")


def read_rows(
    template: str,
    path: str | Path,
    id_field: str,
    base: CompletionRequest,
    *,
    missing: MissingField = "error",
    max_field_chars: int = MAX_FIELD_CHARS,
) -> Iterator[InputItem | BadLine]:
    """One request per CSV row or JSONL object; fields by name; id from `id_field`.

        read_rows("T: {title} A: {abstract}", "papers.csv", "id", base, missing="empty")

    A row whose template field is absent, null or empty is a `BadLine` naming the field
    (`row 12: template field {abstract} is missing`); `missing="empty"` fills it with "".
    Rows are numbered as records, from 1: in a CSV the header is not a row and a record
    whose quoted field spans several lines is one row (its first line is in the message of a
    bad row); in a JSONL file a row is a line. A bad row never costs more than itself: a
    field longer than `max_field_chars`, bytes that are not UTF-8, or malformed CSV are
    reported with that row's true number and reading goes on. Nothing is lost unsaid: a
    quote never closed (which would read the rest of the file as one field) and a row with
    more non-empty fields than the header are bad rows naming their lines.
    """
    fields = template_fields(template)
    csv_file = str(path).endswith(".csv")
    rows = _csv_rows(path, max_field_chars) if csv_file else _jsonl_rows(path)
    return items_of_rows(template, rows, id_field, base, missing=missing, fields=fields)


def items_of_rows(
    template: str,
    rows: Iterable[tuple[int, Mapping[str, Any] | BadLine]],
    id_field: str,
    base: CompletionRequest,
    *,
    missing: MissingField = "error",
    fields: list[str] | None = None,
) -> Iterator[InputItem | BadLine]:
    """One request per row of (row number, row or `BadLine`): the rules of `read_rows` for
    rows from anywhere (the columnar tables of `llmbatch.io.tables`)."""
    fields = fields if fields is not None else template_fields(template)
    for n, row in rows:
        if isinstance(row, BadLine):
            yield row
            continue
        rid = row.get(id_field)
        if rid is None or rid == "":
            yield BadLine(n, f"no value for the id field {id_field!r}", where="row")
            continue
        try:
            yield InputItem(n, str(rid), _render(template, _fill(row, fields, missing), base))
        except _Bad as exc:
            yield BadLine(n, str(exc), where="row")


# Longest first: a UTF-32 LE mark begins with the UTF-16 LE one.
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


def bom_encoding(head: bytes) -> str:
    """The encoding a byte-order mark at the start of a file names, else "utf-8"."""
    return next((name for bom, name in _BOMS if head.startswith(bom)), "utf-8")


def _decoded_lines(f: IO[bytes], encoding: str) -> Iterator[str]:
    """The file's lines, decoded one at a time: a bad byte is kept as a lone surrogate
    (`surrogateescape`) so it spoils only its own row, which is then reported.

    Spreadsheets save "Unicode text" as UTF-16 with a byte-order mark: a mark names the
    encoding (UTF-8, UTF-16, UTF-32) and the file is read in it; without one it is UTF-8."""
    if encoding not in ("utf-8", "utf-8-sig"):
        # newline="" keeps each line's ending, as iterating the bytes does.
        text = io.TextIOWrapper(f, encoding=encoding, errors="surrogateescape", newline="")
        try:
            yield from text
        except UnicodeDecodeError:
            # A truncated code unit at the end (the handler only escapes bytes >= 0x80):
            # one last row holding a lone surrogate, reported as undecodable.
            yield "\udcff\n"
        finally:
            text.detach()
        return
    first = True
    for raw in f:
        if first and raw.startswith(codecs.BOM_UTF8):
            raw = raw[len(codecs.BOM_UTF8) :]
        first = False
        yield raw.decode("utf-8", "surrogateescape")


def _bad_utf8(values: list[str]) -> int | None:
    """The column index of the first field holding undecodable bytes, or None."""
    for i, value in enumerate(values):
        if _SURROGATE.search(value):
            return i
    return None


def _csv_rows(
    path: str | Path, max_field_chars: int
) -> Iterator[tuple[int, dict[str, Any] | BadLine]]:
    # The csv module's field limit is process-wide; it is only ever raised here (so no other
    # reader is affected), and the limit that applies to this file is checked per row below.
    # Raised to at least MAX_FIELD_CHARS, so that the csv module never trips over a field
    # first: its error comes mid-record and would leave the record's tail to be misread.
    wanted = max(MAX_FIELD_CHARS, max_field_chars) + 1
    if csv.field_size_limit() < wanted:
        csv.field_size_limit(wanted)
    with open(path, "rb") as f:
        encoding = bom_encoding(f.read(4))
        f.seek(0)
        named = "UTF-8" if encoding.startswith("utf-8") else encoding.upper()
        header: list[str] = []
        for n, values, first_line, last_line in strict_csv(_decoded_lines(f, encoding)):
            if isinstance(values, csv.Error):
                where = _lines(first_line, last_line)
                if n == 0:
                    yield 0, BadLine(0, f"the CSV header is malformed: {values}", where="row")
                    return
                if "unexpected end of data" in str(values):  # _csv.c's words for EOF in quotes
                    problem = (
                        f"a quote opened here is never closed ({where}, to the end of the file)"
                    )
                else:
                    problem = f"malformed CSV ({where}): {values}"
                yield n, BadLine(n, problem, where="row")
                continue
            if n == 0:
                header = values
                if _bad_utf8(header) is not None:
                    yield 0, BadLine(0, f"the CSV header is not valid {named}", where="row")
                    return
                continue
            where = _lines(first_line, last_line)
            if len(values) > len(header) and any(values[len(header) :]):
                # A value past the last named column has no name to be read by: it would be
                # dropped. Empty trailing fields ("a,b,") lose nothing and pass.
                yield (
                    n,
                    BadLine(
                        n,
                        f"{len(values)} fields, but the header names {len(header)} ({where})",
                        where="row",
                    ),
                )
                continue
            if (col := _bad_utf8(values)) is not None:
                name = header[col] if col < len(header) else f"#{col + 1}"
                yield n, BadLine(n, f"field {name!r} is not valid {named} ({where})", where="row")
                continue
            if (big := max(map(len, values), default=0)) > max_field_chars:
                yield (
                    n,
                    BadLine(
                        n,
                        f"a field of {big} characters is over the limit of "
                        f"{max_field_chars} ({where})",
                        where="row",
                    ),
                )
                continue
            yield n, dict(zip(header, values, strict=False))


def strict_csv(lines: Iterable[str]) -> Iterator[tuple[int, list[str] | csv.Error, int, int]]:
    """A CSV read strictly, as every rows file is read (the run's `--rows`, export's
    `--rows`/`--join`): a quote never closed, or closed and followed by more text, is an
    error naming the lines it spans, not a field quietly holding the rows after it.

    Yields (row number, its values or the `csv.Error` it is, first line, last line); row 0
    is the header (after an error there nothing more comes). Blank lines are no rows.
    """
    reader = csv.reader(lines, strict=True)
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as exc:
        yield 0, exc, 1, reader.line_num
        return
    yield 0, header, 1, reader.line_num
    n = 0
    while True:
        first = reader.line_num + 1
        try:
            values = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            n += 1
            yield n, exc, first, reader.line_num
            continue
        if values:
            n += 1
            yield n, values, first, reader.line_num


def _lines(first: int, last: int) -> str:
    return f"line {first}" if first == last else f"lines {first}-{last}"


def jsonl_rows(path: str | Path) -> Iterator[tuple[int, dict[str, Any] | str]]:
    """The rows of a JSONL rows file, as every one is read (the run's `--rows`, export's
    `--rows`/`--join`): (line number, the row), or (line number, what is wrong with the
    line) for the caller to refuse or skip. A BOM before the first line is dropped; blank
    lines are no rows."""
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            if n == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8) :]
            if not raw.strip():
                continue
            try:
                obj = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                yield n, f"malformed JSON: {exc}"
                continue
            yield n, obj if isinstance(obj, dict) else "expected a JSON object"


def _jsonl_rows(path: str | Path) -> Iterator[tuple[int, dict[str, Any] | BadLine]]:
    for n, row in jsonl_rows(path):
        yield n, BadLine(n, row, where="row") if isinstance(row, str) else row
