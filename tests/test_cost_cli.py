"""`llmbatch plan` and `llmbatch run --max-cost` as real subprocesses against the simulator."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import genai_prices
import pytest

from llmbatch.text import chars_to_tokens

from .conftest import SimProcess
from .helpers import cli, read_out

MODEL = "gpt-4o-mini"  # the simulator answers as whatever model is asked for


def billed(prompt_tokens: int, completion_tokens: int) -> float:
    """What the provider would charge for this usage, by genai-prices itself."""
    usage = genai_prices.Usage(input_tokens=prompt_tokens, output_tokens=completion_tokens)
    return float(genai_prices.calc_price(usage, model_ref=MODEL, provider_id="openai").total_price)


def write_requests(path: Path, n: int, max_tokens: int = 16) -> list[str]:
    ids = [f"q{i}" for i in range(n)]
    with path.open("w") as f:
        for i, rid in enumerate(ids):
            prompt = f"question {i} about " + "things " * 60
            f.write(json.dumps({"id": rid, "prompt": prompt, "max_tokens": max_tokens}) + "\n")
    return ids


def run_args(sim: SimProcess, inp: Path, out: Path, *extra: str) -> list[str]:
    return [
        "run", str(inp), "-o", str(out), "--base-url", sim.url + "/v1",
        "--model", MODEL, "--no-progress", *extra,
    ]  # fmt: skip


def test_max_cost_stops_under_the_cap_and_a_rerun_finishes_exactly_once(
    tmp_path: Path,
    start_sim,  # type: ignore[no-untyped-def]
) -> None:
    sim = start_sim("--latency-ms", "20")
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    ids = write_requests(inp, 80)
    cap = 0.0006  # about a quarter of what the 80 requests cost
    proc = cli(*run_args(sim, inp, out, "--max-cost", str(cap), "--concurrency", "8"))
    assert proc.returncode == 4, proc.stderr
    assert "--max-cost $0.0006 reached" in proc.stderr and "not sent" in proc.stderr
    first = read_out(out)
    stats = sim.stats()
    # What the simulator billed (its own usage counts) never passes the cap, and every call
    # it answered has its line: nothing was bought and then dropped.
    assert billed(stats["prompt_tokens"], stats["completion_tokens"]) <= cap
    assert stats["received"] == len(first) and 0 < len(first) < len(ids)
    assert all(r["error"] is None for r in first)
    costs = [r["llmbatch"]["cost"] for r in first]
    for r, cost in zip(first, costs, strict=True):
        usage = r["response"]["body"]["usage"]
        assert cost == pytest.approx(billed(usage["prompt_tokens"], usage["completion_tokens"]))
    spent = sum(costs)
    assert f"${spent:.6f} spent" in proc.stderr
    # Stopped near the cap, not long before it: the next worst case no longer fitted.
    assert spent > cap / 2

    sim.reset()
    again = cli(*run_args(sim, inp, out, "--max-cost", "1.0", "--stats-json", str(tmp_path / "s")))
    assert again.returncode == 0, again.stderr
    records = read_out(out)
    counts = Counter(r["custom_id"] for r in records)
    assert set(counts) == set(ids) and set(counts.values()) == {1}
    # Never bought again: the rerun sent exactly the requests the first run left.
    assert sim.stats()["received"] == len(ids) - len(first)
    total = json.loads((tmp_path / "s").read_text())
    assert total["cost"] == pytest.approx(sum(r["llmbatch"]["cost"] for r in records))
    assert total["cost_by_model"] == {MODEL: pytest.approx(total["cost"])}


def test_a_rerun_with_the_same_cap_sends_nothing(tmp_path: Path, start_sim) -> None:  # type: ignore[no-untyped-def]
    sim = start_sim("--latency-ms", "5")
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_requests(inp, 40)
    first = cli(*run_args(sim, inp, out, "--max-cost", "0.0003"))
    assert first.returncode == 4, first.stderr
    sim.reset()
    # The spend so far is read back from the output: the cap is as spent as before.
    second = cli(*run_args(sim, inp, out, "--max-cost", "0.0003"))
    assert second.returncode == 4, second.stderr
    assert sim.stats()["received"] <= 1  # at most one small worst case still fits


def test_max_cost_needs_a_price(tmp_path: Path, start_sim) -> None:  # type: ignore[no-untyped-def]
    sim = start_sim()
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_requests(inp, 3)
    args = run_args(sim, inp, out, "--max-cost", "1")
    args[args.index(MODEL)] = "my-local-llama"
    proc = cli(*args)
    assert proc.returncode == 2 and "no price is known for model 'my-local-llama'" in proc.stderr
    assert sim.stats()["received"] == 0
    # Fixed prices make any model cappable, and price every line.
    proc = cli(*args, "--price-in", "1", "--price-out", "2")
    assert proc.returncode == 0, proc.stderr
    for r in read_out(out):
        usage = r["llmbatch"]["usage"]
        expected = (usage["prompt_tokens"] * 1 + usage["completion_tokens"] * 2) / 1e6
        assert r["llmbatch"]["cost"] == pytest.approx(expected)


def test_unknown_model_runs_unpriced_with_one_notice(tmp_path: Path, start_sim) -> None:  # type: ignore[no-untyped-def]
    sim = start_sim()
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_requests(inp, 5)
    args = run_args(sim, inp, out)
    args[args.index(MODEL)] = "my-local-llama"
    proc = cli(*args)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("no price known for model 'my-local-llama'") == 1
    assert all("cost" not in r["llmbatch"] for r in read_out(out))
    stats = cli("stats", str(out), "--json")
    assert json.loads(stats.stdout)["unpriced_count"] == 5


def test_plan_reports_bad_lines_like_run_and_sends_nothing(tmp_path: Path, start_sim) -> None:  # type: ignore[no-untyped-def]
    sim = start_sim()
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_requests(inp, 10, max_tokens=100)
    with inp.open("a") as f:
        f.write("{not json\n")
        f.write(json.dumps({"id": "q3", "prompt": "again"}) + "\n")
        f.write(json.dumps({"id": "big", "prompt": "x" * 4000, "max_tokens": 10}) + "\n")
    base = run_args(sim, inp, out, "--tpm", "500")
    planned = cli("plan", *base[1:], "--json")
    assert not out.exists()  # plan writes nothing, not even an empty output
    ran = cli(*base)
    assert ran.returncode == 2 and planned.returncode == 2
    bad = [line for line in ran.stderr.splitlines() if line.startswith("bad input")]
    assert len(bad) == 3
    assert [line for line in planned.stderr.splitlines() if line.startswith("bad input")] == bad
    assert sim.stats()["received"] == 0
    plan = json.loads(planned.stdout)
    assert plan["requests"] == 10 and plan["bad_lines"] == 3
    lines = [json.loads(x) for x in inp.read_text().splitlines()[:10]]
    tokens = sum(chars_to_tokens(len(x["prompt"])) for x in lines)
    assert plan["input_tokens_estimated"] == tokens
    assert plan["output_tokens_max"] == 1000 and plan["output_tokens_expected"] == 500
    in_price, out_price = 0.15, 0.60  # gpt-4o-mini, USD per 1M tokens
    assert plan["cost_usd"]["realtime_max"] == pytest.approx(
        (tokens * in_price + 1000 * out_price) / 1e6, rel=1e-6
    )
    assert plan["cost_usd"]["batch_expected"] < plan["cost_usd"]["realtime_expected"]
    # Under --tpm 500 the run needs (input + max_tokens) / 500 minutes.
    assert plan["time_bound_by"] == "tpm"
    assert plan["time_seconds"] == pytest.approx(60 * (tokens + 1000) / 500, rel=1e-3)


def test_plan_checks_and_counts_the_schema_as_run_does(tmp_path: Path) -> None:
    # plan ignored --schema: a broken schema planned fine (run refuses it, exit 2) and the
    # schema's text, sent with every request, was left out of the input estimate.
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_requests(inp, 4)
    schema = {"type": "object", "properties": {"label": {"type": "string"}}}
    good, broken = tmp_path / "good.json", tmp_path / "broken.json"
    good.write_text(json.dumps(schema))
    broken.write_text("{nope")
    base = ["plan", str(inp), "--model", MODEL, "--json"]
    proc = cli(*base, "--schema", str(broken))
    assert proc.returncode == 2 and "--schema: schema file" in proc.stderr, proc.stderr
    plain = json.loads(cli(*base).stdout)
    shaped = cli(*base, "--schema", str(good))
    assert shaped.returncode == 0, shaped.stderr
    lines = [json.loads(x) for x in inp.read_text().splitlines()]
    schema_chars = len(json.dumps(schema, separators=(",", ":")))
    expected = sum(chars_to_tokens(len(x["prompt"]) + schema_chars) for x in lines)
    assert json.loads(shaped.stdout)["input_tokens_estimated"] == expected
    assert expected > plain["input_tokens_estimated"]
    assert not out.exists()


def test_plan_of_a_resumed_run_learns_the_expected_output(tmp_path: Path, start_sim) -> None:  # type: ignore[no-untyped-def]
    sim = start_sim()
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_requests(inp, 20, max_tokens=100)
    proc = cli(*run_args(sim, inp, out, "--max-cost", "0.0002"))
    assert proc.returncode == 4, proc.stderr
    done = read_out(out)
    planned = cli("plan", *run_args(sim, inp, out)[1:], "--rpm", "60", "--json")
    assert planned.returncode == 0, planned.stderr
    plan = json.loads(planned.stdout)
    assert plan["requests"] == 20 - len(done) and plan["skipped_done"] == len(done)
    per_answer = sum(r["llmbatch"]["usage"]["completion_tokens"] for r in done) / len(done)
    assert plan["output_tokens_expected"] == round(per_answer * plan["requests"])
    assert f"the {len(done)} answers in" in plan["expected_output_basis"]
    assert plan["time_seconds"] == pytest.approx(60.0 * plan["requests"] / 60)
    table = cli("plan", *run_args(sim, inp, out)[1:])
    assert table.returncode == 0 and "cost batch API" in table.stdout
