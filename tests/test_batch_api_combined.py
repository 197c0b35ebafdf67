"""--batch-api combined with --max-cost, --schema, --metrics-port and --report, against the
simulator (the CLI as a subprocess, the library in process)."""

from __future__ import annotations

import json
import re
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from llmbatch.batch_api import BatchAPIConfig, BatchAPIRunner
from llmbatch.budget import Budget, BudgetExceededError
from llmbatch.clients import OpenAIClient
from llmbatch.io.journal import Journal
from llmbatch.io.sink import ResultSink
from llmbatch.pricing import FixedPrices, Pricer
from llmbatch.types import BatchRequest, CompletionRequest

from .conftest import SimProcess
from .helpers import batch_run_args, cli, ledger_chunks, read_out, start_cli, wait_for

PRICES = ("--price-in", "1", "--price-out", "4")  # USD per 1M tokens; batch: half of it
MODEL = "gpt-4o-mini"
SCHEMA = {
    "type": "object",
    "properties": {
        "label": {"type": "string", "enum": ["spam", "ham"]},
        "score": {"type": "integer", "minimum": 0, "maximum": 10},
    },
    "required": ["label", "score"],
    "additionalProperties": False,
}


def write_requests(path: Path, n: int) -> list[str]:
    # Ids of one length: every request has the same worst case.
    ids = [f"q{i:03d}" for i in range(n)]
    path.write_text(
        "".join(
            json.dumps({"id": rid, "prompt": f"question {rid} " + "word " * 40, "max_tokens": 16})
            + "\n"
            for rid in ids
        )
    )
    return ids


def worst_case(path: Path) -> float:
    """The batch-price worst case of the first request of `path` (all are alike)."""
    line = json.loads(path.read_text().splitlines()[0])
    request = CompletionRequest(prompt=line["prompt"], max_tokens=line["max_tokens"], model=MODEL)
    worst = Pricer(FixedPrices(1, 4)).worst_case(request, batch=True)
    assert worst is not None
    return worst


def billed(stats: dict[str, Any]) -> float:
    """What the simulator's usage counts cost at the batch price (half of 1 / 4 USD per 1M)."""
    return 0.5 * (stats["prompt_tokens"] * 1 + stats["completion_tokens"] * 4) / 1e6


# -- budget ------------------------------------------------------------------------------------


def test_max_cost_is_checked_per_batch_and_a_higher_cap_finishes_exactly_once(
    start_sim: Any, tmp_path: Path
) -> None:
    sim: SimProcess = start_sim("--batch-seconds", "0.2")
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    ids = write_requests(inp, 60)
    w = worst_case(inp)
    cap = 15.5 * w  # 15 worst cases fit: a full batch of 10, then one closed early at 5
    args = batch_run_args(sim, "openai", inp, out, *PRICES, "--batch-max-requests", "10")
    proc = cli(*args, "--max-cost", repr(cap))
    assert proc.returncode == 4, proc.stderr
    assert f"--max-cost ${cap:g} reached" in proc.stderr
    assert "45 request(s) not sent" in proc.stderr, proc.stderr
    first = read_out(out)
    assert len(first) == 15 and all(r["error"] is None for r in first)
    assert all(r["llmbatch"]["batch_api"] for r in first)
    stats = sim.stats()
    assert stats["batches_created"] == 2
    assert [c["count"] for c in ledger_chunks(out)] == [10, 5]
    assert billed(stats) <= cap
    # Each line's cost is its usage at the batch price, and the message's spend is their sum.
    for r in first:
        usage = r["response"]["body"]["usage"]
        expect = 0.5 * (usage["prompt_tokens"] + 4 * usage["completion_tokens"]) / 1e6
        assert r["llmbatch"]["cost"] == pytest.approx(expect)
    assert f"${sum(r['llmbatch']['cost'] for r in first):.6f} spent" in proc.stderr

    # The same cap again: the spend is re-read from the output, never passed.
    again = cli(*args, "--max-cost", repr(cap))
    assert again.returncode == 4, again.stderr
    assert billed(sim.stats()) <= cap
    assert 15 < len(read_out(out)) < 60

    done = cli(*args, "--max-cost", "1")
    assert done.returncode == 0, done.stderr
    records = read_out(out)
    counts = Counter(r["custom_id"] for r in records)
    assert set(counts) == set(ids) and set(counts.values()) == {1}
    chunks = ledger_chunks(out)
    # Never bought twice: one batch per chunk, every chunk's ids distinct from the others'.
    assert sim.stats()["batches_created"] == len(chunks)
    assert sum(c["count"] for c in chunks) == len(ids)
    assert all(c["extra"]["worst_cost"] <= c["count"] * w * (1 + 1e-9) for c in chunks)


def test_batches_left_running_hold_their_worst_case_on_the_rerun(
    start_sim: Any, tmp_path: Path
) -> None:
    sim: SimProcess = start_sim("--batch-seconds", "4")
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_requests(inp, 40)
    cap = 15.5 * worst_case(inp)
    args = batch_run_args(sim, "openai", inp, out, *PRICES, "--batch-max-requests", "10")
    proc = start_cli(*args, "--max-cost", repr(cap))
    try:
        wait_for(
            lambda: sum(1 for c in ledger_chunks(out) if c["batch_id"]) == 2,
            "both batches created",
        )
        proc.send_signal(signal.SIGINT)  # the batches keep running at the provider
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert not out.exists() or read_out(out) == []
    # Nothing is written yet, so the spend re-read is 0; the two live batches still hold
    # their worst case: the rerun with the same cap submits nothing new.
    again = cli(*args, "--max-cost", repr(cap))
    assert again.returncode == 4, again.stderr
    assert sim.stats()["batches_created"] == 2
    assert len(read_out(out)) == 15
    assert billed(sim.stats()) <= cap


async def test_library_runner_with_a_budget_stops_submitting(
    start_sim: Any, tmp_path: Path
) -> None:
    sim: SimProcess = start_sim("--batch-seconds", "0.2")
    client = OpenAIClient(api_key="sk-test", base_url=sim.url + "/v1", model=MODEL)
    pricer = Pricer(FixedPrices(1, 4), model=MODEL)
    requests = [
        BatchRequest(f"r{i:02d}", CompletionRequest(prompt=f"question r{i:02d}", max_tokens=8))
        for i in range(20)
    ]
    w = pricer.worst_case(requests[0].request, batch=True)
    assert w is not None
    budget = Budget(7.5 * w, pricer)
    config = BatchAPIConfig(tmp_path / "out.jsonl", poll_interval=0.05, budget=budget)

    results = []
    try:
        async for result in BatchAPIRunner(client, config).stream(requests):
            results.append(result)
    finally:
        await client.aclose()
    refused = [r for r in results if isinstance(r.error, BudgetExceededError)]
    answered = [r for r in results if r.error is None]
    assert len(refused) == 1 and refused[0].id == "r07"  # the first that did not fit
    assert [r.id for r in answered] == [f"r{i:02d}" for i in range(7)]
    assert sim.stats()["batches_created"] == 1
    # Settled to what the answers cost at the batch price; nothing still reserved.
    assert budget.reserved == 0 and budget.in_flight == 0
    assert budget.spent == pytest.approx(sum(r.cost or 0 for r in answered))
    assert 0 < budget.spent <= budget.max_cost
    assert budget.exhausted is not None


# -- structured output -------------------------------------------------------------------------


def _schema_file(tmp_path: Path) -> Path:
    path = tmp_path / "schema.json"
    path.write_text(json.dumps(SCHEMA))
    return path


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_batch_answers_are_validated_and_invalid_ones_kept_as_failed(
    start_sim: Any, tmp_path: Path, provider: str
) -> None:
    sim: SimProcess = start_sim("--batch-seconds", "0.2", "--invalid-rate", "0.3", "--seed", "5")
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    ids = write_requests(inp, 30)
    schema = _schema_file(tmp_path)
    args = batch_run_args(sim, provider, inp, out, "--schema", str(schema))
    proc = cli(*args)
    assert proc.returncode == 1, proc.stderr  # some lines failed validation
    records = read_out(out)
    assert sorted(r["custom_id"] for r in records) == ids
    ok = [r for r in records if r["error"] is None]
    bad = [r for r in records if r["error"] is not None]
    assert ok and bad
    for r in ok:  # sent natively (json_schema / forced tool), parsed into the line
        jsonschema.validate(r["llmbatch"]["parsed"], SCHEMA)
        assert r["llmbatch"]["batch_api"]
    for r in bad:
        assert r["error"]["code"] == "invalid_output", r["error"]
        assert r["response"]["body"], "the reply is kept"
    assert sim.stats()["received"] == 0  # nothing realtime without --expired realtime

    # --retry-failed puts exactly the invalid lines in the next batch.
    again = cli(*args, "--retry-failed")
    assert again.returncode in (0, 1), again.stderr
    chunks = ledger_chunks(out)
    assert chunks[-1]["count"] == len(bad)
    assert sim.stats()["batches_created"] == len(chunks)
    assert Counter(r["custom_id"] for r in read_out(out)) == Counter(ids)


def test_invalid_batch_answers_are_re_asked_realtime(start_sim: Any, tmp_path: Path) -> None:
    sim: SimProcess = start_sim("--batch-seconds", "0.2", "--invalid-rate", "0.4", "--seed", "2")
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    ids = write_requests(inp, 30)
    schema = _schema_file(tmp_path)
    plain = batch_run_args(sim, "openai", inp, tmp_path / "plain.jsonl", "--schema", str(schema))
    assert cli(*plain).returncode == 1
    invalid = {r["custom_id"] for r in read_out(tmp_path / "plain.jsonl") if r["error"] is not None}
    assert invalid
    sim.reset()

    args = batch_run_args(sim, "openai", inp, out, "--schema", str(schema), "--expired", "realtime")
    proc = cli(*args, "--max-invalid-retries", "3")
    assert f"re-asking {len(invalid)} reply(ies)" in proc.stderr, proc.stderr
    records = read_out(out)
    assert sorted(r["custom_id"] for r in records) == ids
    by_id = {r["custom_id"]: r for r in records}
    # The same answers in the batch (the simulator draws faults from the request body) ...
    for rid in set(ids) - invalid:
        assert by_id[rid]["error"] is None and by_id[rid]["llmbatch"]["batch_api"]
    # ... and the invalid ones re-asked realtime with the validator's message: a new body.
    stats = sim.stats()
    assert stats["received"] >= len(invalid)
    fixed = [rid for rid in invalid if by_id[rid]["error"] is None]
    assert fixed
    for rid in fixed:
        jsonschema.validate(by_id[rid]["llmbatch"]["parsed"], SCHEMA)
        assert not by_id[rid]["llmbatch"].get("batch_api")
    for rid in invalid - set(fixed):
        assert by_id[rid]["error"]["code"] == "invalid_output"
    assert proc.returncode == (0 if len(fixed) == len(invalid) else 1), proc.stderr


async def test_library_runner_parses_into_the_response_model(
    start_sim: Any, tmp_path: Path
) -> None:
    pydantic = pytest.importorskip("pydantic")

    class Verdict(pydantic.BaseModel):  # type: ignore[name-defined,misc]
        label: str
        score: int

    sim: SimProcess = start_sim("--batch-seconds", "0.1")
    client = OpenAIClient(api_key="sk-test", base_url=sim.url + "/v1", model=MODEL)
    config = BatchAPIConfig(tmp_path / "out.jsonl", poll_interval=0.05, response_model=Verdict)
    requests = [BatchRequest(f"r{i}", CompletionRequest(prompt=f"item {i}")) for i in range(5)]
    try:
        results = [r async for r in BatchAPIRunner(client, config).stream(requests)]
    finally:
        await client.aclose()
    assert len(results) == 5
    for r in results:
        assert r.error is None, r.error
        assert isinstance(r.parsed, Verdict)


# -- metrics and report ------------------------------------------------------------------------


async def test_batch_results_reach_metrics_and_the_report(start_sim: Any, tmp_path: Path) -> None:
    metrics_module = pytest.importorskip("llmbatch.metrics")
    sim: SimProcess = start_sim("--batch-seconds", "0.1")
    out = tmp_path / "out.jsonl"
    client = OpenAIClient(api_key="sk-test", base_url=sim.url + "/v1", model=MODEL)
    metrics = metrics_module.MetricsListener()
    journal = Journal(out)
    journal.open()
    sink = ResultSink(journal, expected=6, pricer=Pricer(FixedPrices(1, 4), model=MODEL))
    sink.observers.append(metrics.record)
    requests = [BatchRequest(f"r{i}", CompletionRequest(prompt=f"item {i}")) for i in range(6)]
    config = BatchAPIConfig(out, poll_interval=0.05)
    try:
        async for result in BatchAPIRunner(client, config).stream(requests, flush=sink.flush):
            sink.write(result)
    finally:
        sink.close()
        await client.aclose()
    assert metrics.value("llmbatch_requests_total", {"outcome": "success", "code": "ok"}) == 6
    assert metrics.value("llmbatch_cost_usd_total") == pytest.approx(sink.spent)
    assert sink.spent > 0

    # The report of a batch output: no admission waits, no attempt logs, and no error.
    from llmbatch.report import write_report

    report = tmp_path / "report.html"
    write_report(out, report)
    html = report.read_text()
    assert "via batch API" in html


def test_run_with_batch_api_writes_the_report(start_sim: Any, tmp_path: Path) -> None:
    sim: SimProcess = start_sim("--batch-seconds", "0.1")
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_requests(inp, 5)
    report = tmp_path / "r.html"
    proc = cli(*batch_run_args(sim, "openai", inp, out, "--report", str(report)))
    assert proc.returncode == 0, proc.stderr
    assert "via batch API" in report.read_text()


def test_the_expired_realtime_pass_spends_from_the_same_budget(
    start_sim: Any, tmp_path: Path
) -> None:
    # Most lines expire in the batch (costing nothing), then go realtime at twice the batch
    # price: the budget left after the batch stage cannot cover all of them.
    sim: SimProcess = start_sim("--batch-seconds", "0.3", "--batch-expire-after", "0.2")
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_requests(inp, 20)
    prices = ("--price-in", "0", "--price-out", "100")  # output dominates: actual ~ worst
    w = 0.5 * 16 * 100 / 1e6  # a request's worst case at the batch price
    cap = 20.5 * w
    args = batch_run_args(sim, "openai", inp, out, *prices, "--expired", "realtime")
    proc = cli(*args, "--max-cost", repr(cap), "--concurrency", "2")
    assert proc.returncode == 4, proc.stderr
    records = read_out(out)
    by_batch = [r for r in records if r["llmbatch"].get("batch_api")]
    realtime = [r for r in records if not r["llmbatch"].get("batch_api")]
    assert by_batch and realtime and len(records) < 20
    assert all(r["error"] is None for r in records)
    assert sum(r["llmbatch"]["cost"] for r in records) <= cap
    # Nothing bought and dropped: every token the simulator answered is in a line.
    stats = sim.stats()
    assert stats["completion_tokens"] == sum(
        r["response"]["body"]["usage"]["completion_tokens"] for r in records
    )
    assert stats["by_path"]["chat"] == len(realtime)


def test_a_batch_created_without_a_budget_is_counted_when_one_is_set(
    start_sim: Any, tmp_path: Path
) -> None:
    sim: SimProcess = start_sim("--batch-seconds", "3")
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    ids = write_requests(inp, 20)
    first = tmp_path / "first.jsonl"
    first.write_text("".join(inp.read_text().splitlines(keepends=True)[:10]))
    w = worst_case(inp)
    proc = start_cli(*batch_run_args(sim, "openai", first, out, *PRICES))  # no --max-cost
    try:
        wait_for(lambda: any(c["batch_id"] for c in ledger_chunks(out)), "the batch created")
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "worst_cost" not in ledger_chunks(out)[0]["extra"]
    # Its 10 requests' worst case is summed as they go by, before the 10 new ones: 5 fit.
    again = cli(*batch_run_args(sim, "openai", inp, out, *PRICES, "--max-cost", repr(15.5 * w)))
    assert again.returncode == 4, again.stderr
    assert [c["count"] for c in ledger_chunks(out)] == [10, 5]
    assert sim.stats()["batches_created"] == 2
    assert sorted(r["custom_id"] for r in read_out(out)) == ids[:15]


def test_the_batch_exit_message_says_a_true_amount_left(tmp_path: Path, start_sim) -> None:  # type: ignore[no-untyped-def]

    sim = start_sim("--batch-seconds", "0.2")
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_requests(inp, 30)
    w = worst_case(inp)
    args = batch_run_args(sim, "openai", inp, out, *PRICES, "--batch-max-requests", "10")
    proc = cli(*args, "--max-cost", repr(15.5 * w))
    assert proc.returncode == 4, proc.stderr
    found = re.search(r"could cost up to \$([0-9.]+), more than the \$([0-9.]+) left", proc.stderr)
    assert found is not None, proc.stderr
    worst, left = (float(x) for x in found.groups())
    # 15 worst cases were held by the two batches in flight: half of one was left.
    assert worst > left and left == pytest.approx(0.5 * w, abs=1e-6)
