"""Answers priced by the service tier that served them: genai-prices' per-tier prices where it
has them (OpenAI's priority and flex), else the standard price for priority and the batch
price for flex, with the price list used said on the answer (and its output line).

The expected figures are asked of the genai-prices library directly, with its own price
context, so a test does not restate our arithmetic.
"""

from __future__ import annotations

import json
from pathlib import Path

import genai_prices
import pytest

from llmbatch import BatchResult, CompletionRequest, CompletionResponse, RunConfig, Usage
from llmbatch.budget import Budget, attempt_cost
from llmbatch.pipeline.costs import pricer_of
from llmbatch.pricing import (
    FixedPrices,
    GenaiPrices,
    Pricer,
    TierPrices,
    flex_costs_no_more,
    vendor_at,
)
from llmbatch.stats import calculate_batch_stats

from .helpers import cli, read_out, write_requests

USAGE = Usage(prompt_tokens=1200, completion_tokens=300)


def library(model: str, context: dict[str, str] | None) -> float:
    """What genai-prices says `USAGE` of `model` costs under `context`."""
    usage = genai_prices.Usage(input_tokens=USAGE.prompt_tokens, output_tokens=300)
    found = genai_prices.calc_price(
        usage, model_ref=model, provider_id="openai", price_context=context
    )
    return float(found.total_price)


def answer(model: str, tier: str | None) -> CompletionResponse:
    raw = {"model": model} | ({} if tier is None else {"service_tier": tier})
    return CompletionResponse("ok", model=model, usage=USAGE, raw=raw)


@pytest.mark.parametrize(
    ("model", "tier", "context", "price_list"),
    [
        # gpt-4o-mini has a priority price, no flex one: flex answers at the batch price.
        ("gpt-4o-mini", "priority", {"service_tier": "priority"}, "priority"),
        ("gpt-4o-mini", "flex", {"processing": "batch"}, "batch"),
        # gpt-5-mini has both.
        ("gpt-5-mini", "priority", {"service_tier": "priority"}, "priority"),
        ("gpt-5-mini", "flex", {"service_tier": "flex"}, "flex"),
        # gpt-3.5-turbo has neither: priority at the standard price, flex at the batch price.
        ("gpt-3.5-turbo", "priority", None, "standard"),
        ("gpt-3.5-turbo", "flex", {"processing": "batch"}, "batch"),
        # The default tier, and a reply that names none: standard, no price list to say.
        ("gpt-4o-mini", "default", None, None),
        ("gpt-4o-mini", None, None, None),
    ],
)
def test_an_answer_is_priced_by_the_tier_that_served_it(
    model: str, tier: str | None, context: dict[str, str] | None, price_list: str | None
) -> None:
    pricer = Pricer(GenaiPrices(), provider="openai")
    found = pricer.priced(answer(model, tier))
    assert found is not None
    usd, used = found
    assert usd == pytest.approx(library(model, context), rel=1e-9)
    assert used == price_list
    assert pricer.cost(answer(model, tier)) == usd


def test_the_priority_price_is_the_dearer_one_where_it_is_known() -> None:
    pricer = Pricer(GenaiPrices(), provider="openai")
    standard = pricer.cost(answer("gpt-4o-mini", "default"))
    priority = pricer.cost(answer("gpt-4o-mini", "priority"))
    assert standard is not None and priority is not None and priority > standard


def test_fixed_prices_price_priority_as_standard_and_flex_as_batch() -> None:
    """`--price-in/--price-out` name one price: priority answers pay it, and say so."""
    pricer = Pricer(FixedPrices(1.0, 2.0))
    assert not isinstance(pricer.source, TierPrices)
    full = (1200 * 1.0 + 300 * 2.0) / 1e6
    assert pricer.priced(answer("any", "priority")) == (pytest.approx(full), "standard")
    assert pricer.priced(answer("any", "flex")) == (pytest.approx(full / 2), "batch")


def test_a_priority_request_is_budgeted_at_the_priority_price() -> None:
    pricer = Pricer(GenaiPrices(), provider="openai", model="gpt-4o-mini")
    plain = CompletionRequest(prompt="x" * 400, max_tokens=100)
    priority = CompletionRequest(
        prompt="x" * 400, max_tokens=100, extra={"service_tier": "priority"}
    )
    low, high = pricer.worst_case(plain), pricer.worst_case(priority)
    assert low is not None and high is not None and high > low


def chat_line(rid: str, tier: str | None) -> dict[str, object]:
    """An input line in the OpenAI batch format, asking for `tier` in its own body."""
    body: dict[str, object] = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": f"question {rid}"}],
        "max_tokens": 8,
    }
    if tier is not None:
        body["service_tier"] = tier
    return {"custom_id": rid, "method": "POST", "url": "/v1/chat/completions", "body": body}


def test_a_run_records_the_price_list_on_each_tier_answer(start_sim, tmp_path: Path) -> None:
    """Through the CLI against the simulator (which echoes the tier): priority lines of
    gpt-4o-mini cost the priority price and their lines say "priced_as": "priority"."""
    sim = start_sim()
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    rows = [chat_line(f"p{i}", "priority") for i in range(4)] + [chat_line("s0", None)]
    inp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    done = cli(
        "run", str(inp), "-o", str(out), "--base-url", sim.url + "/v1", "--provider",
        "openai", "--model", "gpt-4o-mini", "--no-progress",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = {rec["custom_id"]: rec for rec in read_out(out)}
    for rid in ("p0", "p1", "p2", "p3"):
        meta = lines[rid]["llmbatch"]
        assert meta["service_tier"] == "priority" and meta["priced_as"] == "priority"
        usage = meta["usage"]
        expected = float(
            genai_prices.calc_price(
                genai_prices.Usage(
                    input_tokens=usage["prompt_tokens"], output_tokens=usage["completion_tokens"]
                ),
                model_ref="gpt-4o-mini",
                provider_id="openai",
                price_context={"service_tier": "priority"},
            ).total_price
        )
        assert meta["cost"] == pytest.approx(expected, rel=1e-6)
    assert "priced_as" not in lines["s0"]["llmbatch"]  # a standard answer: nothing to say


GROQ_URL = "https://api.groq.com/openai/v1"
GROQ_MODEL = "llama-3.3-70b-versatile"


def groq_library(context: dict[str, str] | None) -> float:
    """What genai-prices says `USAGE` of `GROQ_MODEL` at Groq's URL costs under `context`."""
    usage = genai_prices.Usage(input_tokens=USAGE.prompt_tokens, output_tokens=300)
    found = genai_prices.calc_price(
        usage, model_ref=GROQ_MODEL, provider_api_url=GROQ_URL, price_context=context
    )
    return float(found.total_price)


def test_groq_flex_answers_cost_the_standard_price_not_the_batch_one() -> None:
    """Groq sells flex at its on-demand price (only its batch API is 50% off), and genai-prices
    has no Groq flex price: a Groq flex answer costs the standard price, and says so."""
    assert vendor_at(GROQ_URL) == "groq"
    pricer = Pricer(GenaiPrices(base_url=GROQ_URL), provider="openai")
    standard = groq_library(None)
    assert pricer.priced(answer(GROQ_MODEL, "flex")) == (pytest.approx(standard), "standard")
    assert pricer.cost(answer(GROQ_MODEL, None)) == pytest.approx(standard)
    batch = CompletionResponse("ok", model=GROQ_MODEL, usage=USAGE, batch_api=True)
    batch_usd = pricer.cost(batch)
    assert batch_usd is not None and batch_usd < standard  # the batch API is the cheap one
    # OpenAI's flex, where the library has no flex price, is still the batch price.
    openai = Pricer(GenaiPrices(), provider="openai")
    assert openai.priced(answer("gpt-4o-mini", "flex")) == (
        pytest.approx(library("gpt-4o-mini", {"processing": "batch"})),
        "batch",
    )


def test_the_deadline_runner_feeds_groq_flex_only_when_it_must() -> None:
    """`flex_costs_no_more` decides whether a deadline run feeds its batches' work to flex
    early: never for Groq, whose flex is dearer than its batch API."""
    assert not flex_costs_no_more(Pricer(GenaiPrices(base_url=GROQ_URL)), GROQ_MODEL)
    assert flex_costs_no_more(Pricer(GenaiPrices(), provider="openai"), "gpt-4o-mini")


def test_a_run_at_groq_with_its_own_prices_pays_flex_at_them_in_full() -> None:
    """`--price-in/--price-out` at Groq's URL: flex answers pay the one price given, whole."""
    config = RunConfig(
        input="in.jsonl", output="out.jsonl", base_url=GROQ_URL, model=GROQ_MODEL,
        price_in=1.0, price_out=2.0,
    )  # fmt: skip
    pricer = pricer_of(config, lambda message: None)
    full = (1200 * 1.0 + 300 * 2.0) / 1e6
    assert pricer.priced(answer(GROQ_MODEL, "flex")) == (pytest.approx(full), "standard")
    assert not flex_costs_no_more(pricer, GROQ_MODEL)


def test_stats_and_the_budget_count_groq_flex_at_the_standard_price() -> None:
    pricer = Pricer(GenaiPrices(base_url=GROQ_URL), model=GROQ_MODEL)
    standard = groq_library(None)
    results = [BatchResult(f"r{i}", response=answer(GROQ_MODEL, "flex")) for i in range(3)]
    stats = calculate_batch_stats(results, pricer=pricer)
    assert stats.cost == pytest.approx(3 * standard)
    budget = Budget(1.0, pricer)
    request = CompletionRequest(prompt="x", model=GROQ_MODEL, max_tokens=300)
    spent = attempt_cost(budget.pricer, 0.5, request, answer(GROQ_MODEL, "flex"), None)
    assert spent == pytest.approx(standard)


def test_plan_prices_late_groq_batches_going_to_flex_at_the_full_price(tmp_path: Path) -> None:
    inp = tmp_path / "in.jsonl"
    write_requests(inp, [f"q{i}" for i in range(450)])
    args = ["plan", str(inp), "--base-url", GROQ_URL, "--model", GROQ_MODEL, "--rpm", "600"]
    args += ["--json", "--finish-by", "2h", "--service-tier", "flex"]
    done = cli(*args)
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)["deadline"]
    assert plan["late_lane"] == "flex" and plan["batch_requests"] > 0
    # Late batches go to Groq's flex, which costs what the realtime (standard) lane does.
    assert plan["cost_if_every_batch_late"] > 1.9 * plan["cost_batch_part"]
