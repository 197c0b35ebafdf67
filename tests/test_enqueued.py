"""OpenAI's enqueued-token limit: batches wait for room instead of failing.

The simulator limits the input tokens of live batches per model (`--batch-enqueued-tokens`):
a batch created over it is created and then fails, as OpenAI's does, with
`token_limit_exceeded`. The CLI runs as a subprocess (and `llmbatch.run` from Python); what
the provider saw is read from the simulator's /stats: `enqueued_tokens_max` (the most tokens
live at once) and `batches_token_limited` (batches failed for the limit).

Every prompt here is "question qN" (11 or 12 characters): 3 tokens by both counts, so a
batch of 10 requests holds 30 tokens, and a limit of 70 leaves room for two at a time.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest

import llmbatch
from llmbatch import RunConfig
from llmbatch.batch_api import ledger_paths
from llmbatch.batch_api.enqueued import EnqueuedTokens, stated_limit

from .helpers import (
    batch_run_args,
    cli,
    ids_once,
    ledger_chunks,
    read_out,
    start_cli,
    wait_for,
    write_simple,
)

N = 60
LIMIT = "70"  # two batches of 30 tokens fit, a third does not
PER_BATCH = ["--batch-max-requests", "10"]
# A batch's time on the simulator: long enough that three chunks are created while the first
# batch still runs, on a loaded machine too (the refusals the tests count depend on it).
SECONDS = "4"


def sim_args(*extra: str) -> list[str]:
    return ["--batch-seconds", SECONDS, "--batch-enqueued-tokens", LIMIT, *extra]


def all_at_batch_price(out: Path, ids: list[str]) -> None:
    """Every id once, answered, through a batch (none failed for the limit)."""
    assert set(ids_once(out)) == set(ids)
    lines = read_out(out)
    assert all(rec["error"] is None and rec["llmbatch"]["batch_api"] for rec in lines), [
        rec["error"] for rec in lines if rec["error"]
    ][:3]


def test_the_sdk_sees_a_batch_over_the_limit_created_then_failed(start_sim, tmp_path) -> None:
    sim = start_sim("--batch-seconds", "10", "--batch-enqueued-tokens", "50")
    client = openai.OpenAI(api_key="sk-test", base_url=sim.url + "/v1", max_retries=0)

    def create(n: int, prefix: str) -> str:
        lines = [
            {
                "custom_id": f"{prefix}{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {
                    "model": "gpt-4o-mini",
                    "messages": [{"role": "user", "content": f"question {prefix}{i}"}],
                },
            }
            for i in range(n)
        ]
        path = tmp_path / f"{prefix}.jsonl"
        path.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in lines))
        with path.open("rb") as f:
            uploaded = client.files.create(file=f, purpose="batch")
        batch = client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        return batch.id

    first = create(10, "a")  # 30 tokens: fits
    second = create(10, "b")  # 60 > 50: created, then failed
    wait_for(lambda: client.batches.retrieve(second).status == "failed", "the refusal", 30)
    refused = client.batches.retrieve(second)
    assert refused.errors is not None and refused.errors.data
    error = refused.errors.data[0]
    assert error.code == "token_limit_exceeded"
    assert error.message is not None
    assert "Enqueued token limit reached for gpt-4o-mini" in error.message
    assert stated_limit(error.message) == 50
    assert client.batches.retrieve(first).status in ("validating", "in_progress")
    stats = sim.stats()
    assert stats["batches_token_limited"] == 1 and stats["enqueued_tokens_max"] == 30


def test_with_the_limit_given_batches_wait_and_never_pass_it(start_sim, tmp_path) -> None:
    sim = start_sim(*sim_args())
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    ids = write_simple(inp, N)
    args = batch_run_args(sim, "openai", inp, out, *PER_BATCH, "--batch-enqueued-tokens", LIMIT)
    run = cli(*args)
    assert run.returncode == 0, run.stderr
    all_at_batch_price(out, ids)
    stats = sim.stats()
    assert stats["batches_token_limited"] == 0  # never refused
    assert stats["enqueued_tokens_max"] == 60  # two batches live at most
    assert stats["batches_created"] == 6


def test_the_limit_is_learned_from_the_refusal(start_sim, tmp_path) -> None:
    sim = start_sim(*sim_args())
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    ids = write_simple(inp, N)
    run = cli(*batch_run_args(sim, "openai", inp, out, *PER_BATCH))
    assert run.returncode == 0, run.stderr
    all_at_batch_price(out, ids)  # the refused chunks were created again, not failed
    stats = sim.stats()
    refused = stats["batches_token_limited"]
    assert refused >= 1
    assert stats["batches_created"] == 6 + refused
    # Learned at the first refusal (the message states 70): each refused chunk once at most.
    assert refused <= 4
    assert stats["enqueued_tokens_max"] <= 70
    assert "enqueued-token limit" in run.stderr


@pytest.mark.parametrize("given", [True, False], ids=["given", "learned"])
def test_a_kill_while_chunks_wait_then_a_rerun_creates_each_batch_once(
    start_sim, tmp_path, given: bool
) -> None:
    # The kill comes while the third chunk waits (held, or refused).
    sim = start_sim(*sim_args())
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    ids = write_simple(inp, N)
    flag = ["--batch-enqueued-tokens", LIMIT] if given else []
    args = batch_run_args(sim, "openai", inp, out, *PER_BATCH, *flag)
    proc = start_cli(*args)
    try:
        if given:
            wait_for(lambda: sim.stats()["batches_created"] >= 2, "two batches", 60)
            time.sleep(0.5)  # the third chunk is held now
        else:
            wait_for(
                lambda: any(c["extra"].get("refused") for c in ledger_chunks(out)),
                "a refused chunk back to waiting",
                60,
            )
    finally:
        proc.kill()
        proc.communicate()
    before = sim.stats()
    assert before["batch_lines_answered"] < N  # killed mid-run
    rerun = cli(*args)
    assert rerun.returncode == 0, rerun.stderr
    all_at_batch_price(out, ids)
    stats = sim.stats()
    # One accepted batch per chunk of ten, whatever the kill interrupted; every create
    # beyond that was refused for the limit (and its chunk created again later).
    assert stats["batches_created"] - stats["batches_token_limited"] == 6
    if given:
        assert stats["batches_token_limited"] == 0
    chunks = ledger_chunks(out)
    tagged = [c["batch_id"] for c in chunks]
    assert len(set(tagged)) == len(tagged) == 6
    assert not list(ledger_paths(out)[1].glob("chunk-*"))  # no file of a held chunk is left


def test_the_files_of_a_chunk_held_when_a_run_was_killed_are_removed(start_sim, tmp_path) -> None:
    # A held chunk is never recorded: a rerun that cuts its chunks differently would leave
    # its files behind, but for the sweep at the start.
    sim = start_sim(*sim_args())
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    ids = write_simple(inp, 10)
    args = batch_run_args(sim, "openai", inp, out, *PER_BATCH, "--batch-enqueued-tokens", LIMIT)
    assert cli(*args).returncode == 0
    directory = ledger_paths(out)[1]
    stray = [directory / "chunk-7.input", directory / "chunk-7.ids"]
    for path in stray:
        path.write_text("held when killed\n")
    again = cli(*args)
    assert again.returncode == 0, again.stderr
    assert not any(path.exists() for path in stray)
    assert set(ids_once(out)) == set(ids)


def test_a_deadline_run_splits_its_batches_under_the_limit(start_sim, tmp_path) -> None:
    # 300 requests: the deadline splits them into 3 batches of 100 (about 360 tokens each);
    # a limit of 800 holds two at a time.
    sim = start_sim("--batch-seconds", "1", "--batch-enqueued-tokens", "800")
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    ids = write_simple(inp, 300)
    args = [
        "run", str(inp), "-o", str(out), "--base-url", sim.url + "/v1", "--model",
        "gpt-4o-mini", "--finish-by", "120s", "--poll-interval", "0.1", "--no-progress",
        "--batch-enqueued-tokens", "800",
    ]  # fmt: skip
    run = cli(*args)
    assert run.returncode == 0, run.stderr
    all_at_batch_price(out, ids)
    stats = sim.stats()
    assert stats["batches_created"] == 3 and stats["batches_token_limited"] == 0
    assert 0 < stats["enqueued_tokens_max"] <= 800
    assert stats["received"] == 0  # nothing bought realtime


def test_a_deadline_run_sends_a_held_chunk_realtime_when_it_cannot_wait(
    start_sim, tmp_path
) -> None:
    # Stalled batches that hold the queue: the held chunk can never be created, and the
    # deadline sends its lines realtime (each id once).
    sim = start_sim(
        "--batch-seconds", "1", "--batch-stall-rate", "1", "--batch-expire-seconds", "600",
        "--batch-enqueued-tokens", "800",
    )  # fmt: skip
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    ids = write_simple(inp, 300)
    args = [
        "run", str(inp), "-o", str(out), "--base-url", sim.url + "/v1", "--model",
        "gpt-4o-mini", "--finish-by", "20s", "--poll-interval", "0.1", "--no-progress",
        "--batch-enqueued-tokens", "800",
    ]  # fmt: skip
    run = cli(*args)
    assert run.returncode == 0, run.stderr
    assert set(ids_once(out)) == set(ids)
    assert all(rec["error"] is None for rec in read_out(out))
    stats = sim.stats()
    assert stats["batches_created"] == 2  # the third chunk was never created
    assert stats["batches_token_limited"] == 0
    chunks = ledger_chunks(out)
    assert all(c["state"] == "ended" for c in chunks)


def test_from_python_the_config_field_holds_batches(start_sim, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    sim = start_sim(*sim_args())
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    ids = write_simple(inp, N)
    events: list[Any] = []
    config = RunConfig(
        input=str(inp),
        output=str(out),
        base_url=sim.url + "/v1",
        model="gpt-4o-mini",
        batch_api=True,
        batch_max_requests=10,
        batch_enqueued_tokens=70,
        poll_interval=0.1,
        listeners=[events.append],
    )
    summary = llmbatch.run(config)
    assert summary.exit_code == 0
    all_at_batch_price(out, ids)
    assert sim.stats()["batches_token_limited"] == 0
    held = [e for e in events if type(e).__name__ == "BatchHeld"]
    assert held and all(e.limit == 70 and e.live + e.tokens > 70 for e in held)


def test_a_refusal_teaches_the_stated_limit_or_what_was_live() -> None:
    queue = EnqueuedTokens()
    queue.add(0, "m", 40)
    assert queue.fits("m", 10**9)  # nothing known: no limit
    message = "Enqueued token limit reached for m in organization org-x. Limit: 50 enqueued tokens."
    assert queue.refused("m", 30, message) == 50
    assert not queue.fits("m", 30) and queue.fits("m", 10)
    # A refusal the estimate cannot explain (40 + 5 fits under 50): what was live is the limit.
    assert queue.refused("m", 5, message) == 40
    assert queue.refused("other", 5, "Enqueued token limit reached.") is None  # nothing live
    queue.remove(0)
    assert queue.fits("m", 10**6)  # nothing live: a chunk alone always goes
    assert EnqueuedTokens(limit=100).limit_for("m") == 100


def test_plan_says_when_the_limit_serializes_the_batches(tmp_path) -> None:
    inp = tmp_path / "in.jsonl"
    write_simple(inp, N)  # 60 requests of 3 tokens: 180 input tokens
    base = ["plan", str(inp), "--model", "gpt-4o-mini", "--batch-api", "--json"]
    waves = cli(*base, "--batch-enqueued-tokens", LIMIT)
    assert waves.returncode == 0, waves.stderr
    enqueued = orjson.loads(waves.stdout)["enqueued"]
    assert enqueued["batch_input_tokens_by_model"] == {"gpt-4o-mini": 180}
    assert enqueued["waves"] == 3 and enqueued["extra_turnarounds"] == 2
    roomy = cli(*base, "--batch-enqueued-tokens", "1000")
    assert orjson.loads(roomy.stdout)["enqueued"]["waves"] == 1
    shown = cli(*base[:-1], "--batch-enqueued-tokens", LIMIT)
    assert "3 waves" in shown.stdout + shown.stderr


def test_a_batch_alone_over_the_limit_is_cut_into_batches_under_it(start_sim, tmp_path) -> None:
    # Batches of ten hold 30 tokens; the limit is 25: each is refused even alone, then cut
    # in two (15 tokens each), which go one at a time.
    sim = start_sim("--batch-seconds", "1", "--batch-enqueued-tokens", "25")
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    ids = write_simple(inp, 20)
    run = cli(*batch_run_args(sim, "openai", inp, out, *PER_BATCH))
    assert run.returncode == 0, run.stderr
    all_at_batch_price(out, ids)
    stats = sim.stats()
    assert stats["batches_token_limited"] == 2  # the two first batches, not their halves
    assert stats["batches_created"] == 6
    assert 0 < stats["enqueued_tokens_max"] <= 25
    chunks = ledger_chunks(out)
    assert sorted(c["count"] for c in chunks) == [5, 5, 5, 5, 10, 10]
    assert sorted(c["extra"].get("split_from", -1) for c in chunks) == [-1, -1, 0, 0, 1, 1]
    assert not list(ledger_paths(out)[1].glob("chunk-*"))  # every input file removed


def test_a_batch_that_cannot_be_cut_fails_and_the_rerun_sends_it_under_the_limit(
    start_sim, tmp_path
) -> None:
    # One request of about 60 tokens, the limit 25: no batch can hold it; the line fails
    # saying why (nothing is billed), and the limit is kept in the ledger.
    sim = start_sim("--batch-seconds", "1", "--batch-enqueued-tokens", "25")
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    inp.write_text(orjson.dumps({"id": "big", "prompt": "x" * 240}).decode() + "\n")
    run = cli(*batch_run_args(sim, "openai", inp, out))
    assert run.returncode != 0
    (line,) = read_out(out)
    assert line["error"]["code"] == "batch_failed"
    assert "enqueued-token limit" in line["error"]["message"]
    assert any(c["extra"].get("enqueued_limit") == 25 for c in ledger_chunks(out))


def test_a_kill_during_a_deadline_run_with_a_held_chunk_then_a_rerun(start_sim, tmp_path) -> None:
    # Three batches of 100 (the deadline's split), room for two; both stall. The kill comes
    # while the third chunk is held; the rerun re-attaches the two, holds the third again,
    # and the deadline sends what no batch answered realtime: every id once.
    sim = start_sim(
        "--batch-seconds", "1", "--batch-stall-rate", "1", "--batch-expire-seconds", "600",
        "--batch-enqueued-tokens", "800", "--latency-ms", "20",
    )  # fmt: skip
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    ids = write_simple(inp, 300)
    when = datetime.fromtimestamp(time.time() + 40, tz=UTC).isoformat()  # the same for both
    args = [
        "run", str(inp), "-o", str(out), "--base-url", sim.url + "/v1", "--model",
        "gpt-4o-mini", "--finish-by", when, "--poll-interval", "0.1", "--no-progress",
        "--batch-enqueued-tokens", "800",
    ]  # fmt: skip
    proc = start_cli(*args)
    try:
        wait_for(lambda: sim.stats()["batches_created"] >= 2, "two batches", 60)
        time.sleep(0.5)  # the third chunk is held
    finally:
        proc.kill()
        proc.communicate()
    assert len(ledger_chunks(out)) == 2  # the held chunk was never recorded
    rerun = cli(*args)
    assert rerun.returncode == 0, rerun.stderr
    assert set(ids_once(out)) == set(ids)
    assert all(rec["error"] is None for rec in read_out(out))
    stats = sim.stats()
    assert stats["batches_created"] == 2  # re-attached, none created twice, the third never
    assert stats["batches_token_limited"] == 0


def test_a_queue_full_of_other_programs_batches_is_waited_out(start_sim, tmp_path) -> None:
    # Another program's batch holds 60 of the 70 tokens: this run's first batch is refused
    # while nothing of its own is live; it is tried again (after a growing wait) until the
    # other batch has ended.
    sim = start_sim(*sim_args())
    other = tmp_path / "other.jsonl"
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x" * 240}]}
    line = {"custom_id": "o", "method": "POST", "url": "/v1/chat/completions", "body": body}
    other.write_bytes(orjson.dumps(line) + b"\n")
    client = openai.OpenAI(api_key="sk-test", base_url=sim.url + "/v1", max_retries=0)
    with other.open("rb") as f:
        uploaded = client.files.create(file=f, purpose="batch")
    client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    ids = write_simple(inp, 20)
    run = cli(*batch_run_args(sim, "openai", inp, out, *PER_BATCH))
    assert run.returncode == 0, run.stderr
    all_at_batch_price(out, ids)
    stats = sim.stats()
    assert stats["batches_token_limited"] >= 1
    assert stats["batches_created"] - stats["batches_token_limited"] == 3  # the other's + 2


def test_a_deadline_run_moves_a_refused_chunk_that_waits_to_realtime(start_sim, tmp_path) -> None:
    # No flag: the third batch of the split is created, refused, and waits; the two live ones
    # stall, so it never gets room, and the deadline moves its lines (and the rest) realtime.
    sim = start_sim(
        "--batch-seconds", "1", "--batch-stall-rate", "1", "--batch-expire-seconds", "600",
        "--batch-enqueued-tokens", "800",
    )  # fmt: skip
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    ids = write_simple(inp, 300)
    args = [
        "run", str(inp), "-o", str(out), "--base-url", sim.url + "/v1", "--model",
        "gpt-4o-mini", "--finish-by", "20s", "--poll-interval", "0.1", "--no-progress",
    ]  # fmt: skip
    run = cli(*args)
    assert run.returncode == 0, run.stderr
    assert set(ids_once(out)) == set(ids)
    assert all(rec["error"] is None for rec in read_out(out))
    stats = sim.stats()
    assert stats["batches_token_limited"] >= 1
    assert stats["batches_created"] - stats["batches_token_limited"] == 2
    chunks = ledger_chunks(out)
    assert all(c["state"] == "ended" for c in chunks)
    held = [c for c in chunks if c["extra"].get("refused")]
    assert held and all(c["status"] == "not created" for c in held)
