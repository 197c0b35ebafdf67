"""What a run reads: the input, as items checked once and read again to send.

    source = source_of(config)        # a callable: each call reads the input again, streaming
    for item in source(): ...         # InputItem (line, id, request) or BadLine

The input is INPUT (JSONL), requests built from a template over files or rows, or, from
Python, the requests themselves. The run's schema (`schema`) is put on every chat request
here, so the precheck, the plan and every executor see the same requests.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Collection, Iterable, Iterator
from pathlib import Path

from ..io.formats import BadLine, InputItem, read_files, read_jsonl
from ..schema import Schema, SchemaError
from ..tiers import wire_tier, with_tier
from ..types import BatchRequest, CompletionRequest, conversational
from .config import RunConfig
from .errors import ConfigError
from .paths import output_files
from .rows import rows_name, rows_source

__all__ = ["Source", "load_schema", "source_of", "where_of"]

Source = Callable[[], Iterator[InputItem | BadLine]]


def where_of(config: RunConfig) -> str:
    """How messages name the input."""
    if config.requests is not None:
        return "requests"
    if _given(config.rows):
        return rows_name(config.rows)
    return config.input or "files"


def _given(rows: object) -> bool:
    """True when `rows` is set (an empty path is not: the CLI's default is None)."""
    return rows is not None and not (isinstance(rows, str) and not rows)


def source_of(config: RunConfig) -> Source:
    """The run's input, with its schema on every chat request (settings checked first)."""
    if config.json and (config.input or config.requests is not None):
        raise ConfigError(
            "json",
            "`json` applies to `template` requests; a JSONL line sets its own "
            '"response_format" (or give `schema`, which applies to every line)',
        )
    source = _plain_source(config)
    schema = load_schema(config)
    if schema is not None:
        source = _with_schema(source, schema)
    if config.service_tier is not None and not config.batch_api:
        # A deadline run (batch_api) picks each line's lane itself.
        source = _with_tier(source, wire_tier(config.service_tier))
    return source


def load_schema(config: RunConfig) -> Schema | None:
    if config.schema is None:
        return None
    try:
        if isinstance(config.schema, str | os.PathLike):
            return Schema.from_file(config.schema, mode=config.schema_mode)
        return Schema.of(config.schema, mode=config.schema_mode)
    except SchemaError as exc:
        raise ConfigError("schema", f"`schema`: {exc}") from None


def _plain_source(config: RunConfig) -> Source:
    given = [
        name for name in ("input", "template", "requests") if getattr(config, name) is not None
    ]
    if len(given) > 1:
        raise ConfigError(given[1], "give one of `input`, `template` or `requests`, not both")
    if config.requests is not None:
        if config.endpoint != "chat":
            raise ConfigError(
                "endpoint",
                "`endpoint` applies to JSONL and template input; a request from Python names "
                'its own (CompletionRequest(endpoint="responses"))',
            )
        return _requests_source(config.requests)
    if config.template is not None:
        base = CompletionRequest(
            temperature=config.temperature,
            max_tokens=config.max_tokens,
            response_format="json" if config.json else "text",
            model=None,
            system=config.system,
            endpoint=config.endpoint,
        )
        if bool(config.files) == _given(config.rows):
            raise ConfigError("template", "`template` needs exactly one of `files` or `rows`")
        if config.files:
            return _files_source(config.template, config.files, base, own_files(config.output))
        return rows_source(config, base)
    if config.files or _given(config.rows):
        raise ConfigError("files", "`files` and `rows` need `template`")
    if not config.input:
        raise ConfigError("input", "give `input` (a JSONL file) or `template` with `files`/`rows`")
    path = Path(config.input)
    if not path.is_file():
        raise ConfigError("input", f"`input` {path}: no such file")
    return lambda: read_jsonl(path, endpoint=config.endpoint)


def _requests_source(given: object) -> Source:
    """Requests from Python: read again for each pass, so a one-shot iterator cannot do."""
    make: Callable[[], Iterable[object]]
    if callable(given):
        make = given
    elif isinstance(given, Collection):
        make = lambda: given  # noqa: E731
    else:
        raise ConfigError(
            "requests",
            "`requests` must be a list (or other collection) of BatchRequest, or a function "
            "returning a fresh iterable of them: the run reads them twice (check, then send), so a "
            "one-shot iterator or generator cannot be used",
        )

    def items() -> Iterator[InputItem | BadLine]:
        for n, item in enumerate(make(), 1):
            if isinstance(item, BatchRequest):
                yield InputItem(n, item.id, item.request)
            else:
                yield BadLine(n, f"not a BatchRequest: {type(item).__name__}", where="request")

    return items


def own_files(output: str | None) -> set[str]:
    """The files a run itself writes: the output and the files it keeps beside it."""
    if not output:  # `llmbatch plan` without an output
        return set()
    real = Path(os.path.realpath(output))
    names = [real] + [path for _, path in output_files(real)]
    return {str(p) for p in names} | {os.path.abspath(output)}


def _files_source(template: str, pattern: str, base: CompletionRequest, own: set[str]) -> Source:
    # The output is created before the files are listed: a glob like "**/*" would otherwise
    # send the run's own output, lock and index as requests (the index is not even text).
    def items() -> Iterator[InputItem | BadLine]:
        return read_files(template, pattern, base, leave_out=lambda p: os.path.realpath(p) in own)

    return items


def _with_tier(source: Source, tier: str) -> Source:
    def items() -> Iterator[InputItem | BadLine]:
        for item in source():
            if isinstance(item, InputItem):
                # A copy that asks for the tier, unless the line names its own.
                item.request = with_tier(item.request, tier)
            yield item

    return items


def _with_schema(source: Source, schema: Schema) -> Source:
    def items() -> Iterator[InputItem | BadLine]:
        for item in source():
            if isinstance(item, InputItem):
                if not conversational(item.request):
                    yield BadLine(
                        item.line,
                        f"`schema` applies to chat and responses requests; this one is for "
                        f"{item.request.endpoint!r}",
                    )
                    continue
                if item.request.schema is None:  # a line's own json_schema wins
                    # A copy: requests from Python are the caller's objects.
                    item.request = dataclasses.replace(item.request, schema=schema)
            yield item

    return items
