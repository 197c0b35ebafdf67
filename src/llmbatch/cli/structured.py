"""`llmbatch run`'s structured-output flags: a schema for every chat request, and re-asks.

    llmbatch run in.jsonl -o out.jsonl --schema invoice.schema.json --max-invalid-retries 3
    source = structured_source(args, source_of(args))   # every chat item carries the schema

The schema file is checked (Draft 2020-12) before the output is opened, so a broken schema
costs nothing. Every chat request of the run gets it, JSONL lines and templates alike; a line
for another endpoint (embeddings, completions) becomes a bad line naming the flag.

`--json` asks template requests for JSON; a JSONL line says what it wants itself
(`response_format`), so `--json` with INPUT is refused rather than silently ignored
(`--schema` is the flag that applies to every line; a batch line's own `json_schema`
response format is that line's schema and wins over the flag).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator

from ..io.formats import BadLine, InputItem
from ..replies import DEFAULT_MAX_INVALID_RETRIES, ReplyPolicy
from ..schema import SCHEMA_MODES, Schema, SchemaError
from ._common import positive_int
from .paths import Source
from .usage import UsageError

__all__ = ["add_arguments", "load_schema", "reply_policy", "structured_source"]


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text}")
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("structured output")
    g.add_argument(
        "--schema",
        metavar="FILE",
        help="JSON Schema every chat reply must fit: sent natively (OpenAI json_schema, "
        "Anthropic forced tool), each reply validated; the parsed object is written in the "
        "line's llmbatch.parsed",
    )
    g.add_argument(
        "--schema-mode",
        choices=SCHEMA_MODES,
        default="native",
        help="native (default): the provider's structured output; prompt: JSON mode plus the "
        "schema in the system prompt, for servers without schema support",
    )
    g.add_argument(
        "--max-invalid-retries",
        type=_count,
        default=DEFAULT_MAX_INVALID_RETRIES,
        metavar="N",
        help="re-ask a reply that breaks the schema up to N times, the validator's message "
        f"added to the conversation (default {DEFAULT_MAX_INVALID_RETRIES}); then the line "
        "fails as invalid_output, the reply kept",
    )
    g.add_argument(
        "--max-tokens-on-truncation",
        type=positive_int,
        metavar="N",
        help="retry a JSON reply cut off at max_tokens once with max_tokens N (default: no "
        "retry; the line fails as truncated, the partial reply kept)",
    )


def load_schema(args: argparse.Namespace) -> Schema | None:
    if not getattr(args, "schema", None):
        return None
    try:
        return Schema.from_file(args.schema, mode=args.schema_mode)
    except SchemaError as exc:
        raise UsageError(f"--schema: {exc}") from None


def reply_policy(args: argparse.Namespace) -> ReplyPolicy:
    """The one reply policy of a run, local or on Ray."""
    return ReplyPolicy(
        max_invalid_retries=getattr(args, "max_invalid_retries", DEFAULT_MAX_INVALID_RETRIES),
        max_tokens_on_truncation=getattr(args, "max_tokens_on_truncation", None),
    )


def structured_source(args: argparse.Namespace, source: Source) -> Source:
    """`source` with the run's schema on every chat request (checked flags first)."""
    if getattr(args, "json", False) and args.input:
        raise UsageError(
            "--json applies to --template requests; a JSONL line sets its own "
            '"response_format" (or give --schema, which applies to every line)'
        )
    schema = load_schema(args)
    if schema is None:
        return source

    def items() -> Iterator[InputItem | BadLine]:
        for item in source():
            if isinstance(item, InputItem):
                if item.request.endpoint != "chat":
                    yield BadLine(
                        item.line,
                        f"--schema applies to chat requests; this one is for "
                        f"{item.request.endpoint!r}",
                    )
                    continue
                if item.request.schema is None:  # a line's own json_schema wins
                    item.request.schema = schema
            yield item

    return items
