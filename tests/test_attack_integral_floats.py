"""`max_tokens: 1000.0` is the integer 1000 (JSON has one number type); 1000.5 is refused.

It was refused as "not a number", stopping the whole run before anything was sent.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmbatch.io.formats import BadLine, InputItem, parse_line

from .helpers import cli, read_out, run_args


@pytest.mark.parametrize(
    "line",
    [
        {"id": "a", "prompt": "hi", "max_tokens": 1000.0},
        {
            "custom_id": "a",
            "url": "/v1/chat/completions",
            "body": {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1e3},
        },
    ],
    ids=["simple", "batch"],
)
def test_an_integral_float_is_that_integer(line: dict[str, object]) -> None:
    item = parse_line(json.dumps(line).encode(), 1)
    assert isinstance(item, InputItem), item
    assert item.request.max_tokens == 1000 and type(item.request.max_tokens) is int


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (1000.5, "max_tokens must be a positive integer, got 1000.5"),
        (0.0, "max_tokens must be a positive integer, got 0.0"),
        (-3.0, "max_tokens must be a positive integer, got -3.0"),
        ("1000", "max_tokens must be a number, got '1000'"),
        (True, "max_tokens must be a number, got True"),
    ],
)
def test_other_values_are_refused_saying_why(value: object, message: str) -> None:
    item = parse_line(json.dumps({"id": "a", "prompt": "hi", "max_tokens": value}).encode(), 4)
    assert isinstance(item, BadLine) and str(item) == f"line 4: {message}"


def test_a_run_with_integral_float_max_tokens_answers_every_line(  # type: ignore[no-untyped-def]
    tmp_path: Path, start_sim
) -> None:
    sim = start_sim()
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    inp.write_text(
        "".join(
            json.dumps({"id": f"r{i}", "prompt": f"say {i}", "max_tokens": 50.0}) + "\n"
            for i in range(3)
        )
    )
    proc = cli(*run_args(sim, inp, out))
    assert proc.returncode == 0, proc.stderr
    records = read_out(out)
    assert sorted(r["custom_id"] for r in records) == ["r0", "r1", "r2"]
    assert all(r["error"] is None for r in records)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": "x", "prompt": "p", "max_tokens": 50.5}) + "\n")
    proc = cli(*run_args(sim, bad, tmp_path / "bad-out.jsonl"))
    assert proc.returncode == 2 and "line 1: max_tokens must be a positive integer, got 50.5" in (
        proc.stderr
    )
