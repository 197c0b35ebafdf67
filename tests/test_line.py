"""`llmbatch.io.line.ResultLine`: the output line, encoded and decoded in one place."""

from __future__ import annotations

import orjson

from llmbatch import BatchResult, CompletionResponse, Usage
from llmbatch.errors import RateLimitError
from llmbatch.io.line import ResultLine, with_money
from llmbatch.types import Timing


def test_an_answer_round_trips() -> None:
    result = BatchResult(
        "a",
        response=CompletionResponse("hi", model="m1", usage=Usage(10, 3), raw={"model": "m1"}),
        attempts=2,
        duration=1.25,
        cost=0.5,
        parsed={"k": 1},
    )
    result.timing = Timing(100.0, 101.25, 0.1, 1.0, 0.15, ((0.05, 0.5, 429), (0.05, 0.5, 200)))
    line = ResultLine.decode(ResultLine.of(result).encode())
    assert line is not None and line.ok and line.custom_id == "a"
    assert (line.model, line.attempts, line.duration, line.money) == ("m1", 2, 1.25, 0.5)
    assert (line.prompt_tokens, line.completion_tokens, line.parsed) == (10, 3, {"k": 1})
    assert line.timed and line.attempt_log == ((0.05, 0.5, 429), (0.05, 0.5, 200))
    assert ResultLine.decode(line.encode()) == line


def test_a_failure_round_trips() -> None:
    line = ResultLine.decode(ResultLine.of(BatchResult("b", error=RateLimitError())).encode())
    assert line is not None and not line.ok and line.code == "rate_limit"
    assert line.message.startswith("RateLimitError") and line.prompt_tokens is None


def test_foreign_lines_are_not_result_lines_and_bad_numbers_read_as_absent() -> None:
    for foreign in (b"[1]", b'{"custom_id": 5}', b'{"custom_id": "x", "error": "e"}', b"no"):
        assert ResultLine.decode(foreign) is None
    odd = {"custom_id": "x", "error": None, "llmbatch": {"cost": "1", "duration": True}}
    line = ResultLine.decode(orjson.dumps(odd))
    assert line is not None and line.cost is None and line.duration == 0.0


def test_with_money_keeps_fields_it_does_not_know() -> None:
    raw = orjson.dumps({"custom_id": "x", "llmbatch": {"cost": 1.0, "mine": [1]}}) + b"\n"
    patched = with_money(raw, 3.0)
    assert patched is not None
    assert orjson.loads(patched)["llmbatch"] == {"cost": 1.0, "mine": [1], "extra_cost": 2.0}
    assert with_money(patched, 3.0) is None
