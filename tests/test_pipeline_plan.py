"""`llmbatch.plan(config)`: what a run would cost, priced the way the provider bills."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import llmbatch


def test_tiered_prices_apply_per_request_not_to_the_runs_sum(tmp_path: Path) -> None:
    # Ten requests of about 50k input tokens: each is under Claude Sonnet 4.5's 200k tier,
    # though their sum (500k) is over it. The plan must price each at the base rate.
    inp = tmp_path / "in.jsonl"
    with inp.open("w") as f:
        for i in range(10):
            f.write(json.dumps({"id": str(i), "prompt": "word " * 40_000, "max_tokens": 100}))
            f.write("\n")
    config = llmbatch.RunConfig(
        input=str(inp), output=str(tmp_path / "out.jsonl"), provider="anthropic",
        model="claude-sonnet-4-5",
    )  # fmt: skip
    plan = llmbatch.plan(config)
    assert plan.requests == 10 and plan.input_tokens == pytest.approx(500_000, rel=0.01)
    # $3 per 1M input, $15 per 1M output below the tier (twice that above it).
    base = plan.input_tokens * 3e-6 + plan.output_tokens_expected * 15e-6
    assert plan.cost_realtime == pytest.approx(base, rel=0.01)
    assert plan.cost_batch == pytest.approx(base / 2, rel=0.01)
