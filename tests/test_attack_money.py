"""Issue 27, items 2 and 8: `--max-cost` must hold and money shown must be every dollar paid.

Each case is an attack that passed the cap (or hid spend) before: an output limit named
`max_completion_tokens`, embeddings of a list of inputs, attempts that timed out on our side
but that the server answered (and billed), paid lines that failed, and a batch exit message
that contradicted itself. Real CLI subprocesses against the simulator, real files.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from llmbatch.budget import Budget
from llmbatch.io.formats import read_jsonl
from llmbatch.pricing import FixedPrices, Pricer
from llmbatch.types import CompletionRequest

from .conftest import SimProcess
from .helpers import cli, read_out

# USD per 1M input / output tokens, as --price-in / --price-out: any model name is priced.
PRICE_IN, PRICE_OUT = 1.0, 4.0
PRICES = ("--price-in", str(PRICE_IN), "--price-out", str(PRICE_OUT))
PRICER = Pricer(FixedPrices(PRICE_IN, PRICE_OUT), model="m")


def run_args(
    sim: SimProcess, inp: Path, out: Path, *extra: str, prices: tuple[str, ...] = PRICES
) -> list[str]:
    return [
        "run", str(inp), "-o", str(out), "--base-url", sim.url + "/v1",
        "--model", "m", "--no-progress", *prices, *extra,
    ]  # fmt: skip


def write_lines(path: Path, bodies: list[dict[str, object]], url: str) -> None:
    with path.open("w") as f:
        for i, body in enumerate(bodies):
            line = {"custom_id": f"r{i}", "method": "POST", "url": url, "body": body}
            f.write(json.dumps(line) + "\n")


def requests_of(path: Path) -> list[CompletionRequest]:
    items = list(read_jsonl(path))
    return [item.request for item in items]  # type: ignore[union-attr]


def settled(sim: SimProcess) -> dict[str, object]:
    """The simulator's counters once nothing is in flight (bounded: replies take 2.5 s)."""
    for _ in range(200):
        stats = sim.stats()
        if stats["in_flight"] == 0:
            return stats
        time.sleep(0.05)
    raise AssertionError("the simulator still has requests in flight")


# -- item 2a: the output limit a request sets under another name --------------------------------


def test_max_completion_tokens_bounds_the_worst_case_and_the_plan(
    tmp_path: Path,
    start_sim,  # type: ignore[no-untyped-def]
) -> None:
    sim = start_sim()
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    messages = [{"role": "user", "content": "write a long essay"}]
    write_lines(
        inp,
        [{"model": "m", "messages": messages, "max_completion_tokens": 20000}] * 5,
        "/v1/chat/completions",
    )
    request = requests_of(inp)[0]
    worst = PRICER.worst_case(request)
    assert worst is not None and worst >= 20000 * PRICE_OUT / 1e6
    # Responses' name for it counts the same; where several are set, the largest.
    responses = CompletionRequest(prompt="x", extra={"max_output_tokens": 9000.0})
    assert responses.output_limit() == 9000
    both = CompletionRequest(prompt="x", max_tokens=10, extra={"max_completion_tokens": 300})
    assert both.output_limit() == 300

    # A cap below one request's worst case sends nothing (4,096 tokens were assumed: 4 sent).
    cap = 0.07
    assert cap < worst
    proc = cli(*run_args(sim, inp, out, "--max-cost", str(cap)))
    assert proc.returncode == 4, proc.stderr
    assert sim.stats()["received"] == 0

    plan = cli("plan", str(inp), "-o", str(tmp_path / "p.jsonl"), *PRICES, "--json")
    assert plan.returncode == 0, plan.stderr
    maximum = json.loads(plan.stdout)["cost_usd"]["realtime_max"]
    assert maximum >= 5 * 20000 * PRICE_OUT / 1e6


# -- item 2b: embeddings of a list of inputs ----------------------------------------------------


def test_embeddings_of_lists_are_costed_per_element_and_stay_under_the_cap(
    tmp_path: Path,
    start_sim,  # type: ignore[no-untyped-def]
) -> None:
    sim = start_sim()
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    texts = [f"passage {j} " + "words " * 40 for j in range(30)]
    token_ids = [list(range(1000 + j, 1400 + j)) for j in range(4)]
    bodies: list[dict[str, object]] = [{"model": "m", "input": texts}] * 10
    bodies += [{"model": "m", "input": token_ids}] * 10
    write_lines(inp, bodies, "/v1/embeddings")
    requests = requests_of(inp)
    # An embedding model has no output price: the input is all the cost.
    pricer = Pricer(FixedPrices(PRICE_IN, 0.0), model="m")
    by_text, by_ids = pricer.worst_case(requests[0]), pricer.worst_case(requests[-1])
    assert by_text is not None and by_text >= 30 * 250 * PRICE_IN / 1e6
    assert by_ids is not None and by_ids >= 4 * 400 * PRICE_IN / 1e6

    cap = 0.02  # about a fifth of what the 20 requests can cost
    prices = ("--price-in", str(PRICE_IN), "--price-out", "0")
    args = run_args(sim, inp, out, "--max-cost", str(cap), "--concurrency", "4", prices=prices)
    proc = cli(*args)
    assert proc.returncode == 4, proc.stderr
    stats = sim.stats()
    assert 0 < stats["received"] < len(bodies)
    assert stats["prompt_tokens"] * PRICE_IN / 1e6 <= cap
    lines = read_out(out)
    assert all(line["llmbatch"]["cost"] > 0 for line in lines)


# -- item 2c: attempts that timed out on our side but were billed ------------------------------


def test_timed_out_attempts_count_so_reruns_do_not_spend_the_cap_again(
    tmp_path: Path,
    start_sim,  # type: ignore[no-untyped-def]
) -> None:
    # The server answers (and bills) every request, after 2.5 s: always after our timeout.
    sim = start_sim("--latency-ms", "2500")
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    with inp.open("w") as f:
        for i in range(30):
            f.write(json.dumps({"id": f"q{i}", "prompt": f"question {i} " * 20, "max_tokens": 50}))
            f.write("\n")
    worst = PRICER.worst_case(requests_of(inp)[0])
    assert worst is not None
    cap = 8.5 * worst  # room for eight attempts in all
    args = run_args(sim, inp, out, "--max-cost", str(cap), "--request-timeout", "1")
    args += ["--concurrency", "4", "--stats-json", str(tmp_path / "s.json")]
    for _ in range(3):
        proc = cli(*args)
        assert proc.returncode == 4, proc.stderr
    received = settled(sim)["received"]
    assert isinstance(received, int)
    # Every attempt that reached the server may have been billed up to its worst case: over
    # the three runs together, never more than the cap.
    assert received > 0 and received * worst <= cap * (1 + 1e-9)
    # Each sent attempt is on its line, at its worst case, and so in the stats' cost.
    lines = read_out(out)
    assert sum(line["llmbatch"].get("cost") or 0 for line in lines) == pytest.approx(
        received * worst
    )
    assert {line["error"]["code"] for line in lines} == {"timeout"}
    assert json.loads((tmp_path / "s.json").read_text())["cost"] == pytest.approx(received * worst)


# -- item 8: money shown ------------------------------------------------------------------------


def test_stats_and_the_budget_message_count_paid_lines_that_failed(
    tmp_path: Path,
    start_sim,  # type: ignore[no-untyped-def]
) -> None:
    sim = start_sim("--invalid-rate", "1.0")  # every reply breaks the schema, and is paid
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    schema = tmp_path / "label.json"
    schema.write_text(
        json.dumps(
            {
                "type": "object",
                "properties": {"label": {"type": "string"}},
                "required": ["label"],
                "additionalProperties": False,
            }
        )
    )
    with inp.open("w") as f:
        for i in range(40):
            f.write(json.dumps({"id": f"q{i}", "prompt": f"label {i}", "max_tokens": 30}) + "\n")
    args = run_args(sim, inp, out, "--schema", str(schema), "--max-cost", "0.002")
    proc = cli(*args, "--concurrency", "2")
    lines = read_out(out)
    assert lines and all(line["error"]["code"] == "invalid_output" for line in lines)
    paid = sum(line["llmbatch"]["cost"] for line in lines)
    assert paid > 0
    assert proc.returncode == 4, proc.stderr
    assert f"${paid:.6f} spent on {out}" in proc.stderr

    stats = cli("stats", str(out), "--json")  # exit 1: the file holds failed lines
    assert json.loads(stats.stdout)["cost"] == pytest.approx(paid)


def test_the_refusal_names_what_is_left_after_what_is_held() -> None:
    budget = Budget(0.002, PRICER)
    assert budget.admit_amount(0.001995)  # a provider batch in flight holds its worst case
    assert not budget.admit_amount(0.000009)
    reason = budget.exhausted
    assert reason is not None
    # Not "$0.000009, more than the $0.002000 left": what is held is not left.
    assert "up to $0.000009, more than the $0.000005 left" in reason
    assert "$0.001995" in reason  # and what holds the rest is said


def test_the_refusal_never_shows_two_equal_amounts() -> None:
    budget = Budget(0.00001, PRICER, spent=0.0000004)
    assert not budget.admit_amount(0.0000096001)
    reason = budget.exhausted
    assert reason is not None
    # $0.0000096001 does not fit in $0.0000096: rounded to 6 places both read $0.000010.
    assert "$0.000010, more than the $0.000010" not in reason


def test_every_paid_reply_is_on_its_line_re_asked_ones_too(tmp_path: Path, start_sim) -> None:  # type: ignore[no-untyped-def]
    sim = start_sim("--invalid-rate", "1.0")  # every reply breaks the schema: re-asked, paid
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    schema = tmp_path / "label.json"
    schema.write_text(json.dumps({"type": "object", "required": ["label"]}))
    with inp.open("w") as f:
        for i in range(10):
            f.write(json.dumps({"id": f"q{i}", "prompt": f"label {i}", "max_tokens": 30}) + "\n")
    proc = cli(*run_args(sim, inp, out, "--schema", str(schema)))
    assert proc.returncode == 1, proc.stderr
    lines = read_out(out)
    assert len(lines) == 10 and all(line["llmbatch"]["attempts"] > 1 for line in lines)
    stats = sim.stats()
    billed = (stats["prompt_tokens"] * PRICE_IN + stats["completion_tokens"] * PRICE_OUT) / 1e6
    assert sum(line["llmbatch"]["cost"] for line in lines) == pytest.approx(billed)


def test_an_attempt_abandoned_in_flight_counts_at_its_worst_case(start_sim) -> None:  # type: ignore[no-untyped-def]
    import asyncio
    import contextlib

    from llmbatch import BatchRequest, Engine, EngineConfig
    from llmbatch.clients.openai import OpenAIClient

    sim = start_sim("--latency-ms", "3000")  # answers (and bills) after we gave up
    budget = Budget(1.0, PRICER)
    request = CompletionRequest(prompt="a question", max_tokens=20, model="m")
    worst = PRICER.worst_case(request)

    async def main() -> None:
        client = OpenAIClient(base_url=sim.url + "/v1", api_key="sk-test", model="m")
        engine = Engine(client, EngineConfig(budget=budget, max_concurrency=1))

        async def consume() -> None:
            async with contextlib.aclosing(engine.stream([BatchRequest("r", request)])) as rs:
                async for _ in rs:
                    pass

        task = asyncio.create_task(consume())
        for _ in range(400):  # until the server has the request (bounded)
            if (await asyncio.to_thread(sim.stats))["received"]:
                break
            await asyncio.sleep(0.02)
        task.cancel()  # the run is stopped: the attempt is abandoned after it was sent
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await client.aclose()

    asyncio.run(main())
    assert sim.stats()["received"] == 1
    assert budget.reserved == 0 and budget.spent == pytest.approx(worst)


def test_money_of_a_redone_line_survives_the_compaction(tmp_path: Path, start_sim) -> None:  # type: ignore[no-untyped-def]
    from llmbatch.io.journal import Journal, journal_stats

    sim = start_sim("--invalid-rate", "1.0")  # every reply is paid and fails
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    schema = tmp_path / "label.json"
    schema.write_text(json.dumps({"type": "object", "required": ["label"]}))
    with inp.open("w") as f:
        for i in range(6):
            f.write(json.dumps({"id": f"q{i}", "prompt": f"label {i}", "max_tokens": 30}) + "\n")
    args = run_args(sim, inp, out, "--schema", str(schema), "--max-invalid-retries", "0")
    assert cli(*args).returncode == 1
    again = cli(*args, "--retry-failed")  # paid again; the rewrite keeps one line per id
    assert again.returncode == 1, again.stderr
    assert len(read_out(out)) == 6
    stats = sim.stats()
    billed = (stats["prompt_tokens"] * PRICE_IN + stats["completion_tokens"] * PRICE_OUT) / 1e6
    # What a rerun reads as spent, and what stats show, is what the server billed for both.
    with Journal(out) as journal:
        assert journal.scan.cost == pytest.approx(billed)
    assert journal_stats(out).cost == pytest.approx(billed)


def test_stats_of_a_file_not_yet_compacted_count_the_superseded_lines_money(
    tmp_path: Path,
) -> None:
    from llmbatch.io.journal import journal_stats

    out = tmp_path / "out.jsonl"
    failed = {"code": "invalid_output", "message": "InvalidOutputError: off-schema"}
    lines = [  # q0 failed (paid), then was redone (a run killed before its rewrite at close)
        {"custom_id": "q0", "response": None, "error": failed, "llmbatch": {"cost": 0.25}},
        {"custom_id": "q1", "response": None, "error": None, "llmbatch": {"cost": 0.5}},
        {"custom_id": "q0", "response": None, "error": None, "llmbatch": {"cost": 1.0}},
    ]
    out.write_text("".join(json.dumps(line) + "\n" for line in lines))
    stats = journal_stats(out)
    assert stats.total_requests == 2 and stats.failure_count == 0
    assert stats.cost == pytest.approx(1.75)


def test_nothing_in_flight_holds_nothing() -> None:
    budget = Budget(1.0, PRICER)
    for amount in (0.1, 0.2, 0.3):  # float sums leave a residue: 0.1 + 0.2 + 0.3 - ... != 0
        assert budget.admit_amount(amount)
    for amount in (0.1, 0.2, 0.3):
        budget.settle_amount(amount, amount / 3)
    assert budget.in_flight == 0 and budget.reserved == 0.0
    assert not budget.admit_amount(0.9)
    assert budget.exhausted is not None and "held" not in budget.exhausted
