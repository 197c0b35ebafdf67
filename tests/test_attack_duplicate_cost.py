"""Money paid for an id outlives its lines: a rerun's spend (the journal scan) counts it.

A deadline run can buy one request on both paths around its switch (`ResultSink.
count_duplicate`); a redone failed line supersedes a paid one. Both costs used to live in
memory only, or vanish when close compacted the file to one line per id, so the next run's
`--max-cost` budget started lower than what had been spent. Real journal files throughout.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmbatch.errors import InvalidOutputError
from llmbatch.io.journal import Journal, journal_stats
from llmbatch.io.sink import ResultSink
from llmbatch.pricing import FixedPrices, Pricer
from llmbatch.types import BatchResult, CompletionResponse, Usage

PRICER = Pricer(FixedPrices(1.0, 1.0), model="m")  # $1 per million tokens either way


def answer(text: str, tokens: int, *, batch: bool = False) -> CompletionResponse:
    body = {"model": "m", "choices": [{"message": {"content": text}}]}
    return CompletionResponse(text, "m", Usage(tokens, 0), raw=body, batch_api=batch)


def rescan(out: Path) -> float:
    with Journal(out) as journal:
        return journal.scan.cost


@pytest.mark.parametrize("crash", [False, True])
def test_an_answer_bought_on_both_paths_is_counted_by_the_rerun(tmp_path, crash) -> None:
    out = tmp_path / "out.jsonl"
    journal = Journal(out)
    journal.open()
    sink = ResultSink(journal, expected=2, pricer=PRICER)
    sink.write(BatchResult("a", response=answer("realtime", 3_000_000)))  # $3
    sink.write(BatchResult("b", response=answer("other", 1_000_000)))  # $1
    sink.count_duplicate(BatchResult("a", response=answer("realtime again", 2_000_000)))
    assert sink.spent == pytest.approx(6.0) and sink.duplicate_cost == pytest.approx(2.0)
    if crash:
        journal.abandon()  # killed: no compaction; the next open sees both lines
    else:
        sink.close()
        lines = [json.loads(x) for x in out.read_text().splitlines()]
        assert sorted(rec["custom_id"] for rec in lines) == ["a", "b"]  # one line per id
    assert rescan(out) == pytest.approx(6.0)
    assert rescan(out) == pytest.approx(6.0)  # and again once that open compacted it
    assert journal_stats(out).cost == pytest.approx(6.0)


def test_a_paid_line_superseded_by_a_redo_keeps_its_cost_after_compaction(tmp_path) -> None:
    out = tmp_path / "out.jsonl"
    with Journal(out) as journal:
        sink = ResultSink(journal, expected=1, pricer=PRICER)
        bad = InvalidOutputError("off-schema", response=answer("nope", 1_000_000))
        sink.write(BatchResult("a", error=bad))  # paid $1, no answer
        sink.close()
    with Journal(out) as journal:  # --retry-failed
        sink = ResultSink(journal, expected=1, pricer=PRICER)
        sink.write(BatchResult("a", response=answer("yes", 2_000_000)))
        sink.close()
    assert len(out.read_text().splitlines()) == 1
    assert rescan(out) == pytest.approx(3.0)
