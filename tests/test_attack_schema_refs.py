"""A schema whose `$ref`s loop is refused when loaded; checking a reply never crashes.

A loop such as `a: {$ref: b}`, `b: {$ref: a}` passed every check, then each reply (already
paid for) failed with a RecursionError; a reply nested deeper than Python's stack did too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from llmbatch.schema import Schema, SchemaError, SchemaRefCycle, SchemaViolation

from .test_cli_run import cli, run_args
from .test_structured import write_inputs

LOOP: dict[str, Any] = {
    "type": "object",
    "properties": {"x": {"$ref": "#/$defs/a"}},
    "$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"allOf": [{"$ref": "#/$defs/a"}]}},
}


def test_a_ref_loop_in_the_schema_file_is_refused_before_sending(  # type: ignore[no-untyped-def]
    tmp_path: Path, start_sim
) -> None:
    sim = start_sim()
    inp, out, schema = tmp_path / "in.jsonl", tmp_path / "out.jsonl", tmp_path / "loop.json"
    write_inputs(inp, 3)
    schema.write_text(json.dumps(LOOP))
    proc = cli(*run_args(sim, inp, out, "--schema", str(schema)))
    assert proc.returncode == 2, proc.stderr
    assert "#/$defs/a -> #/$defs/b -> #/$defs/a" in proc.stderr
    assert "at /properties/x" in proc.stderr and "Traceback" not in proc.stderr
    assert sim.stats()["received"] == 0 and not out.exists()


@pytest.mark.parametrize(
    ("schema", "refs", "at"),
    [
        ({"type": "object", "$ref": "#"}, ("#", "#"), ""),
        (
            {
                "type": "object",
                "anyOf": [{"not": {"$ref": "#/$defs/n"}}],
                "$defs": {"n": {"$ref": "#"}},
            },
            ("#", "#/$defs/n", "#"),
            "",
        ),
        (LOOP, ("#/$defs/a", "#/$defs/b", "#/$defs/a"), "/properties/x"),
    ],
)
def test_the_loop_is_named_in_the_errors_fields(
    schema: dict[str, Any], refs: tuple[str, ...], at: str
) -> None:
    with pytest.raises(SchemaRefCycle) as caught:
        Schema.from_dict(schema)
    assert caught.value.refs == refs and caught.value.at == at
    assert isinstance(caught.value, SchemaError)


def test_recursion_through_the_value_is_a_valid_schema() -> None:
    # A tree: each $ref steps into a part of the reply, so checking it ends.
    tree = Schema.from_dict(
        {
            "type": "object",
            "properties": {
                "children": {"type": "array", "items": {"$ref": "#"}},
                "next": {"$ref": "#/$defs/node"},
            },
            "$defs": {"node": {"type": "object", "properties": {"next": {"$ref": "#/$defs/node"}}}},
        }
    )
    reply = {"children": [{"children": []}], "next": {"next": {"next": {}}}}
    assert tree.validate(json.dumps(reply)) == reply
    with pytest.raises(SchemaViolation):
        tree.validate('{"children": [{"children": 1}]}')


def test_a_reply_nested_too_deeply_is_a_violation_not_a_crash() -> None:
    tree = Schema.from_dict(
        {"type": "object", "properties": {"c": {"$ref": "#"}}, "additionalProperties": False}
    )
    deep = '{"c":' * 1000 + "{}" + "}" * 1000  # within orjson's depth limit, past Python's stack
    with pytest.raises(SchemaViolation, match="nested too deeply"):
        tree.validate(deep)
